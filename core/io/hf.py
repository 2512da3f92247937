"""Hugging Face datasets in and out: a ``datasets.save_to_disk`` folder (one dataset or a
``DatasetDict`` of splits), a single Arrow file (the IPC stream ``datasets`` writes, or the
IPC file / Feather v2 format), a dataset on the Hub (``--hf NAME``, when online), and a
selection written back as a ``save_to_disk`` folder.

Folders and Arrow files are read with pyarrow alone (the ``datasets`` package is imported
only for the Hub and for writing), so an import never runs code from the folder: the
folder's ``state.json`` / ``dataset_dict.json`` are read as plain JSON and only the Arrow
files they name, inside the folder, are opened. Rows then go through the same rules as a
Parquet table (``tables.arrow_records``; the ``core.io`` docstring).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from ..errors import InputError

ARROW_SUFFIXES = (".arrow", ".feather")
_STREAM_MAGIC = b"\xff\xff\xff\xff"  # an IPC stream message starts with the continuation mark
_FILE_MAGIC = b"ARROW1"


def is_saved_dataset(path: Path) -> bool:
    """A folder ``save_to_disk`` wrote: one dataset (state.json) or a DatasetDict."""
    return path.is_dir() and ((path / "state.json").is_file() or
                              (path / "dataset_dict.json").is_file())


def is_arrow_file(path: Path, head: bytes | None = None) -> bool:
    if head is not None and (head[:6] == _FILE_MAGIC or head[:4] == _STREAM_MAGIC):
        return True
    return path.name.lower().endswith(ARROW_SUFFIXES)


def _read_json(path: Path, folder: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"not a readable save_to_disk folder: {path.name} is not JSON "
                         f"({' '.join(str(err).split())[:200]})", file=str(folder)) from None
    if not isinstance(value, dict):
        raise InputError(f"not a readable save_to_disk folder: {path.name} is not a JSON "
                         "object", file=str(folder))
    return value


def _split_folder(folder: Path, split: str | None) -> tuple[Path, str | None]:
    """The folder of one dataset: itself, or the chosen split of a DatasetDict (a single
    split, or ``train``, when none is named)."""
    if (folder / "state.json").is_file() and not (folder / "dataset_dict.json").is_file():
        if split is not None:
            raise InputError(f"this folder holds one dataset, not splits; drop --split "
                             f"{split}", file=str(folder), field="split")
        return folder, None
    splits = _read_json(folder / "dataset_dict.json", folder).get("splits")
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise InputError("not a readable save_to_disk folder: dataset_dict.json has no list "
                         "of splits", file=str(folder))
    if split is None:
        if len(splits) == 1 or "train" in splits:
            split = splits[0] if len(splits) == 1 else "train"
        else:
            raise InputError(f"the folder holds the splits {', '.join(splits)}; choose one "
                             "with --split", file=str(folder), field="split")
    if split not in splits:
        raise InputError(f"no split {split!r} (splits: {', '.join(splits)})",
                         file=str(folder), field="split")
    inner = (folder / split).resolve()
    if inner.parent != folder.resolve() or not (inner / "state.json").is_file():
        raise InputError(f"split {split!r} has no state.json in its folder", file=str(folder),
                         field="split")
    return inner, split


def _data_files(folder: Path) -> list[Path]:
    state = _read_json(folder / "state.json", folder)
    entries = state.get("_data_files")
    if not isinstance(entries, list) or not entries:
        raise InputError("not a readable save_to_disk folder: state.json names no data files",
                         file=str(folder))
    files = []
    for entry in entries:
        name = entry.get("filename") if isinstance(entry, dict) else None
        path = (folder / name).resolve() if isinstance(name, str) else None
        if path is None or path.parent != folder.resolve():
            raise InputError(f"state.json names a data file outside the folder: {name!r}",
                             file=str(folder))
        if not path.is_file():
            raise InputError(f"data file {name} is missing", file=str(folder))
        files.append(path)
    return files


def read_arrow_file(path: Path):
    """A pyarrow Table from an Arrow IPC stream (what ``datasets`` writes) or IPC file."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            head = source.read(8)
            source.seek(0)
            if head[:6] == _FILE_MAGIC:
                return pa.ipc.open_file(source).read_all()
            return pa.ipc.open_stream(source).read_all()
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a folder, not a file", file=str(path)) from None
    except Exception as err:  # pyarrow raises several types for damaged data
        raise InputError(f"not a readable Arrow file ({' '.join(str(err).split())[:300]})",
                         file=str(path)) from None


def _sha256_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_arrow_source(path: Path, split: str | None = None):
    """(pyarrow Table, sha256 of the bytes read, the split read or None) of a saved
    dataset folder or an Arrow file."""
    import pyarrow as pa

    if path.is_dir():
        if not is_saved_dataset(path):
            raise InputError("is a folder without state.json or dataset_dict.json (not a "
                             "save_to_disk folder)", file=str(path))
        folder, split = _split_folder(path, split)
        files = _data_files(folder)
        tables = [read_arrow_file(f) for f in files]
        try:
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        except pa.ArrowInvalid as err:
            raise InputError(f"the data files disagree on columns ({err})", file=str(path))
        return table, _sha256_files([folder / "state.json", *files]), split
    if split is not None:
        raise InputError("--split is for save_to_disk folders and --hf", file=str(path),
                         field="split")
    return read_arrow_file(path), _sha256_files([path]), None


def load_hub_table(name: str, split: str | None = None, revision: str | None = None):
    """(pyarrow Table, fingerprint, split) of a dataset on the Hugging Face Hub. Offline, or
    for a name the Hub does not know, a one-line ``InputError``."""
    label = f"hf:{name}"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise InputError("the Hugging Face Hub is switched off here (HF_HUB_OFFLINE is set); "
                         "download the dataset elsewhere and import its save_to_disk folder",
                         file=label)
    try:
        import datasets
    except ImportError:
        raise InputError("the `datasets` package is not installed (pip install -r "
                         "requirements.txt)", file=label) from None
    try:
        loaded = datasets.load_dataset(name, split=split, revision=revision)
    except Exception as err:  # network, unknown name, bad split: many types
        text = " ".join(str(err).split())[:300] or type(err).__name__
        raise InputError(f"cannot load from the Hugging Face Hub ({text}); offline, import a "
                         "save_to_disk folder instead", file=label) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if len(splits) != 1 and "train" not in splits:
            raise InputError(f"the dataset has the splits {', '.join(splits)}; choose one "
                             "with --split", file=label, field="split")
        split = splits[0] if len(splits) == 1 else "train"
        loaded = loaded[split]
    table = loaded.flatten_indices().data.table
    return table, loaded._fingerprint, split


# ----- export ---------------------------------------------------------------------------
def write_saved_dataset(jsonl: Path, folder: Path) -> list[str]:
    """Write the records of an exported JSONL file as a ``save_to_disk`` folder (one column
    per top-level field, in order of first appearance; a record without a field gets null
    there). Returns the folder's file names."""
    import datasets
    import pyarrow as pa

    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {}
    for name in names:
        try:
            columns[name] = pa.array([row.get(name) for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise InputError(f"field {name!r} mixes value types across records, which an Arrow "
                             f"column cannot hold ({' '.join(str(err).split())[:160]}); "
                             "export as JSONL", field=name) from None
    table = pa.table(columns) if names else pa.table({})
    datasets.disable_progress_bars()  # the CLI and the app draw their own
    datasets.Dataset(table).save_to_disk(str(folder))
    return sorted(p.name for p in folder.iterdir())


def export_saved_dataset(ws, sample_ids, out_dir, force: bool = False, record: bool = False,
                         **export_options) -> dict:
    """``export --format hf``: the rows ``export_jsonl`` would write, as a ``save_to_disk``
    folder at ``out_dir`` with the manifest ``<out_dir>.manifest.json`` beside it.

    The folder is built next to ``out_dir`` and renamed into place, so a failure leaves the
    previous export as it was; ``force`` replaces only a folder that is a saved dataset."""
    from .. import atomic
    from ..export import export_jsonl, keep_manifest_copy, manifest_path
    from ..workspace import sha256_file

    out = Path(out_dir)
    if out.exists() and not (force and is_saved_dataset(out)):
        why = ("exists; pass --force to replace it" if is_saved_dataset(out) else
               "exists and is not a save_to_disk folder; choose a new folder name")
        raise InputError(why, file=str(out), field="out")
    if manifest_path(out).exists() and not force:
        raise InputError("exists; pass --force to replace it", file=str(manifest_path(out)),
                         field="out")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = export_jsonl(ws, sample_ids, work / "rows.jsonl", **export_options)
        built = work / "dataset"
        files = write_saved_dataset(work / "rows.jsonl", built)
        manifest.pop("output_sha256", None)
        manifest.update(output=str(out.resolve()), output_format="hf-save-to-disk",
                        output_files={name: sha256_file(built / name) for name in files})
        previous = work / "previous"
        if out.exists():
            os.replace(out, previous)  # the saved dataset being replaced (--force)
        try:
            os.replace(built, out)
        except OSError:
            if previous.exists():
                os.replace(previous, out)
            raise
        atomic.write_json(manifest_path(out), manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if record:
        keep_manifest_copy(ws, manifest, out)
    return manifest
