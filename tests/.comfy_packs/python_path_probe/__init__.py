"""Test-only ComfyUI pack (linked into the test servers by tests/comfyhost/server.py): reports, at run
time, the server's sys.path and which modules are loaded, so a test can see where a pack put itself.
"""

import json
import sys


class PythonPathProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"nonce": ("STRING", {"default": ""})}}  # a new value defeats ComfyUI's cache

    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def report(self, nonce):
        state = {"sys_path": list(sys.path), "modules": {name: getattr(module, "__file__", None)
                                                         for name, module in list(sys.modules.items())}}
        return {"ui": {"text": [json.dumps(state)]}}


NODE_CLASS_MAPPINGS = {"TestPythonPathProbe": PythonPathProbe}
