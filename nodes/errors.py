"""The pack's one error standard, enforced here: a failure the user can cause reaches the ComfyUI
queue as ONE line that names the node, the input or file, and what to do. No traceback, no path
inside the pack or a temporary folder, no hidden `.name.partial-xxxx` work name.

Nodes raise `LayerT2VInputError` (its constructor applies the standard) and wrap calls into the core
in `readable_errors`, which turns the core's ValueErrors, OS errors and a few known library failures
(a model file whose tensors or config do not fit) into such a line. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

from ..layert2v_core.export.atomic import OutputFolderError

MAX_MESSAGE_CHARS = 600
PACK_ROOT = str(Path(__file__).resolve().parents[1])
_PARTIAL_NAME = re.compile(r"\.([^\s/\\'\"]+?)\.partial-[0-9a-f]{8}")  # layert2v_core/export/atomic.py's work names
_STATE_DICT_MISMATCH = re.compile(r"size mismatch for ([\w.]+): copying a param with shape (torch\.Size\(\[[^\]]*\]\)) "
                                  r"from checkpoint, the shape in current model is (torch\.Size\(\[[^\]]*\]\))")

# What to do about an OS error, by errno. The output folder's problems are named by the core
# (layert2v_core/export/atomic.py); these cover files the user points a node at.
OS_ERROR_FIXES = {
    errno.ENOENT: "check the name and that the file is still there",
    errno.EACCES: "fix the file's permissions",
    errno.EPERM: "fix the file's permissions",
    errno.EISDIR: "choose a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.ENOSPC: "the disk is full; free some space",
    errno.EIO: "the disk reported a read error; copy the file again",
}


class LayerT2VInputError(ValueError):
    """Bad input, reported as one clean line (the standard is applied on construction)."""

    def __init__(self, message: str, aliases: Optional[dict[str, str]] = None):
        super().__init__(one_line(message, aliases))


def one_line(text: str, aliases: Optional[dict[str, str]] = None) -> str:
    """Whitespace collapsed; ComfyUI's models/output/input folders and `aliases` (absolute folder ->
    what the user calls it) written as the user knows them; work names replaced by the final name;
    paths inside the pack or a temporary folder cut to their last part; the length capped."""
    text = str(text)
    for folder, label in sorted({**_comfy_folders(), **(aliases or {})}.items(), key=lambda kv: -len(kv[0])):
        if folder:
            text = text.replace(os.path.abspath(folder).rstrip(os.sep), label)
    text = _PARTIAL_NAME.sub(r"\1", text)
    for root in _internal_roots():
        text = re.sub(re.escape(root) + r"[^\s'\"]*", lambda m: os.path.basename(m.group(0).rstrip(os.sep)), text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return text


def _comfy_folders() -> dict[str, str]:
    """ComfyUI's own folders by the names its users know them (when running inside ComfyUI)."""
    try:
        import folder_paths
    except ImportError:
        return {}
    return {folder_paths.models_dir: "models", folder_paths.get_output_directory(): "output",
            folder_paths.get_input_directory(): "input"}


def _internal_roots() -> list[str]:
    roots = {PACK_ROOT + os.sep, os.path.realpath(tempfile.gettempdir()) + os.sep, tempfile.gettempdir() + os.sep}
    return sorted(roots, key=len, reverse=True)


def os_error_line(exc: OSError, what: Optional[str] = None) -> str:
    """'<file>: <reason>; <fix>' for an OS error, naming `what` (the input or file) before the path."""
    subject = what or (os.path.basename(exc.filename) if exc.filename else "a file")
    reason = exc.strerror or type(exc).__name__
    fix = OS_ERROR_FIXES.get(exc.errno, "check the file and try again")
    return f"{subject}: {reason}; {fix}"


def model_file_line(exc: Exception, file: str) -> Optional[str]:
    """A library failure that means 'this file does not fit the model' -> a line naming the file.
    None when the exception is not one of those (then it is a bug and keeps its traceback)."""
    text = str(exc)
    mismatches = _STATE_DICT_MISMATCH.findall(text)
    if mismatches:
        name, got, wanted = mismatches[0]
        return (f"{file} has {len(mismatches)} tensor(s) of the wrong shape, e.g. {name} is {_shape(got)} but the "
                f"model needs {_shape(wanted)}; it was made for another base model or LoRA rank: choose the file "
                "that matches this model")
    if "Error(s) in loading state_dict" in text:
        return f"{file} does not fit this model ({text.splitlines()[0][:160]}); choose the file made for this model"
    if isinstance(exc, (TypeError, OverflowError, ZeroDivisionError)):
        return (f"{file} holds a configuration value this model cannot use ({text.splitlines()[0][:160] if text else type(exc).__name__}); "
                "the file is damaged or is not a Wan2.1 / LayerT2V file")
    return None


def _shape(torch_size: str) -> str:
    return "(" + torch_size[len("torch.Size(["):-len("])")] + ")"


@contextlib.contextmanager
def readable_errors(node: str, what: Optional[str] = None, file: Optional[str] = None,
                    aliases: Optional[dict[str, str]] = None, output_input: Optional[str] = None):
    """Bad input raised inside the block leaves it as one LayerT2VInputError line:
    '<node>: [<what>: ]<message>'. `what` names the input the block reads; `file` names the user's
    file that the block loads (then a state-dict or config mismatch is reported against it);
    `output_input` names the input that chose the output folder (for the file system's refusals);
    `aliases` maps absolute folders to what the user calls them (ComfyUI's output folder: 'output')."""
    prefix = f"{node}: " + (f"{what}: " if what else "")
    try:
        yield
    except LayerT2VInputError as exc:
        if aliases:
            raise LayerT2VInputError(str(exc), aliases) from None
        raise
    except OutputFolderError as exc:
        raise LayerT2VInputError(f"{node}: " + (f"{output_input}: " if output_input else "") + str(exc),
                                 aliases) from None
    except (ValueError, KeyError) as exc:
        message = exc.args[0] if exc.args else type(exc).__name__
        raise LayerT2VInputError(prefix + str(message), aliases) from None
    except OSError as exc:  # FileNotFoundError included; the output folder's own errors are ValueErrors
        if exc.errno is None and exc.args:  # raised by our code with a whole sentence, not by the OS
            raise LayerT2VInputError(prefix + str(exc.args[0]), aliases) from None
        raise LayerT2VInputError(f"{node}: " + os_error_line(exc, what or file), aliases) from None
    except RecursionError:
        raise LayerT2VInputError(prefix + "the value is nested too deeply to read; simplify it", aliases) from None
    except (RuntimeError, TypeError, OverflowError, ZeroDivisionError) as exc:
        line = model_file_line(exc, file) if file else None
        if line is None:
            raise
        raise LayerT2VInputError(f"{node}: {line}", aliases) from None


def refuse(node: str, what: str, problem: str, fix: str) -> LayerT2VInputError:
    """`raise refuse(node, input, what is wrong, what to do)`: the standard's three parts, in order."""
    return LayerT2VInputError(f"{node}: {what} {problem}; {fix}")


def check_finite(node: str, name: str, t) -> None:
    """Refuse NaN/inf pixels in an IMAGE or MASK input, naming the input and how many."""
    import torch

    bad = ~torch.isfinite(t)
    if bad.any():
        raise refuse(node, name, f"contains {int(bad.sum())} NaN or infinite value(s)",
                     "every pixel must be a finite number in [0, 1]")
