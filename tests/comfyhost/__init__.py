"""A real ComfyUI host for the integration tests: install it, run it with our pack, talk to it.

    install.py   ComfyUI 0.30.0 (+ 0.3.75, frontend 1.58.1) into .cache/comfyui + the project venv;
                 `python -m tests.comfyhost.install` from the repo root
    server.py    ComfyServer: one ComfyUI process on 127.0.0.1 with the pack in its custom_nodes
    client.py    ComfyClient: /object_info, /prompt, /history, /interrupt
    browser.py   headless chromium: DOM, console and a screenshot of the real frontend, or a scripted
                 user's session (tests/browser/user_session.mjs, playwright-core)

The `comfy_server` fixture in tests/conftest.py ties them together. Everything here is stdlib only,
so tests that do not use the host pay nothing for it. Import from the submodules (this file imports
none of them, so `python -m tests.comfyhost.install` runs without a double import).
"""
