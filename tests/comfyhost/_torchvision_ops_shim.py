"""Lets PyPI's torchvision import on a CPU-only torch (copied into the venv by tests/comfyhost).

PyPI's torchvision wheel is a CUDA build: its C++ ops library fails to load against CPU torch, and
then `torchvision._meta_registrations` registers fake kernels for `torchvision::nms`/`qnms`, which
raises unless those op schemas exist. A `.pth` line imports this module at interpreter start; it only
installs an import hook (no torch import), and defines the two schemas just before that module runs,
and only when the real ops did not load, so a working torchvision build is left untouched.
"""

import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # a torch Library drops its definitions when garbage collected: keep it alive


def _define_missing_op_schemas() -> None:
    global _library
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


class _BeforeTorchvisionMetaRegistrations:
    """Meta-path finder that never finds anything; it only watches for one import."""

    done = False

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if not cls.done and fullname == "torchvision._meta_registrations":
            cls.done = True  # stays in sys.meta_path: removing a finder mid-lookup skips the next one
            extension = sys.modules.get("torchvision.extension")
            if extension is not None and not extension._has_ops():
                _define_missing_op_schemas()
        return None


sys.meta_path.insert(0, _BeforeTorchvisionMetaRegistrations)
