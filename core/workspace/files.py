"""Files of a workspace: content hashes, change checks and damage detection.

What the step contract (``steps.py``) and the ``Workspace`` handle build on: a file's state
(size, mtime, sha256) so a changed input is never taken for the recorded one, a frame's
content fingerprint, the cache key, and telling a damaged file (truncated, garbled) from a
bug.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .. import atomic

MANIFEST = "manifest.json"
# What a truncated or garbled parquet/npy/npz/json file raises when read (pyarrow's errors
# subclass ValueError or OSError); anything else is a bug, not damage, and propagates.
DAMAGE = (ValueError, EOFError, OSError, zipfile.BadZipFile)


class DamagedFileWarning(UserWarning):
    """A cached result could not be read: it was deleted and its step recomputes it."""


class ChangedInputWarning(DamagedFileWarning):
    """A workspace file changed on disk since Cherrypick recorded it (samples.parquet
    replaced, embeddings.npy copied in by hand): the steps that read it recompute. A
    ``DamagedFileWarning`` so the CLI prints it on one line like the other file warnings."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# sha256 of files already hashed in this process, by (path, size, mtime_ns): a file whose
# size and mtime are unchanged is not read again.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_state(path: str | os.PathLike) -> dict:
    """``{"size", "mtime_ns", "sha256"}`` of a file: what a manifest or sidecar records so a
    later reader can tell whether the bytes are still the ones it describes."""
    path = Path(path)
    before = path.stat()
    key = (str(path.resolve()), before.st_size, before.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = sha256_file(path)
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) == key[1:]:  # not rewritten while hashing
            _DIGESTS[key] = digest
    return {"size": before.st_size, "mtime_ns": before.st_mtime_ns, "sha256": digest}


def verify_file(path: str | os.PathLike, recorded: Any) -> tuple[bool, dict]:
    """(the file still holds the bytes ``recorded`` describes, its state now). Cheap when
    size and mtime_ns are the recorded ones; otherwise the file is hashed (once per process
    per size+mtime), so a touched but unchanged file still matches."""
    st = Path(path).stat()
    if isinstance(recorded, dict) and recorded.get("sha256") and \
            (recorded.get("size"), recorded.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
        return True, recorded
    now = file_state(path)
    return isinstance(recorded, dict) and recorded.get("sha256") == now["sha256"], now


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a frame (column names and values), independent of the file bytes,
    so the same samples imported with another pyarrow build still match their scores."""
    h = hashlib.sha256()
    for name in frame.columns:
        h.update(f"\x00{name}\x00".encode("utf-8"))
        values = frame[name].astype(object).where(frame[name].notna(), None).tolist()
        h.update(json.dumps(values, ensure_ascii=False, default=str).encode("utf-8"))
    return h.hexdigest()


def cache_key(params: dict, inputs: dict | None = None) -> str:
    """Stable hash of a step's parameters and input fingerprints."""
    blob = json.dumps({"params": params, "inputs": inputs or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def package_versions(names: Iterable[str] = ("numpy", "pandas", "pyarrow", "torch",
                                             "transformers", "sentence-transformers",
                                             "faiss-cpu", "umap-learn", "scikit-learn")) -> dict:
    """Installed versions of the packages that shaped a result (recorded in sidecars)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def is_workspace(path: str | os.PathLike) -> bool:
    """True for a folder Cherrypick made: a readable manifest.json that is an object with a
    ``format_version``. Only such folders may be emptied by an overwrite."""
    manifest = Path(path, MANIFEST)
    try:
        body = atomic.read_json(manifest) if manifest.is_file() else None
    except (ValueError, OSError):
        return False
    return isinstance(body, dict) and "format_version" in body


def is_within(path: Path, folder: Path) -> bool:
    """``path`` (after resolving links) is ``folder`` or inside it."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def is_damage(path: Path, err: Exception) -> bool:
    """Whether reading ``path`` failed because its bytes are bad (not a wrong column name or
    a permission): a parquet file whose footer still reads is not damaged."""
    if not isinstance(err, DAMAGE) or isinstance(err, (PermissionError, FileNotFoundError)):
        return False
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pq.read_metadata(path)
        except Exception:
            return True
        return False
    return True


_WARNED: set[tuple[str, str]] = set()


def warn_once(path: Path, digest: str, message: str) -> None:
    """One ``ChangedInputWarning`` per changed file content and process (every step asks
    for the fingerprint; the person needs to hear it once)."""
    key = (str(path.resolve()), digest)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, ChangedInputWarning, stacklevel=3)


def brief(err: Exception) -> str:
    """The error on one line, short enough for the CLI's one-line messages."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def pick_ids(ids: Sequence[int], sample: int | None = None, seed: int = 0,
             limit: int | None = None) -> np.ndarray:
    """The ids a ``--sample N --seed S`` (a seeded random subset, in id order) or
    ``--limit N`` (the first N) run works on; all of ``ids`` (sorted) when neither."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if limit is not None:
        return ids[:max(0, int(limit))]
    if sample is not None:
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(ids, size=min(int(sample), len(ids)), replace=False))
    return ids
