"""Hugging Face datasets (issue 15 item 5): ``save_to_disk`` folders and Arrow files written by
the ``datasets`` package itself from real rows import like the same rows as JSONL; ``--hf``
fails in one line offline; ``export --format hf`` writes a folder ``load_from_disk`` reads back
equal to the JSONL export."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from streamlit.testing.v1 import AppTest

from core.errors import InputError
from core.export import export_all, export_selection
from core.io import import_to_workspace, read_datasets
from core.io.hf import load_hub_table
from core.select import make_recipe, run_selection, save_selection
from real_rows import first_rows

REPO = Path(__file__).resolve().parents[1]
COMPARED = ["instruction", "input", "output", "record", "duplicate_of", "claude_ge_4_5"]


@pytest.fixture(scope="module")
def rows(data_dir):
    return first_rows(data_dir / "alpaca_random_9k.jsonl.gz", 60)


@pytest.fixture(scope="module")
def as_jsonl(rows, tmp_path_factory):
    """The same rows as a JSONL file: what every HF form must import equal to."""
    path = tmp_path_factory.mktemp("jsonl") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return read_datasets([path]).samples


def _same_samples(result, expected):
    pd.testing.assert_frame_equal(result.samples[COMPARED].reset_index(drop=True),
                                  expected[COMPARED].reset_index(drop=True))


def test_save_to_disk_folder_imports_like_the_jsonl(rows, as_jsonl, tmp_path):
    folder = tmp_path / "alpaca_hf"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    result = read_datasets([folder])
    _same_samples(result, as_jsonl)
    assert result.format == "arrow" and result.source["record_format"] == "alpaca"
    assert len(result.source["sha256"]) == 64
    ws, _ = import_to_workspace([folder], tmp_path / "ws")
    assert len(ws) == len(rows)
    assert ws.samples(["claude_ge_4_5"])["claude_ge_4_5"].tolist() == \
        [r["claude_ge_4_5"] for r in rows]


def test_a_datasetdict_folder_reads_the_chosen_split(rows, as_jsonl, tmp_path):
    both = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:40]),
                          "test": datasets.Dataset.from_list(rows[40:])}).save_to_disk(str(both))
    train = read_datasets([both])  # train by default
    _same_samples(train, as_jsonl.iloc[:40])
    test = read_datasets([both], split="test")
    assert test.samples["instruction"].tolist() == [r["instruction"] for r in rows[40:]]
    assert test.source["split"] == "test"
    with pytest.raises(InputError, match="no split 'dev'.*train, test") as err:
        read_datasets([both], split="dev")
    assert err.value.field == "split"
    other = tmp_path / "no_train"
    datasets.DatasetDict({"a": datasets.Dataset.from_list(rows[:5]),
                          "b": datasets.Dataset.from_list(rows[5:9])}).save_to_disk(str(other))
    with pytest.raises(InputError, match="splits a, b; choose one with --split"):
        read_datasets([other])


def test_arrow_files_stream_and_file_format(rows, as_jsonl, tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    stream = next(folder.glob("*.arrow"))  # the IPC stream datasets writes
    assert stream.read_bytes()[:4] == b"\xff\xff\xff\xff"
    _same_samples(read_datasets([stream]), as_jsonl)
    table = pa.Table.from_pylist(rows)
    ipc_file = tmp_path / "rows.feather"
    feather.write_feather(table, str(ipc_file), compression="uncompressed")
    assert ipc_file.read_bytes()[:6] == b"ARROW1"
    _same_samples(read_datasets([ipc_file]), as_jsonl)
    unnamed = tmp_path / "rows.bin"  # told by its first bytes, not its name
    unnamed.write_bytes(stream.read_bytes())
    _same_samples(read_datasets([unnamed]), as_jsonl)


def test_chat_datasets_from_real_rows(rows, tmp_path):
    """A messages dataset (the shape of most chat sets on the Hub), built from real rows."""
    chats = [{"messages": [{"role": "user", "content": r["instruction"] +
                            ("\n" + r["input"] if r["input"] else "")},
                           {"role": "assistant", "content": r["output"]}]} for r in rows[:20]]
    folder = tmp_path / "chat"
    datasets.Dataset.from_list(chats).save_to_disk(str(folder))
    result = read_datasets([folder])
    assert result.source["record_format"] == "messages"
    assert result.samples["output"].tolist() == [r["output"] for r in rows[:20]]
    assert json.loads(result.samples["record"][0]) == chats[0]


def test_bad_folders_and_files_are_one_line_errors(rows, tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows[:5]).save_to_disk(str(folder))
    state = json.loads((folder / "state.json").read_text())
    outside = tmp_path / "saved2"
    outside.mkdir()
    (outside / "state.json").write_text(json.dumps(
        {**state, "_data_files": [{"filename": "../saved/" +
                                   state["_data_files"][0]["filename"]}]}))
    with pytest.raises(InputError, match="outside the folder"):
        read_datasets([outside])
    broken = tmp_path / "broken.arrow"
    broken.write_bytes(next(folder.glob("*.arrow")).read_bytes()[:300])
    with pytest.raises(InputError, match="not a readable Arrow file") as err:
        read_datasets([broken])
    assert err.value.file == str(broken) and "\n" not in str(err.value)
    (folder / "state.json").write_text("{not json")
    with pytest.raises(InputError, match="state.json is not JSON"):
        read_datasets([folder])
    with pytest.raises(InputError, match="--split is for"):
        read_datasets([broken], split="train")


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, timeout=300)


def test_cli_import_folder_and_hub_offline(rows, tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows[:10]).save_to_disk(str(folder))
    done = _cli("import", str(folder), "--workspace", str(tmp_path / "ws"))
    assert done.returncode == 0, done.stderr
    assert "imported 10 samples (arrow)" in done.stdout
    offline = _cli("import", "--hf", "tatsu-lab/alpaca", "--split", "train", "--workspace",
                   str(tmp_path / "hub"), env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2
    lines = offline.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "hf:tatsu-lab/alpaca" in \
        lines[0] and "HF_HUB_OFFLINE" in lines[0]
    neither = _cli("import", "--workspace", str(tmp_path / "none"))
    assert neither.returncode == 2 and "--hf NAME" in neither.stderr
    assert not (tmp_path / "hub").exists() and not (tmp_path / "none").exists()


def test_hub_loading_picks_the_split_and_flattens_a_selection(rows, monkeypatch):
    """The Hub call itself is replaced (no network here); everything after it is ours: the
    split chosen from a DatasetDict and a Dataset whose rows are a selection of its table."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    loaded = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows).select([5, 2, 9]),
                                   "test": datasets.Dataset.from_list(rows[:2])})
    calls = []

    def fake_load(name, split=None, revision=None):
        calls.append((name, split, revision))
        return loaded if split is None else loaded[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    table, fingerprint, split = load_hub_table("org/set", revision="abc123")
    assert split == "train" and calls == [("org/set", None, "abc123")]
    assert table.column("instruction").to_pylist() == [rows[i]["instruction"] for i in (5, 2, 9)]
    assert fingerprint == loaded["train"]._fingerprint
    result = read_datasets([], hf="org/set", split="test", revision="abc123")
    assert result.source["path"] == "hf:org/set" and result.source["split"] == "test"
    assert result.source["revision"] == "abc123"
    assert result.samples["instruction"].tolist() == [r["instruction"] for r in rows[:2]]

    def offline_error(*_a, **_k):
        raise ConnectionError("Couldn't reach 'org/set' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline_error)
    with pytest.raises(InputError, match="cannot load from the Hugging Face Hub") as err:
        read_datasets([], hf="org/set")
    assert err.value.file == "hf:org/set" and "\n" not in str(err.value)


def test_export_as_save_to_disk_equals_the_jsonl_export(rows, tmp_path):
    src = tmp_path / "rows.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    ws, _ = import_to_workspace([src], tmp_path / "ws")
    save_selection(ws, "firsts", run_selection(
        ws, make_recipe(policy="threshold", column="claude_ge_4_5", min={"claude_ge_4_5": 1}),
        name="firsts"))
    jsonl = export_selection(ws, "firsts", tmp_path / "out" / "firsts.jsonl")
    out = tmp_path / "out" / "firsts_hf"
    manifest = export_selection(ws, "firsts", out, format="hf", record=True)
    lines = [json.loads(l) for l in (tmp_path / "out" / "firsts.jsonl").read_text().splitlines()]
    back = datasets.load_from_disk(str(out))
    assert back.to_list() == lines and len(lines) == jsonl["rows"] == manifest["rows"] > 0
    assert manifest["output_format"] == "hf-save-to-disk" and manifest["output"] == \
        str(out.resolve())
    assert set(manifest["output_files"]) == {p.name for p in out.iterdir()}
    assert json.loads((tmp_path / "out" / "firsts_hf.manifest.json").read_text()) == manifest
    assert list(ws.path("exports").glob("*firsts_hf.manifest.json"))
    # round trip: the exported folder imports as the same samples
    again = read_datasets([out]).samples
    assert again["instruction"].tolist() == [r["instruction"] for r in lines]

    with pytest.raises(InputError, match="pass --force"):
        export_selection(ws, "firsts", out, format="hf")
    export_all(ws, out, format="hf", force=True)  # replaces a saved dataset folder
    assert len(datasets.load_from_disk(str(out))) == len(rows)
    plain = tmp_path / "out" / "notes"
    plain.mkdir()
    (plain / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a save_to_disk folder"):
        export_all(ws, plain, format="hf", force=True)
    assert (plain / "mine.txt").read_text() == "keep me"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_cli_export_format_hf(rows, tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:12]), encoding="utf-8")
    ws, _ = import_to_workspace([src], tmp_path / "ws")
    out = tmp_path / "exported"
    done = _cli("export", "--workspace", str(ws.root), "--all", "--format", "hf", "--out",
                str(out))
    assert done.returncode == 0, done.stderr
    assert datasets.load_from_disk(str(out))["output"] == [r["output"] for r in rows[:12]]
    bad = _cli("export", "--workspace", str(ws.root), "--all", "--format", "parquet",
               "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_data_page_uploader_takes_an_arrow_file(rows, tmp_path, monkeypatch):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows[:15]).save_to_disk(str(folder))
    payload = next(folder.glob("*.arrow")).read_bytes()
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    monkeypatch.delenv("CHERRYPICK_WORKSPACE", raising=False)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("pages/data.py").run()
    at.file_uploader(key="data_upload").set_value(
        ("alpaca_part.arrow", payload, "application/octet-stream")).run()
    assert not at.exception, at.exception
    assert at.text_input(key="data_ws_alpaca_part").value == "alpaca_part"
    at.button(key="data_import").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    imported = pd.read_parquet(tmp_path / "home" / "alpaca_part" / "samples.parquet")
    assert imported["instruction"].tolist() == [r["instruction"] for r in rows[:15]]
    assert np.array_equal(imported["claude_ge_4_5"], [r["claude_ge_4_5"] for r in rows[:15]])
