"""Reading and writing weight files safely: header-only inspection, pickles only with
`weights_only=True`, atomic writes. Every error names the file and says what would be valid.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class WeightsError(ValueError):
    """A weights file or folder that cannot be used as asked."""


class CorruptWeightsError(WeightsError):
    """Unreadable: truncated, not the format its name says, or damaged."""


class WrongModelError(WeightsError):
    """Readable, but holds a different model than the one asked for."""


class UnsafePickleError(WeightsError):
    """A pickle that needs arbitrary Python objects to load; refused."""


@dataclass
class TensorIndex:
    """Names, shapes and dtypes of a checkpoint's tensors, without their data."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return list(self.shapes)


def tensor_set_diff(expected: dict, found: dict) -> tuple[list[str], list[str], list[str]]:
    """Missing, unexpected and other-shape names between two {name: shape} maps (for the one-line
    refusals of a file that does not fit its model)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    return missing, unexpected, wrong


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise WeightsError(f"{what} {str(path)!r} is a folder; expected a file")
    return path


def read_safetensors_index(path: str | Path) -> TensorIndex:
    """Read only the header of a .safetensors file (cheap even for multi-GB files)."""
    from safetensors import safe_open

    path = require_file(path, "weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes, dtypes = {}, {}
            for key in f.keys():
                sl = f.get_slice(key)
                shapes[key] = tuple(sl.get_shape())
                dtypes[key] = sl.get_dtype()
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error type for every header problem
        raise CorruptWeightsError(
            f"{str(path)!r} ({path.stat().st_size:,} bytes) is not a readable safetensors file: {err}. "
            f"It may be truncated (an interrupted download) or another format; download it again"
        ) from None
    return TensorIndex(path=path, shapes=shapes, dtypes=dtypes, metadata=metadata)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def read_safetensors_tensors(path: str | Path):
    """Yield (name, tensor) one at a time with plain reads (no memory map): a caller that converts
    and keeps each tensor holds the file's data only once. The header was validated by
    read_safetensors_index; a short read still fails with the file named."""
    import json
    import struct

    path = Path(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        start = 8 + header_len
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
        for key, info in entries:
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            buffer = bytearray(end - begin)
            if f.readinto(buffer) != len(buffer):
                raise CorruptWeightsError(f"{str(path)!r} ends inside tensor {key!r}: it is truncated, download it again")
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise WeightsError(f"{str(path)!r}: tensor {key!r} has dtype {info['dtype']!r}, which this loader does not read")
            tensor = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            yield key, tensor.reshape(info["shape"])


def load_safetensors(path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    read_safetensors_index(path)  # clear error first for a damaged file
    return load_file(str(path), device=str(device))


def load_pickle_weights(path: str | Path) -> object:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary code."""
    path = require_file(path, "checkpoint file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.findall(r"GLOBAL ([\w.]+)", str(err))
        objects = f" (it holds {', '.join(sorted(set(found)))})" if found else ""
        raise UnsafePickleError(
            f"refused to load {str(path)!r}: the pickle contains Python objects other than tensors and plain "
            f"containers{objects}, and loading those can run arbitrary code. Re-save it as a dict of tensors "
            f"(or safetensors) where you trust the file"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CorruptWeightsError(
            f"{str(path)!r} is not a readable PyTorch checkpoint ({str(err).splitlines()[0]}); "
            f"it may be truncated, download or copy it again"
        ) from None


def load_any_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from .safetensors, or from a weights-only pickle holding such a dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        obj = load_pickle_weights(path)
        while isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model", "module"):
            obj = next(iter(obj.values()))
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
            raise WeightsError(f"{str(path)!r} does not hold a flat dict of tensors; found {type(obj).__name__}")
        return obj
    raise WeightsError(
        f"{str(path)!r}: unknown weights format {path.suffix!r}; use .safetensors (or {', '.join(PICKLE_SUFFIXES)})"
    )


# ---- atomic writes -----------------------------------------------------------------------------
def _temp_beside(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the renamed file should read like any other
    return Path(tmp)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see a half-written file."""
    from safetensors.torch import save_file

    path = Path(path)
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    tmp = _temp_beside(path, ".tmp")
    try:
        save_file(plain, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # save_file re-creates the file with 0600; a model file should read like any other
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = _temp_beside(path, ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
