"""LayerT2V for ComfyUI: the pack's entry point (ComfyUI loads this folder as a custom node pack).

Module level stays free of ComfyUI imports: pytest also imports this file (the repo root holds
`__init__.py`), and there `comfy_api` does not exist. ComfyUI-only imports live in `comfy_entrypoint`.
"""

# Served by ComfyUI at /extensions/<pack folder>/ and loaded by its frontend.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    import os
    import sys

    # The core is imported as a top-level package, whatever the pack's folder is called.
    pack_dir = os.path.dirname(os.path.abspath(__file__))
    if pack_dir not in sys.path:
        sys.path.insert(0, pack_dir)
    from .nodes import extension

    return extension()
