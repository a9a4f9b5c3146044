"""Atomic, never-overwriting outputs.

Everything is written under a hidden temporary name in the destination folder (same filesystem,
so the final rename is atomic) and renamed only when complete: a crash or an interrupt leaves a
`.name.partial-xxxx` to delete, never a truncated file under the real name. If the real name is
taken, a ComfyUI-style counter is appended (`name_00001_.mov`) instead of overwriting.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

COUNTER_DIGITS = 5
_MAX_TRIES = 100_000


class AtomicTarget:
    """Where to write (`tmp`) and, after a successful commit, where the result landed (`path`)."""

    def __init__(self, wanted: Path, tmp: Path, is_dir: bool):
        self.wanted, self.tmp, self.is_dir = wanted, tmp, is_dir
        self.path: Path | None = None


@contextmanager
def atomic_output(path, *, is_dir: bool = False, always_counter: bool = False) -> Iterator[AtomicTarget]:
    """Write to `target.tmp` inside the block; on success it becomes `target.path`.

    `always_counter` names the result `stem_00001_` even when `stem` is free (ComfyUI's habit,
    used for one-folder-per-generation outputs). On any exception the temporary is removed.
    """
    wanted = Path(path)
    wanted.parent.mkdir(parents=True, exist_ok=True)
    tmp = wanted.parent / f".{wanted.name}.partial-{uuid.uuid4().hex[:8]}"
    if is_dir:
        tmp.mkdir()
    target = AtomicTarget(wanted, tmp, is_dir)
    try:
        yield target
        target.path = _commit(tmp, wanted, is_dir, always_counter)
    except BaseException:
        _remove(tmp)
        raise


def counter_path(wanted: Path, counter: int, is_dir: bool = False) -> Path:
    """`clip.mov` -> `clip_00003_.mov`; a folder keeps its whole name as the stem."""
    stem, suffix = _split_name(wanted, is_dir)
    return wanted.with_name(f"{stem}_{counter:0{COUNTER_DIGITS}d}_{suffix}")


def write_bytes_atomic(path, data: bytes, *, replace: bool = False) -> Path:
    """Small files (sidecars, manifests). `replace=True` only for files we own by construction."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return path
        return _commit(tmp, path, False, False)
    except BaseException:
        _remove(tmp)
        raise


def _commit(tmp: Path, wanted: Path, is_dir: bool, always_counter: bool) -> Path:
    for candidate in _candidates(wanted, is_dir, always_counter):
        if _place(tmp, candidate, is_dir):
            return candidate
    raise FileExistsError(f"no free name for {wanted} after {_MAX_TRIES} tries")


def _candidates(wanted: Path, is_dir: bool, always_counter: bool):
    if not always_counter:
        yield wanted
    # Continue after the highest existing counter, like ComfyUI, so numbering only grows.
    start = _highest_counter(wanted, is_dir) + 1
    for counter in range(start, start + _MAX_TRIES):
        yield counter_path(wanted, counter, is_dir)


def _place(tmp: Path, final: Path, is_dir: bool) -> bool:
    """Move tmp to final unless final exists; True on success. Never replaces an output."""
    if is_dir:
        if final.exists() or final.is_symlink():
            return False
        try:
            # POSIX rename only replaces an EMPTY directory, which holds no output to lose.
            os.rename(tmp, final)
            return True
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR) or final.exists():
                return False
            raise
    try:
        os.link(tmp, final)  # fails atomically if final exists: no check-then-rename race
    except FileExistsError:
        return False
    except OSError:
        # Filesystems without hard links: check, then rename (Windows' rename never replaces).
        if final.exists() or final.is_symlink():
            return False
        os.rename(tmp, final)
        return True
    os.unlink(tmp)
    return True


def _highest_counter(wanted: Path, is_dir: bool) -> int:
    stem, suffix = _split_name(wanted, is_dir)
    pattern = re.compile(re.escape(stem) + r"_(\d{%d,})_" % COUNTER_DIGITS + re.escape(suffix) + "$")
    best = 0
    if wanted.parent.is_dir():
        for entry in os.listdir(wanted.parent):
            m = pattern.match(entry)
            if m:
                best = max(best, int(m.group(1)))
    return best


def _split_name(path: Path, is_dir: bool) -> tuple[str, str]:
    # Folders ("run.v2") have no extension; for files only the last suffix counts (clip.mov).
    if is_dir or not path.stem:
        return path.name, ""
    return path.stem, path.suffix


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
