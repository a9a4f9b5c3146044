"""Atomic, never-overwriting outputs.

Everything is written under a hidden temporary name in the destination folder (same filesystem,
so the final rename is atomic) and renamed only when complete: an error or an interrupt removes it,
and a crash (kill -9, power loss) leaves a `.name.partial-xxxxxxxx`, never a truncated file under the
real name. While it is written the work name is held under an advisory lock (flock), so the next
write into the same folder can tell a dead writer's leftover from a live one and removes only the
former. If the real name is taken, a ComfyUI-style counter is appended (`name_00001_.mov`) instead
of overwriting. OS refusals (name too long, not a folder, read-only, no permission, disk full)
become one `OutputFolderError` line naming the folder and the fix, never the work name.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows: leftovers are judged by age alone
    fcntl = None

COUNTER_DIGITS = 5
_MAX_TRIES = 100_000
PARTIAL_MARK = ".partial-"
_PARTIAL_NAME = re.compile(r"^\.(?P<name>.+)\.partial-[0-9a-f]{8}$")  # exactly what _work_name makes
STALE_WITHOUT_LOCKS_S = 24 * 3600  # where locks do not work, a leftover this old is a dead writer's


class OutputFolderError(ValueError):
    """The file system refused an output write; the message names the folder and what to do."""

    def __init__(self, message: str, errno_code: Optional[int] = None):
        super().__init__(message)
        self.errno = errno_code


def _work_name(wanted: Path) -> Path:
    return wanted.parent / f".{wanted.name}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}"


class AtomicTarget:
    """Where to write (`tmp`) and, after a successful commit, where the result landed (`path`)."""

    def __init__(self, wanted: Path, tmp: Path, is_dir: bool):
        self.wanted, self.tmp, self.is_dir = wanted, tmp, is_dir
        self.path: Path | None = None


@contextmanager
def atomic_output(path, *, is_dir: bool = False, always_counter: bool = False) -> Iterator[AtomicTarget]:
    """Write to `target.tmp` inside the block; on success it becomes `target.path`.

    `always_counter` names the result `stem_00001_` even when `stem` is free (ComfyUI's habit,
    used for one-folder-per-generation outputs). On any exception the temporary is removed. A dead
    writer's leftovers in the destination folder are removed first (`remove_stale_partials`).
    """
    wanted = Path(path)
    with output_errors(wanted):
        wanted.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(wanted.parent)
        tmp, lock = _create_locked(wanted, is_dir)
    target = AtomicTarget(wanted, tmp, is_dir)
    try:
        with output_errors(wanted):
            yield target
            target.path = _commit(tmp, wanted, is_dir, always_counter)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _unlock(lock)


def _create_locked(wanted: Path, is_dir: bool) -> tuple[Path, Optional[int]]:
    """A new work name (a folder, or an empty file the writer reopens by path) held under our lock.
    A cleaner may take and remove it between creation and locking: then another name is made."""
    for _ in range(10):
        tmp = _work_name(wanted)
        if is_dir:
            tmp.mkdir()
        else:
            tmp.touch(exist_ok=False)
        try:
            lock = _lock(tmp)
        except (FileNotFoundError, BlockingIOError):
            continue  # a cleaner has it (and removes it)
        except BaseException:
            _remove(tmp)
            raise
        if lock is None or _is_file_of(lock, tmp):
            return tmp, lock
        _unlock(lock)
    raise OSError(errno.EBUSY, "could not hold a work name", str(wanted.parent))


def _lock(path: Path) -> Optional[int]:
    """An fd holding an exclusive flock on `path`; None where flock is unavailable. Raises
    BlockingIOError when someone else holds it."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # this file system has no flock
        os.close(fd)
        return None
    return fd


def _is_file_of(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _unlock(fd: Optional[int]) -> None:
    if fd is not None:
        os.close(fd)  # closing releases the flock


def remove_stale_partials(folder: Path) -> list[str]:
    """Removes `.name.partial-xxxxxxxx` leftovers of writers that died (kill -9, power loss) from
    `folder` (not below it); returns their names. A leftover is stale when nobody holds its lock (a
    live writer always does); without flock (Windows, some network file systems), when it is older
    than STALE_WITHOUT_LOCKS_S. Other hidden files, and anything that is not our work name, stay."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if _PARTIAL_NAME.match(entry.name) and not entry.is_symlink() and _remove_if_stale(Path(entry.path)):
            removed.append(entry.name)
    return removed


def _remove_if_stale(path: Path) -> bool:
    if fcntl is None:
        return _older_than(path, STALE_WITHOUT_LOCKS_S) and (_remove(path) or True)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False  # a live writer holds it
    except OSError:  # flock unsupported on this file system: judge by age
        os.close(fd)
        if not _older_than(path, STALE_WITHOUT_LOCKS_S):
            return False
        fd = None
    try:
        _remove(path)  # under our lock: a writer that locks it next sees it gone and picks a new name
    finally:
        if fd is not None:
            os.close(fd)
    return True


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


# What to do when the output folder refuses a write, by errno.
_OUTPUT_FIXES = {
    errno.EROFS: ("is on a read-only file system", "choose an output folder on a writable disk"),
    errno.EACCES: ("cannot be written (permission denied)", "fix the folder's permissions or choose another output folder"),
    errno.EPERM: ("cannot be written (operation not permitted)", "fix the folder's permissions or choose another output folder"),
    errno.ENOSPC: ("is on a full disk; the partial export was removed", "free some space or choose an output folder on another disk"),
    errno.EDQUOT: ("is over its disk quota; the partial export was removed", "free some space or choose another output folder"),
    errno.EFBIG: ("is on a file system that cannot hold a file this large", "choose an output folder on another disk"),
}


@contextmanager
def output_errors(wanted: Path):
    """OS errors of writing `wanted` -> OutputFolderError naming the output folder, not the work name."""
    try:
        yield
    except OutputFolderError:
        raise
    except OSError as exc:
        message = _output_error_message(exc, Path(wanted))
        if message is None:
            raise
        raise OutputFolderError(message, exc.errno) from None


def _output_error_message(exc: OSError, wanted: Path) -> Optional[str]:
    folder = _outside_work_names(wanted.parent)
    if exc.errno == errno.ENAMETOOLONG:
        limit = _name_max(folder) - len(f".{PARTIAL_MARK}") - 8
        too_long = next((p for p in (wanted, *wanted.parents) if len(p.name.encode()) > limit), wanted)
        return (f"cannot write into the output folder {folder}: the name {_short(too_long.name)} "
                f"({len(too_long.name)} characters) is too long for this file system (at most {limit} here); "
                "use a shorter name")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) or isinstance(exc, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            return None
        return (f"cannot create the output folder {folder}: {blocker} is a file, not a folder; "
                "choose another name, or move that file away")
    if exc.errno in _OUTPUT_FIXES:
        problem, fix = _OUTPUT_FIXES[exc.errno]
        return f"the output folder {_existing(folder)} {problem}; {fix}"
    return None


def _outside_work_names(folder: Path) -> Path:
    """The folder the user chose: above the outermost work name (writers nest inside one)."""
    parts = folder.parts
    for i, part in enumerate(parts):
        if _PARTIAL_NAME.match(part):
            return Path(*parts[:i])
    return folder


def _name_max(folder: Path) -> int:
    for candidate in (folder, *folder.parents):
        try:
            return os.pathconf(candidate, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):
            continue
    return 255


def _existing(folder: Path) -> Path:
    """The deepest folder that exists: the one the file system refused."""
    return next((p for p in (folder, *folder.parents) if p.is_dir()), folder)


def _short(name: str, limit: int = 48) -> str:
    return repr(name) if len(name) <= limit else repr(name[:limit - 3] + "...")


def counter_path(wanted: Path, counter: int, is_dir: bool = False) -> Path:
    """`clip.mov` -> `clip_00003_.mov`; a folder keeps its whole name as the stem."""
    stem, suffix = _split_name(wanted, is_dir)
    return wanted.with_name(f"{stem}_{counter:0{COUNTER_DIGITS}d}_{suffix}")


def write_bytes_atomic(path, data: bytes, *, replace: bool = False) -> Path:
    """Small files (sidecars, manifests). `replace=True` only for files we own by construction."""
    path = Path(path)
    with output_errors(path):
        tmp, lock = _create_locked(path, is_dir=False)
    try:
        with output_errors(path):
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
    finally:
        _unlock(lock)


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
