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
import io
import json
import os
import shutil
import time
import warnings
import zipfile
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
# manifest field: size, mtime_ns and sha256 of samples.parquet (``file_state``)
SAMPLES_FILE = "samples_file"
# Bumped when the layout changes so an older Cherrypick refuses a newer workspace instead of
# misreading it. Manifests written before the field existed are format 1.
FORMAT_VERSION = 1
# What a truncated or garbled parquet/npy/npz/json file raises when read (pyarrow's errors
# subclass ValueError or OSError); anything else is a bug, not damage, and propagates.
_DAMAGE = (ValueError, EOFError, OSError, zipfile.BadZipFile)


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
            inside = [Path(k) for k in keep if _is_within(Path(k), root)]
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
        except _DAMAGE as err:
            raise InputError(f"manifest.json is damaged ({err}); re-import the source with "
                             "`python -m core import FILE --workspace DIR --overwrite`",
                             file=str(ws.path(MANIFEST))) from None
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
            _warn_once(path, state["sha256"],
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
        _warn_once(path, state["sha256"], f"{name} changed since its step wrote it (other "
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
            if not _is_damage(path, err):
                raise
            path.unlink(missing_ok=True)
            message = (f"{os.path.relpath(path, self.root)} was damaged ({_brief(err)}); "
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
            if not _is_damage(self.path(name), err):
                raise
            raise InputError(f"{name} is damaged ({_brief(err)}); {fix}",
                             file=str(self.path(name))) from None

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
        if not force and old is not None and old.get("key") == key:
            value = self.read_cached(path, read)
            if value is not None:
                return StepResult(value, old, True)
        start = time.perf_counter()
        value = compute()
        duration = time.perf_counter() - start
        write(path, value)
        meta = {"step": name, "key": key, "params": params, "inputs": inputs,
                "created": now_iso(), "duration_s": round(duration, 3),
                "versions": package_versions()}
        if extra_meta is not None:
            meta.update(extra_meta(value))
        meta["file"] = file_state(path)  # what ``fingerprint`` checks the file against
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
        damaged: list[str] = []
        have = pd.DataFrame()
        if not force and old is not None and old.get("key") == key:
            have = self.read_cached(path, read_final, damaged)
            if have is None:
                have = pd.DataFrame()
        elif force and parts.exists():
            shutil.rmtree(parts)
        chunks = [self.read_cached(p, pd.read_parquet, damaged)
                  for p in sorted(parts.glob("chunk-*.parquet"))] if parts.exists() else []
        chunks = [c for c in chunks if c is not None]
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
        report(progress, finished, total, f"recomputing {len(damaged)} damaged file(s)"
               if damaged else "resuming" if finished else "")
        parts.mkdir(parents=True, exist_ok=True)
        # after the last chunk on disk, so a deleted damaged chunk never makes a name reused
        next_index = 1 + max((int(p.stem.split("-")[1]) for p in parts.glob("chunk-*.parquet")),
                             default=-1)
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
        meta["file"] = file_state(path)  # what ``fingerprint`` checks the file against
        self._write_meta(name, meta)
        shutil.rmtree(self.path(name + ".parts"), ignore_errors=True)
        return StepResult(result, meta, False)

    # ----- scores -----------------------------------------------------------------------
    def score_names(self) -> list[str]:
        folder = self.path("scores")
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def read_score(self, name: str) -> pd.DataFrame:
        return self._load(f"scores/{name}.parquet", pd.read_parquet,
                          "rerun the step that made it (see `python -m core info`)")

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


def is_workspace(path: str | os.PathLike) -> bool:
    """True for a folder Cherrypick made: a readable manifest.json that is an object with a
    ``format_version``. Only such folders may be emptied by an overwrite."""
    manifest = Path(path, MANIFEST)
    try:
        body = atomic.read_json(manifest) if manifest.is_file() else None
    except (ValueError, OSError):
        return False
    return isinstance(body, dict) and "format_version" in body


def _is_within(path: Path, folder: Path) -> bool:
    """``path`` (after resolving links) is ``folder`` or inside it."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _is_damage(path: Path, err: Exception) -> bool:
    """Whether reading ``path`` failed because its bytes are bad (not a wrong column name or
    a permission): a parquet file whose footer still reads is not damaged."""
    if not isinstance(err, _DAMAGE) or isinstance(err, (PermissionError, FileNotFoundError)):
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


def _warn_once(path: Path, digest: str, message: str) -> None:
    """One ``ChangedInputWarning`` per changed file content and process (every step asks
    for the fingerprint; the person needs to hear it once)."""
    key = (str(path.resolve()), digest)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, ChangedInputWarning, stacklevel=3)


def _brief(err: Exception) -> str:
    """The error on one line, short enough for the CLI's one-line messages."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def _own_version() -> str:
    from . import __version__

    return __version__
