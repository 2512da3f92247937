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

The one contract for every step lives in this package (docs/architecture.md, ``steps.py``): a
step names its parameters and its inputs; their hash is the cache key written in the sidecar;
a step reruns only when that key changed. Per-sample steps run in chunks written atomically,
so a killed run resumes where it stopped and extends an existing result without redoing
finished samples. ``files.py`` holds the hashing and damage checks both build on.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .. import atomic
from ..errors import InputError
from ..progress import Progress
from . import steps
from .files import (DAMAGE, MANIFEST, ChangedInputWarning, DamagedFileWarning, brief,
                    cache_key, file_state, frame_fingerprint, is_damage, is_within,
                    is_workspace, now_iso, package_versions, pick_ids, sha256_file,
                    verify_file, warn_once)
from .steps import JSON, NPY, PARQUET, Codec, Step, StepResult

__all__ = ["Workspace", "Step", "StepResult", "Codec", "PARQUET", "JSON", "NPY", "is_workspace",
           "pick_ids", "sha256_file", "file_state", "frame_fingerprint", "cache_key",
           "now_iso", "package_versions", "DamagedFileWarning", "ChangedInputWarning",
           "MANIFEST", "SAMPLES", "EMBEDDINGS", "KNN", "MAP", "CLUSTERS", "AUDIT",
           "FORMAT_VERSION"]

SAMPLES = "samples.parquet"
EMBEDDINGS = "embeddings.npy"
KNN = "knn.npz"
MAP = "map.parquet"
CLUSTERS = "clusters.json"
AUDIT = "audit.jsonl"
# manifest field: size, mtime_ns and sha256 of samples.parquet (``file_state``)
SAMPLES_FILE = "samples_file"
# Bumped when the layout changes so an older Cherrypick refuses a newer workspace instead of
# misreading it. Manifests written before the field existed are format 1.
FORMAT_VERSION = 1


class Workspace:
    """Handle on a workspace folder. Cheap to create; reads files lazily."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ----- creation and the basics -------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, samples: pd.DataFrame, source: dict,
               overwrite: bool = False, keep: Iterable[str | os.PathLike] = ()
               ) -> "Workspace":
        """Create a workspace from imported samples; ``source`` goes into the manifest.

        ``root`` must be new, an empty folder, or (with ``overwrite``) a Cherrypick
        workspace (``is_workspace``): a folder Cherrypick did not make is never emptied.
        Replacing a workspace that holds one of the ``keep`` paths (the files being
        imported) is refused, so the input is never deleted."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise InputError("the workspace path is a file, not a folder; choose a folder "
                             "name", file=str(root))
        if root.is_dir() and any(root.iterdir()):
            if not is_workspace(root):
                why = ("its manifest.json is unreadable or has no format_version"
                       if (root / MANIFEST).exists() else "it has no manifest.json")
                raise InputError(f"this folder is not empty and not a Cherrypick workspace "
                                 f"({why}); nothing was deleted: Cherrypick only replaces its "
                                 "own workspaces, so choose a new or empty folder",
                                 file=str(root))
            if not overwrite:
                raise InputError(f"a workspace already exists at {root}; pass overwrite to "
                                 "replace it", file=str(root))
            inside = [Path(k) for k in keep if is_within(Path(k), root)]
            if inside:
                raise InputError(f"the input {inside[0]} is inside the workspace it would "
                                 "replace; nothing was deleted: move the input out of the "
                                 "folder or import into another workspace", file=str(root))
            for child in root.iterdir():
                if child.is_dir() and not child.is_symlink():
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
            "format_version": FORMAT_VERSION,
            "samples_fingerprint": frame_fingerprint(samples),
            # the bytes the fingerprint describes: samples_fingerprint() checks them
            SAMPLES_FILE: file_state(ws.path(SAMPLES)),
            "versions": package_versions(("numpy", "pandas", "pyarrow")),
            "cherrypick": _own_version(),
        }
        atomic.write_json(ws.path(MANIFEST), manifest)
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Workspace":
        """The workspace at ``root``, checked: a path that is a file, a missing folder, or a
        damaged, foreign or newer manifest is a one-line ``InputError``."""
        ws = cls(root)
        if ws.root.exists() and not ws.root.is_dir():
            raise InputError("not a workspace (a file, not a folder); give the folder made by "
                             "`python -m core import FILE --workspace DIR`", file=str(root))
        if not ws.root.exists():
            raise InputError("not a workspace (no such folder); create one with "
                             "`python -m core import FILE --workspace DIR`", file=str(root))
        if not ws.path(MANIFEST).is_file():
            raise InputError("not a workspace (no manifest.json); create one with "
                             "`python -m core import FILE --workspace DIR`", file=str(root))
        try:
            manifest = ws.manifest
        except DAMAGE as err:
            raise InputError(f"manifest.json is damaged ({brief(err)}); Cherrypick cannot tell "
                             "this folder is its own, so it will not replace it: move it "
                             "away and import the source again (`python -m core import FILE "
                             "--workspace DIR`)", file=str(ws.path(MANIFEST))) from None
        version = manifest.get("format_version", 1) if isinstance(manifest, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise InputError(f"not a workspace manifest (format_version {version!r})",
                             file=str(ws.path(MANIFEST)), field="format_version")
        if version > FORMAT_VERSION:
            raise InputError(f"made by a newer Cherrypick (workspace format {version}; this "
                             f"version reads up to {FORMAT_VERSION}): upgrade Cherrypick "
                             "(`pip install -U`) or re-import the source into a new workspace",
                             file=str(ws.path(MANIFEST)), field="format_version")
        counts = manifest.get("counts")
        samples = counts.get("samples") if isinstance(counts, dict) else None
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise InputError(f"not a workspace manifest (counts.samples {samples!r}); re-import "
                             "the source with `python -m core import FILE --workspace DIR "
                             "--overwrite`", file=str(ws.path(MANIFEST)), field="counts.samples")
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
        return self._load(SAMPLES, lambda p: pd.read_parquet(
            p, columns=list(columns) if columns else None),
            "it cannot be recomputed: re-import the source with `python -m core import FILE "
            f"--workspace {self.root} --overwrite`")

    def __len__(self) -> int:
        return int(self.manifest["counts"]["samples"])

    def samples_fingerprint(self) -> str:
        """Content fingerprint (``frame_fingerprint``) of samples.parquet as it is on disk
        now: every step's cache key and every export manifest start from it.

        The manifest records the file's size, mtime_ns and sha256 next to the fingerprint.
        Same size and mtime: the recorded fingerprint (no read). Otherwise the file is
        hashed; same bytes: the recorded fingerprint (the new mtime is recorded). Other
        bytes (the file was replaced): the fingerprint is recomputed from the data, a
        ``ChangedInputWarning`` says so, and the manifest is updated, so every dependent
        step sees another input and recomputes."""
        manifest = self.manifest
        path = self.path(SAMPLES)
        if not path.is_file():
            raise InputError("samples.parquet is missing; re-import the source with "
                             f"`python -m core import FILE --workspace {self.root} "
                             "--overwrite`", file=str(path))
        recorded = manifest.get(SAMPLES_FILE)
        same, state = verify_file(path, recorded)
        stored = manifest.get("samples_fingerprint")
        if same and stored:
            if state is not recorded:
                self._update_manifest({SAMPLES_FILE: state})
            return stored
        data = path.read_bytes()  # hashed and parsed from the same bytes
        state = {"size": len(data), "mtime_ns": state["mtime_ns"],
                 "sha256": hashlib.sha256(data).hexdigest()}
        frame = self._load(SAMPLES, lambda p: pd.read_parquet(io.BytesIO(data)),
                           "it cannot be recomputed: re-import the source with `python -m "
                           f"core import FILE --workspace {self.root} --overwrite`")
        fingerprint = frame_fingerprint(frame)
        if fingerprint != stored:
            warn_once(path, state["sha256"],
                       f"{SAMPLES} changed since it was recorded (other content, sha256 "
                       f"{state['sha256'][:12]}): every step that depends on it recomputes")
        self._update_manifest({
            "samples_fingerprint": fingerprint, SAMPLES_FILE: state,
            "counts": {**manifest.get("counts", {}), "samples": int(len(frame)),
                       "duplicates": int(frame["duplicate_of"].notna().sum())
                       if "duplicate_of" in frame else 0}})
        return fingerprint

    def _update_manifest(self, fields: dict) -> None:
        """Merge ``fields`` into manifest.json (a read-only workspace keeps its manifest:
        the values are recomputed, and the hash cached in memory, on the next call)."""
        try:
            atomic.write_json(self.path(MANIFEST), {**self.manifest, **fields})
        except OSError:
            pass

    # ----- sidecars -------------------------------------------------------------------
    @staticmethod
    def sidecar_path(path: str | os.PathLike) -> Path:
        path = Path(path)
        return path.with_name(path.name.split(".")[0] + ".json") if path.suffix != ".json" \
            else path

    def meta(self, name: str) -> dict | None:
        """The sidecar of a result file (``embeddings.npy`` → ``embeddings.json``)."""
        return self.read_cached(self.sidecar_path(self.path(name)), atomic.read_json)

    def fingerprint(self, name: str) -> str | None:
        """Cache key of a result: what later steps record as their input.

        The sidecar's key, checked against the file's bytes (``verify_file`` on the
        sidecar's ``file`` record): a result replaced by hand (another embeddings.npy under
        the same sidecar) gets a key with its sha256 added, so the steps that read it
        recompute. A sidecar from before files were recorded learns the file as it is."""
        if name == SAMPLES:
            return self.samples_fingerprint()
        m = self.meta(name)
        key = None if m is None else m.get("key")
        path = self.path(name)
        if key is None or not path.is_file():
            return key
        recorded = m.get("file")
        same, state = verify_file(path, recorded)
        if same or recorded is None:
            if state is not recorded:
                try:
                    self._write_meta(name, {**m, "file": state})
                except OSError:
                    pass
            return key
        warn_once(path, state["sha256"], f"{name} changed since its step wrote it (other "
                   f"content, sha256 {state['sha256'][:12]}): the steps that read it "
                   "recompute")
        return f"{key}+{state['sha256'][:16]}"

    def _write_meta(self, name: str, meta: dict) -> None:
        atomic.write_json(self.sidecar_path(self.path(name)), meta)

    # ----- damaged files ------------------------------------------------------------------
    def read_cached(self, path: str | os.PathLike, read: Callable[[Path], Any],
                    damaged: list[str] | None = None) -> Any | None:
        """``read(path)``, or None when the file is absent or damaged (truncated by a full
        disk, a crash outside our atomic writes, a bad copy). A damaged file is deleted so
        its step recomputes it, and the person is told with a ``DamagedFileWarning`` (the CLI
        prints it on one line); the message is also appended to ``damaged``."""
        path = Path(path)
        if not path.exists():
            return None
        try:
            return read(path)
        except Exception as err:
            if not is_damage(path, err):
                raise
            path.unlink(missing_ok=True)
            message = (f"{os.path.relpath(path, self.root)} was damaged ({brief(err)}); "
                       "deleted it, recomputing")
            warnings.warn(message, DamagedFileWarning, stacklevel=2)
            if damaged is not None:
                damaged.append(message)
            return None

    def _load(self, name: str, read: Callable[[Path], Any], fix: str) -> Any:
        """Read a result later steps depend on; a damaged one is an ``InputError`` saying how
        to rebuild it (the reading step cannot recompute another step's file)."""
        try:
            return read(self.path(name))
        except Exception as err:
            if not is_damage(self.path(name), err):
                raise
            raise InputError(f"{name} is damaged ({brief(err)}); {fix}",
                             file=str(self.path(name))) from None

    # ----- the step contract (steps.py) ------------------------------------------------
    def run_whole(self, step: Step, compute: Callable[[], Any], force: bool = False,
                  summary: Callable[[Any], dict] | None = None) -> StepResult:
        """Run a whole-dataset step (kNN, map, DS2) with caching: ``steps.run_whole``."""
        return steps.run_whole(self, step, compute, force=force, summary=summary)

    def run_chunked(self, step: Step, sample_ids: Sequence[int],
                    compute: Callable[[np.ndarray, Callable], pd.DataFrame],
                    chunk_size: int = 256, progress: Progress | None = None,
                    force: bool = False, summary: Callable[[pd.DataFrame], dict] | None = None,
                    executor=None) -> StepResult:
        """Run a per-sample step in resumable chunks (``executor``: where, core/executors):
        ``steps.run_chunked``."""
        return steps.run_chunked(self, step, sample_ids, compute, chunk_size=chunk_size,
                                 progress=progress, force=force, summary=summary,
                                 executor=executor)

    def stored_rows(self, step: Step, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Rows of ``step`` already computed under its current key: ``steps.stored_rows``."""
        return steps.stored_rows(self, step, columns)

    def pick_sample_ids(self, sample: int | None = None, seed: int = 0,
                        limit: int | None = None) -> np.ndarray:
        """The sample ids of a ``--sample N --seed S`` / ``--limit N`` run (``pick_ids``)."""
        return pick_ids(self.samples(["sample_id"])["sample_id"].to_numpy(), sample, seed,
                        limit)

    # ----- scores -----------------------------------------------------------------------
    def score_names(self) -> list[str]:
        folder = self.path("scores")
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def read_score(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """``scores/<name>.parquet`` (only ``columns`` when given); a damaged file is an
        ``InputError`` saying how to rebuild it."""
        return self._load(f"scores/{name}.parquet", lambda p: pd.read_parquet(
            p, columns=list(columns) if columns is not None else None),
            "rerun the step that made it (see `python -m core info`)")

    def file_sha256(self, name: str) -> str | None:
        """sha256 of a workspace file (hashed once per size and mtime), None when absent:
        what selections and export manifests record of the files they read."""
        path = self.path(name)
        return file_state(path)["sha256"] if path.is_file() else None

    def column_dtypes(self, name: str) -> dict[str, object]:
        """The columns of a Parquet result and the pandas dtype each is read as, from the
        file's schema alone; an unreadable file is an ``InputError`` naming it."""
        import pyarrow.parquet as pq

        path = self.path(name)
        try:
            empty = pq.read_schema(path).empty_table().to_pandas(ignore_metadata=True)
        except Exception as err:  # pyarrow raises several types for a bad footer
            raise InputError(f"not a readable Parquet file ({brief(err)}); rerun the step "
                             "that made it", file=str(path)) from None
        return dict(empty.dtypes.items())

    def score_meta(self, name: str) -> dict | None:
        return self.meta(f"scores/{name}.parquet")

    def write_score(self, name: str, frame: pd.DataFrame, meta: dict) -> None:
        """Write a whole score file and its sidecar (for results not made by a step here:
        the demo's shipped scores, tests); the sidecar records the file as written."""
        path = self.path("scores", f"{name}.parquet")
        atomic.write_parquet(path, frame)
        atomic.write_json(self.path("scores", f"{name}.json"), {**meta, "file": file_state(path)})

    # ----- arrays -----------------------------------------------------------------------
    def embeddings(self, mmap: bool = True) -> np.ndarray:
        if not self.exists(EMBEDDINGS):
            raise InputError("no embeddings yet; run `python -m core embed --workspace "
                             f"{self.root}`", file=str(self.root))
        return self._load(EMBEDDINGS, lambda p: np.load(p, mmap_mode="r" if mmap else None,
                                                        allow_pickle=False),
                          f"rerun `python -m core embed --workspace {self.root}`")

    def knn(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.exists(KNN):
            raise InputError("no neighbours yet; run `python -m core neighbors --workspace "
                             f"{self.root}`", file=str(self.root))
        def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
            with np.load(path, allow_pickle=False) as z:
                return z["indices"], z["similarities"]

        return self._load(KNN, read, f"rerun `python -m core neighbors --workspace {self.root}`")

    def map(self) -> pd.DataFrame:
        if not self.exists(MAP):
            raise InputError(f"no map yet; run `python -m core map --workspace {self.root}`",
                             file=str(self.root))
        return self._load(MAP, pd.read_parquet,
                          f"rerun `python -m core map --workspace {self.root}`")

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
    from .. import __version__

    return __version__
