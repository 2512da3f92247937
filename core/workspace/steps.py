"""The step contract (docs/architecture.md): a step says what it is; the workspace runs it.

A step declares its result file, its parameters, the workspace files it reads and how to
compute its value, whole or a chunk of sample ids at a time. The workspace hashes the
parameters with the fingerprints of those inputs into the cache key, skips work already done
under that key, feeds ``compute`` chunk by chunk with a chunk-local progress callback, writes
every file atomically, resumes after a kill, extends a result when more rows are asked for,
and writes the sidecar. No scorer touches chunk folders, sidecars or result paths itself
(datatrove's habit: finished chunks are marked, so a rerun resumes).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from .. import atomic
from ..progress import Progress, report
from .files import cache_key, file_state, now_iso, package_versions

if TYPE_CHECKING:
    from . import Workspace

ChunkProgress = Callable[..., None]  # progress(done, total, note="") inside one chunk


@dataclass(frozen=True)
class Codec:
    """How one result file is written (atomically) and read back."""

    write: Callable[[Path, Any], None]
    read: Callable[[Path], Any]


PARQUET = Codec(atomic.write_parquet, pd.read_parquet)
JSON = Codec(atomic.write_json, atomic.read_json)
NPY = Codec(atomic.write_npy, lambda path: np.load(path, allow_pickle=False))


@dataclass
class Step:
    """What a step is.

    ``name``: its result file (``scores/ifd.parquet``, ``map.parquet``); the sidecar sits
    beside it. ``params``: everything that changes the result. ``inputs``: the workspace
    files it reads, by label (``{"samples": "samples.parquet"}``); their fingerprints join
    the cache key, so a changed input recomputes the step. ``external``: fingerprints of
    inputs outside the workspace (a reference file's sha256). ``meta``: sidecar fields that
    do not change the result (model identity). ``codec``: how the result is stored.
    ``also``: further files a whole step writes (``{"clusters.json": JSON}``); its
    ``compute`` then returns ``{file: value}`` for every file, the result included.
    """

    name: str
    params: dict
    inputs: dict[str, str] = field(default_factory=dict)
    external: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    codec: Codec = PARQUET
    also: dict[str, Codec] = field(default_factory=dict)


@dataclass
class StepResult:
    """What running a step returns: the value, its sidecar, and whether it was cached."""

    value: Any
    meta: dict
    cached: bool


def step_key(ws: "Workspace", step: Step) -> tuple[str, dict]:
    """The cache key of ``step`` in ``ws`` and the input fingerprints it hashes."""
    inputs = {label: ws.fingerprint(name) for label, name in step.inputs.items()}
    inputs.update(step.external)
    return cache_key(step.params, inputs), inputs


def _sidecar(ws: "Workspace", step: Step, key: str, inputs: dict, duration: float,
             extra: dict) -> dict:
    return {"step": step.name, "key": key, "params": step.params, "inputs": inputs,
            "created": now_iso(), "duration_s": round(duration, 3),
            "versions": package_versions(), **step.meta, **extra,
            # what ``Workspace.fingerprint`` checks the file against
            "file": file_state(ws.path(step.name))}


def run_whole(ws: "Workspace", step: Step, compute: Callable[[], Any], force: bool = False,
              summary: Callable[[Any], dict] | None = None) -> StepResult:
    """Run a step that needs the whole dataset at once (kNN, map, DS2), with caching.

    With ``step.also``, ``compute`` returns ``{file: value}`` and the value read back from
    the cache has the same shape; the extra files are written first, so a kill between the
    writes leaves the old result, whose key no longer matches, and the next run redoes all.
    """
    key, inputs = step_key(ws, step)
    files = {step.name: step.codec, **step.also}
    old = ws.meta(step.name)
    if not force and old is not None and old.get("key") == key:
        values = {name: ws.read_cached(ws.path(name), codec.read)
                  for name, codec in files.items()}
        if all(v is not None for v in values.values()):
            return StepResult(values if step.also else values[step.name], old, True)
    start = time.perf_counter()
    value = compute()
    duration = time.perf_counter() - start
    values = value if step.also else {step.name: value}
    for name in [*step.also, step.name]:
        files[name].write(ws.path(name), values[name])
    meta = _sidecar(ws, step, key, inputs, duration, summary(value) if summary else {})
    ws._write_meta(step.name, meta)
    return StepResult(value, meta, False)


def _parts(ws: "Workspace", step: Step, key: str) -> Path:
    return ws.path(step.name + ".parts", key)


def stored_rows(ws: "Workspace", step: Step, columns: Sequence[str] | None = None
                ) -> pd.DataFrame:
    """Rows already computed for ``step`` under its current key: the finished result and
    the chunks of an unfinished run (damaged files are dropped, to be recomputed)."""
    key, _ = step_key(ws, step)
    read = (lambda p: step.codec.read(p)) if columns is None else \
        (lambda p: pd.read_parquet(p, columns=["sample_id", *columns]))
    frames = []
    meta = ws.meta(step.name)
    if meta is not None and meta.get("key") == key:
        frames.append(ws.read_cached(ws.path(step.name), read))
    parts = _parts(ws, step, key)
    if parts.exists():
        frames += [ws.read_cached(p, read) for p in sorted(parts.glob("chunk-*.parquet"))]
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return pd.DataFrame({"sample_id": pd.Series(dtype=np.int64)})
    out = pd.concat(frames, ignore_index=True).drop_duplicates("sample_id", keep="last")
    return out.sort_values("sample_id").reset_index(drop=True)


def run_chunked(ws: "Workspace", step: Step, sample_ids: Sequence[int],
                compute: Callable[[np.ndarray, ChunkProgress], pd.DataFrame],
                chunk_size: int = 256, progress: Progress | None = None, force: bool = False,
                summary: Callable[[pd.DataFrame], dict] | None = None,
                executor=None) -> StepResult:
    """Compute ``step`` for ``sample_ids`` with ``compute(ids, progress) -> frame`` in chunks.

    The result (``step.name``, keyed by ``sample_id``) is merged from the stored result and
    the chunks. With the same key, ids already in the result or in a finished chunk are
    skipped, so a rerun after a kill resumes and a larger request extends the result; a
    changed key starts afresh. ``compute`` reports progress inside its chunk in any unit
    (``progress(done, total, note)``); the workspace turns it into rows of the whole run.
    ``summary(result)`` adds fields to the sidecar (counts). ``executor`` (core/executors:
    local by default, or Ray) computes the chunks; each finished chunk comes back here to be
    written, so resuming and the final file are the same wherever chunks ran.
    """
    from ..executors import LOCAL

    key, inputs = step_key(ws, step)
    path = ws.path(step.name)
    parts = _parts(ws, step, key)
    old = ws.meta(step.name)
    damaged: list[str] = []
    have = pd.DataFrame()
    if not force and old is not None and old.get("key") == key:
        have = ws.read_cached(path, step.codec.read, damaged)
        if have is None:
            have = pd.DataFrame()
    elif force and parts.exists():
        shutil.rmtree(parts)
    chunks = [ws.read_cached(p, pd.read_parquet, damaged)
              for p in sorted(parts.glob("chunk-*.parquet"))] if parts.exists() else []
    chunks = [c for c in chunks if c is not None]
    done = set(have["sample_id"].tolist()) if len(have) else set()
    for c in chunks:
        done.update(c["sample_id"].tolist())
    wanted = np.asarray(sorted({int(i) for i in sample_ids}), dtype=np.int64)
    todo = np.asarray([i for i in wanted if i not in done], dtype=np.int64)
    if len(todo) == 0 and not chunks:
        return StepResult(have, old, True)
    start = time.perf_counter()
    total = len(wanted)
    finished = total - len(todo)
    report(progress, finished, total, f"recomputing {len(damaged)} damaged file(s)"
           if damaged else "resuming" if finished else "")
    parts.mkdir(parents=True, exist_ok=True)
    # after the last chunk on disk, so a deleted damaged chunk never makes a name reused
    next_index = 1 + max((int(p.stem.split("-")[1]) for p in parts.glob("chunk-*.parquet")),
                         default=-1)
    executor = executor or LOCAL

    def store(ids: np.ndarray, frame: pd.DataFrame) -> None:
        nonlocal next_index, finished
        if "sample_id" not in frame or len(frame) != len(ids):
            raise RuntimeError(f"step {step.name} returned {len(frame)} rows for {len(ids)} ids")
        atomic.write_parquet(parts / f"chunk-{next_index:06d}.parquet", frame)
        chunks.append(frame)
        next_index += 1
        finished += len(ids)
        report(progress, finished, total, "")

    executor.run([todo[lo:lo + chunk_size] for lo in range(0, len(todo), chunk_size)], compute,
                 store, lambda rows: _within(progress, finished, rows, total))
    result = pd.concat([f for f in [have, *chunks] if len(f)], ignore_index=True)
    result = result.drop_duplicates("sample_id", keep="last").sort_values("sample_id")
    result = result.reset_index(drop=True)
    step.codec.write(path, result)
    earlier = float((old or {}).get("duration_s", 0)) if len(have) else 0.0
    meta = _sidecar(ws, step, key, inputs, time.perf_counter() - start + earlier,
                    {"rows": int(len(result)), **executor.describe(),
                     **(summary(result) if summary else {})})
    ws._write_meta(step.name, meta)
    shutil.rmtree(ws.path(step.name + ".parts"), ignore_errors=True)
    return StepResult(result, meta, False)


def _within(progress: Progress | None, finished: int, rows: int, total: int) -> ChunkProgress:
    """A chunk's own progress callback: its ``done/of`` (in any unit) as rows of the run. The
    chunk's end is reported by the workspace once the chunk is on disk."""
    def inner(done: float, of: float, note: str = "") -> None:
        if progress is not None and of and done < of:
            report(progress, finished + int(rows * done / of), total, note)

    return inner
