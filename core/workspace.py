"""A workspace is one folder per dataset; every step's result is a file in it.

Layout::

    manifest.json            source path + sha256, format, counts, created, versions
    samples.parquet          sample_id, source_row, instruction, input, output, record, ...
    embeddings.npy (+ .json) float32, L2-normalised, row i = sample_id i
    knn.npz (+ .json)        indices, similarities (self excluded)
    map.parquet (+ .json)    sample_id, x, y, cluster
    clusters.json            cluster titles
    scores/<name>.parquet    sample_id + score columns, with scores/<name>.json sidecar
    audit.jsonl              append-only audit decisions
    selections/, exports/    later steps

The one contract for every step lives here (DESIGN.md): a step names its parameters and its
inputs; their hash is the cache key written in the sidecar; a step reruns only when that key
changed. Per-sample steps run in chunks written atomically, so a killed run resumes where it
stopped and extends an existing result without redoing finished samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from . import atomic
from .errors import InputError
from .progress import Progress, report

MANIFEST = "manifest.json"
SAMPLES = "samples.parquet"
EMBEDDINGS = "embeddings.npy"
KNN = "knn.npz"
MAP = "map.parquet"
CLUSTERS = "clusters.json"
AUDIT = "audit.jsonl"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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


@dataclass
class StepResult:
    """What ``Workspace.run_*`` returns: the value, its sidecar, and whether it was cached."""

    value: Any
    meta: dict
    cached: bool


class Workspace:
    """Handle on a workspace folder. Cheap to create; reads files lazily."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ----- creation and the basics -------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, samples: pd.DataFrame, source: dict,
               overwrite: bool = False) -> "Workspace":
        """Create a workspace from imported samples; ``source`` goes into the manifest."""
        root = Path(root)
        if (root / MANIFEST).exists() and not overwrite:
            raise InputError(f"a workspace already exists at {root}; pass overwrite to replace it",
                             file=str(root))
        if root.exists() and overwrite:
            for child in root.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        root.mkdir(parents=True, exist_ok=True)
        ws = cls(root)
        atomic.write_parquet(ws.path(SAMPLES), samples)
        manifest = {
            "created": now_iso(),
            "source": source,
            "counts": {
                "samples": int(len(samples)),
                "duplicates": int(samples["duplicate_of"].notna().sum())
                if "duplicate_of" in samples else 0,
            },
            "samples_fingerprint": frame_fingerprint(samples),
            "versions": package_versions(("numpy", "pandas", "pyarrow")),
            "cherrypick": _own_version(),
        }
        atomic.write_json(ws.path(MANIFEST), manifest)
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Workspace":
        ws = cls(root)
        if not ws.path(MANIFEST).exists():
            raise InputError("not a workspace (no manifest.json); create one with "
                             "`python -m core import FILE --workspace DIR`", file=str(root))
        return ws

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    @property
    def manifest(self) -> dict:
        return atomic.read_json(self.path(MANIFEST))

    @property
    def name(self) -> str:
        return self.root.name

    def samples(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return pd.read_parquet(self.path(SAMPLES), columns=list(columns) if columns else None)

    def __len__(self) -> int:
        return int(self.manifest["counts"]["samples"])

    def samples_fingerprint(self) -> str:
        return self.manifest["samples_fingerprint"]

    # ----- sidecars -------------------------------------------------------------------
    @staticmethod
    def sidecar_path(path: str | os.PathLike) -> Path:
        path = Path(path)
        return path.with_name(path.name.split(".")[0] + ".json") if path.suffix != ".json" \
            else path

    def meta(self, name: str) -> dict | None:
        """The sidecar of a result file (``embeddings.npy`` → ``embeddings.json``)."""
        side = self.sidecar_path(self.path(name))
        return atomic.read_json(side) if side.exists() else None

    def fingerprint(self, name: str) -> str | None:
        """Cache key of a result: what later steps record as their input."""
        if name == SAMPLES:
            return self.samples_fingerprint()
        m = self.meta(name)
        return None if m is None else m.get("key")

    def _write_meta(self, name: str, meta: dict) -> None:
        atomic.write_json(self.sidecar_path(self.path(name)), meta)

    # ----- whole-dataset steps ------------------------------------------------------------
    def run_whole(self, name: str, params: dict, inputs: dict, compute: Callable[[], Any],
                  write: Callable[[Path, Any], None], read: Callable[[Path], Any],
                  force: bool = False, extra_meta: Callable[[Any], dict] | None = None
                  ) -> StepResult:
        """Run a step that needs the whole dataset at once (kNN, map, DS2), with caching.

        ``inputs`` maps input names to fingerprints; ``write(path, value)`` must be atomic.
        """
        key = cache_key(params, inputs)
        path = self.path(name)
        old = self.meta(name)
        if not force and path.exists() and old is not None and old.get("key") == key:
            return StepResult(read(path), old, True)
        start = time.perf_counter()
        value = compute()
        duration = time.perf_counter() - start
        write(path, value)
        meta = {"step": name, "key": key, "params": params, "inputs": inputs,
                "created": now_iso(), "duration_s": round(duration, 3),
                "versions": package_versions()}
        if extra_meta is not None:
            meta.update(extra_meta(value))
        self._write_meta(name, meta)
        return StepResult(value, meta, False)

    # ----- per-sample, chunked, resumable steps -----------------------------------------
    def run_chunked(self, name: str, params: dict, inputs: dict, sample_ids: Sequence[int],
                    compute: Callable[[np.ndarray], pd.DataFrame], chunk_size: int = 256,
                    progress: Progress | None = None, extra_meta: dict | None = None,
                    force: bool = False,
                    write_final: Callable[[Path, pd.DataFrame], None] = atomic.write_parquet,
                    read_final: Callable[[Path], pd.DataFrame] = pd.read_parquet
                    ) -> StepResult:
        """Score ``sample_ids`` with ``compute(ids) -> frame(sample_id, ...)`` in chunks.

        The result is ``name`` (a parquet file keyed by ``sample_id``). With the same key, ids
        already in the result or in a finished chunk are skipped, so a rerun after a kill
        resumes, and a larger request extends the result. A changed key starts afresh.
        ``write_final``/``read_final`` store the merged frame in another format (embeddings).
        """
        key = cache_key(params, inputs)
        path = self.path(name)
        parts = self.path(name + ".parts", key)
        old = self.meta(name)
        have = pd.DataFrame()
        if not force and path.exists() and old is not None and old.get("key") == key:
            have = read_final(path)
        elif force and parts.exists():
            shutil.rmtree(parts)
        chunks = [pd.read_parquet(p) for p in sorted(parts.glob("chunk-*.parquet"))] \
            if parts.exists() else []
        done = set(have["sample_id"].tolist()) if len(have) else set()
        for c in chunks:
            done.update(c["sample_id"].tolist())
        wanted = np.asarray(sorted(set(int(i) for i in sample_ids)), dtype=np.int64)
        todo = np.asarray([i for i in wanted if i not in done], dtype=np.int64)
        if len(todo) == 0 and not chunks:
            return StepResult(have, old, True)
        start = time.perf_counter()
        total = len(wanted)
        finished = total - len(todo)
        report(progress, finished, total, "resuming" if finished else "")
        parts.mkdir(parents=True, exist_ok=True)
        next_index = len(list(parts.glob("chunk-*.parquet")))
        for lo in range(0, len(todo), chunk_size):
            ids = todo[lo:lo + chunk_size]
            frame = compute(ids)
            if "sample_id" not in frame or len(frame) != len(ids):
                raise RuntimeError(f"step {name} returned {len(frame)} rows for {len(ids)} ids")
            atomic.write_parquet(parts / f"chunk-{next_index:06d}.parquet", frame)
            chunks.append(frame)
            next_index += 1
            finished += len(ids)
            report(progress, finished, total, "")
        result = pd.concat([f for f in [have, *chunks] if len(f)], ignore_index=True)
        result = result.drop_duplicates("sample_id", keep="last").sort_values("sample_id")
        result = result.reset_index(drop=True)
        write_final(path, result)
        duration = time.perf_counter() - start
        meta = {"step": name, "key": key, "params": params, "inputs": inputs,
                "created": now_iso(), "rows": int(len(result)),
                "duration_s": round(duration + float((old or {}).get("duration_s", 0) if
                                                     len(have) else 0), 3),
                "versions": package_versions()}
        meta.update(extra_meta or {})
        self._write_meta(name, meta)
        shutil.rmtree(self.path(name + ".parts"), ignore_errors=True)
        return StepResult(result, meta, False)

    # ----- scores -----------------------------------------------------------------------
    def score_names(self) -> list[str]:
        folder = self.path("scores")
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def read_score(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.path("scores", f"{name}.parquet"))

    def score_meta(self, name: str) -> dict | None:
        return self.meta(f"scores/{name}.parquet")

    def write_score(self, name: str, frame: pd.DataFrame, meta: dict) -> None:
        """Write a whole score file and its sidecar (for steps not run through run_*)."""
        atomic.write_parquet(self.path("scores", f"{name}.parquet"), frame)
        atomic.write_json(self.path("scores", f"{name}.json"), meta)

    # ----- arrays -----------------------------------------------------------------------
    def embeddings(self, mmap: bool = True) -> np.ndarray:
        if not self.exists(EMBEDDINGS):
            raise InputError("no embeddings yet; run `python -m core embed --workspace "
                             f"{self.root}`", file=str(self.root))
        return np.load(self.path(EMBEDDINGS), mmap_mode="r" if mmap else None,
                       allow_pickle=False)

    def knn(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.exists(KNN):
            raise InputError("no neighbours yet; run `python -m core neighbors --workspace "
                             f"{self.root}`", file=str(self.root))
        with np.load(self.path(KNN), allow_pickle=False) as z:
            return z["indices"], z["similarities"]

    def map(self) -> pd.DataFrame:
        if not self.exists(MAP):
            raise InputError(f"no map yet; run `python -m core map --workspace {self.root}`",
                             file=str(self.root))
        return pd.read_parquet(self.path(MAP))

    def cluster_titles(self) -> dict[int, str]:
        if not self.exists(CLUSTERS):
            return {}
        return {int(k): v for k, v in atomic.read_json(self.path(CLUSTERS))["titles"].items()}

    # ----- summary ----------------------------------------------------------------------
    def info(self) -> dict:
        """What exists in the workspace and with which parameters (for `info` and the app)."""
        m = self.manifest
        steps = {}
        for name in (EMBEDDINGS, KNN, MAP):
            meta = self.meta(name)
            steps[name.split(".")[0]] = None if meta is None or not self.exists(name) else {
                "params": meta.get("params"), "created": meta.get("created"),
                "duration_s": meta.get("duration_s")}
        scores = {}
        for s in self.score_names():
            meta = self.score_meta(s) or {}
            scores[s] = {"params": meta.get("params"), "rows": meta.get("rows"),
                         "created": meta.get("created")}
        return {"workspace": str(self.root), "source": m.get("source"), "counts": m["counts"],
                "created": m.get("created"), "steps": steps, "scores": scores}


def _own_version() -> str:
    from . import __version__

    return __version__
