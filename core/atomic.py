"""Atomic file writes: write to a temp file in the same folder, fsync, then rename.

A write killed midway leaves the previous file intact (``os.replace`` is atomic on POSIX).
With ``replace=False`` the finished temp file is hard-linked into place instead, which fails
if the name exists: of two concurrent writers exactly one creates the file, and nobody ever
sees it half written. Files get the mode the user's umask gives (``mkstemp`` alone would
leave them 0600, unreadable to a group that shares the workspace).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _read_umask() -> int:
    """The process umask, read without changing it where the OS allows (``os.umask`` can
    only be read by setting it, which races with threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success rename it over ``path``.

    ``replace=False``: create ``path`` only if it does not exist (``FileExistsError``
    otherwise, the existing file untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, FILE_MODE)
        if replace:
            os.replace(tmp_path, path)
        else:
            _create_exclusive(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _create_exclusive(tmp_path: Path, path: Path) -> None:
    """Put the finished ``tmp_path`` at ``path`` unless ``path`` exists, atomically."""
    try:
        os.link(tmp_path, path)  # fails with FileExistsError when the name is taken
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name, then fill it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
        os.replace(tmp_path, path)


def write_bytes(path: str | os.PathLike, data: bytes, replace: bool = True) -> None:
    with atomic_path(path, replace=replace) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, replace: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), replace=replace)


def write_json(path: str | os.PathLike, obj: Any, replace: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False,
                                default=str) + "\n", replace=replace)


def write_parquet(path: str | os.PathLike, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def write_npz(path: str | os.PathLike, **arrays) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, "r", encoding="utf-8") as fh:
        return json.load(fh)
