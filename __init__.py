"""LayerT2V for ComfyUI: the pack's entry point (ComfyUI loads this folder as a custom node pack).

Module level stays free of ComfyUI imports: pytest also imports this file (the repo root holds
`__init__.py`), and there `comfy_api` does not exist. ComfyUI-only imports live in `comfy_entrypoint`.

Everything of ours is imported through this package (nodes/ imports the core as `..layert2v_core`),
so the pack folder never goes on sys.path and `layert2v_core`, `training` or `nodes` never become
top-level names that could shadow another pack's or a library's module. From the repo root, the CLI,
the tests and training import `layert2v_core` as a top-level package as before.
"""

# Served by ComfyUI at /extensions/<pack folder>/ and loaded by its frontend.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import extension

    return extension()
