"""The bad-input corpus (tests/data/bad, described in its README): every file ends in a clear
``InputError`` naming file, row and field, an explicit skip report with ``skip_invalid``, or
(for harmless quirks such as a BOM or CRLF) a correct import; never in a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import atomic
from core.errors import InputError
from core.io import import_to_workspace, read_dataset, read_datasets
from core.scores.ds2 import run_curate
from core.scores.ratings import to_classes
from core.workspace import KNN, Workspace

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).resolve().parent / "data" / "bad"

# file -> (row, field, message pattern) of the strict error; None where not row-level
REJECTED = {
    "malformed_line3.jsonl": (2, None, r"line 3 is not valid JSON \(Expecting ',' delimiter"),
    "wrong_type_output.jsonl": (1, "output", r"must be text, found int"),
    "missing_output.jsonl": (2, "output", r"missing field \(record keys: instruction, input\)"),
    "null_bytes.jsonl": (1, None, r"line 2 is not valid JSON \(Invalid control character at "
                                  r"column 21\)"),
    "latin1.jsonl": (None, None, r"not valid utf-8 at line 2 .*--encoding"),
    "csv_named.jsonl": (None, None, r"does not look like JSON .*--format csv"),
    "jsonl_named.csv": (None, None, r"the name says CSV but the file holds JSON .*--format"),
    "text_named.parquet": (None, None, r"not a readable Parquet file"),
    "not_gzip.jsonl.gz": (None, None, r"gzip data is damaged"),
    "gzip_of_garbage.jsonl.gz": (None, None, r"not valid utf-8 at line 1"),
    "truncated.jsonl.gz": (None, None, r"gzip data is damaged \(Compressed file ended"),
    "zip_named.jsonl": (None, None, r"is a ZIP archive; unzip it"),
    "truncated_array.json": (2, None, r"cut off in the middle of record 2 .*holds 2 complete "
                                      r"records.*--skip-invalid"),
    "sharegpt_missing_turns.json": (1, "conversations", r"no assistant turn"),
    "messages_wrong_roles.jsonl": (1, "messages[1].role", r"unknown role 'narrator'"),
    "csv_missing_column.csv": (0, "output", r"missing field \(record keys: instruction, "
                                            r"answer\)"),
    "parquet_wrong_types.parquet": (0, "output", r"must be text, found int"),
    "empty.jsonl": (None, None, r"file is empty"),
    "header_only.csv": (None, None, r"file has no rows"),
    "deeply_nested.jsonl": (1, None, r"line 2 is nested too deeply"),
    "lone_surrogate.jsonl": (1, "output", r"holds \\ud800, half of a UTF-16 surrogate pair"),
    "utf16.jsonl": (None, None, r"UTF-16 encoded; re-save it as UTF-8"),
    "not_records.json": (0, None, r"cannot tell the format of this record"),
}

# file -> ({skipped source_row: field}, imported rows) with skip_invalid=True
SKIPPED = {
    "malformed_line3.jsonl": ({2: None}, 4),
    "wrong_type_output.jsonl": ({1: "output"}, 2),
    "missing_output.jsonl": ({2: "output"}, 3),
    "null_bytes.jsonl": ({1: None}, 2),
    "truncated_array.json": ({2: None}, 2),
    "sharegpt_missing_turns.json": ({1: "conversations", 2: "conversations",
                                     3: "conversations"}, 2),
    "messages_wrong_roles.jsonl": ({1: "messages[1].role"}, 2),
    "deeply_nested.jsonl": ({1: None}, 2),
    "lone_surrogate.jsonl": ({1: "output"}, 1),
}


def _check_error(err: InputError, name: str, row, field, pattern: str) -> None:
    text = str(err)
    assert err.file is not None and Path(err.file).name == name, text
    assert text.startswith(err.file), text
    assert (err.row, err.field) == (row, field), text
    if row is not None:
        assert f"row {row}" in text
    if field is not None:
        assert f"field '{field}'" in text
    assert re.search(pattern, text), text
    assert "\n" not in text


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_with_file_row_and_field(name):
    row, field, pattern = REJECTED[name]
    with pytest.raises(InputError) as err:
        read_dataset(BAD / name)
    _check_error(err.value, name, row, field, pattern)


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_skip_invalid_reports_each_skipped_row(name):
    expected, imported = SKIPPED[name]
    res = read_dataset(BAD / name, skip_invalid=True)
    assert {s["source_row"]: s["field"] for s in res.skipped} == expected
    assert all(s["reason"] for s in res.skipped)
    assert len(res.samples) == imported
    assert not set(res.samples["source_row"]) & set(expected)
    assert res.source["skipped"] == len(expected)


def test_skip_invalid_with_nothing_valid_still_names_the_first_row():
    with pytest.raises(InputError) as err:
        read_dataset(BAD / "parquet_wrong_types.parquet", skip_invalid=True)
    _check_error(err.value, "parquet_wrong_types.parquet", 0, "output",
                 r"no valid rows: all 2 rows were invalid, the first because must be text")


# ----- harmless quirks import correctly ---------------------------------------------------------
def test_bom_and_crlf_import_as_clean_text():
    bom = read_dataset(BAD / "bom.jsonl").samples
    crlf = read_dataset(BAD / "crlf.jsonl").samples
    assert len(bom) == 3 and bom["instruction"][0] == "Name a prime number larger than 0."
    for frame in (bom, crlf):
        text = "".join(frame["instruction"]) + "".join(frame["output"]) + "".join(frame["record"])
        assert "\ufeff" not in text and "\r" not in text
    assert crlf["record"].tolist() == bom["record"].tolist()
    table = read_dataset(BAD / "crlf.csv").samples
    assert table["instruction"].tolist() == ["Say hi", "Write two lines"]
    assert table["output"].tolist()[0] == "hi"
    assert table["output"].tolist()[1].splitlines() == ["line one", "line two"]


def test_latin1_imports_with_its_encoding():
    res = read_dataset(BAD / "latin1.jsonl", encoding="latin-1")
    assert res.samples["output"].tolist()[1] == "café"


def test_empty_strings_are_imported_with_a_warning_per_row():
    res = read_dataset(BAD / "empty_strings.jsonl")
    assert len(res.samples) == 4
    assert [(w["source_row"], w["field"]) for w in res.warnings] == [(1, "output"),
                                                                    (2, "instruction")]


def test_escaped_null_bytes_are_text_and_survive_the_workspace(tmp_path):
    ws, _ = import_to_workspace(BAD / "null_escape.jsonl", tmp_path / "ws")
    assert ws.samples()["output"].tolist()[1] == "a\x00b"


def test_integers_beyond_int64_are_kept_as_digits(tmp_path):
    ws, _ = import_to_workspace(BAD / "huge_integer.jsonl", tmp_path / "ws")
    assert ws.samples()["id"].tolist() == [str(10 ** 30), "7"]


def test_csv_missing_column_imports_with_a_mapping():
    res = read_dataset(BAD / "csv_missing_column.csv", mapping={"output": "answer"})
    assert res.samples["output"].tolist() == ["hi", "bye"]


# ----- generated at run time: too big to commit -------------------------------------------------
def test_five_megabyte_record_is_rejected_or_skipped(tmp_path):
    ok = {"instruction": "Say hi", "input": "", "output": "hi"}
    big = {"instruction": "Summarise", "input": "", "output": "word " * 1_000_000}
    path = tmp_path / "big.json"
    path.write_text(json.dumps([ok, big, ok]), encoding="utf-8")
    assert path.stat().st_size > 5_000_000
    with pytest.raises(InputError) as err:
        read_dataset(path)
    _check_error(err.value, "big.json", 1, "output", r"is 5,000,000 characters long .*"
                                                      r"--max-chars 0")
    res = read_dataset(path, skip_invalid=True)
    assert res.samples["source_row"].tolist() == [0, 2]
    assert [(s["source_row"], s["field"]) for s in res.skipped] == [(1, "output")]


def test_ten_thousand_duplicate_rows_are_flagged_not_dropped(tmp_path):
    line = json.dumps({"instruction": "Say hi", "input": "", "output": "hi"}) + "\n"
    path = tmp_path / "dups.jsonl"
    path.write_text(line * 10_000, encoding="utf-8")
    ws, res = import_to_workspace(path, tmp_path / "ws")
    dup = ws.samples(["duplicate_of"])["duplicate_of"]
    assert len(dup) == 10_000 and pd.isna(dup.iloc[0])
    assert (dup.iloc[1:] == 0).all()
    assert ws.manifest["counts"] == {"samples": 10_000, "duplicates": 9_999}


# ----- ratings for DS2 curation --------------------------------------------------------------
def _rated_workspace(tmp_path: Path, name: str) -> Workspace:
    """A workspace of the rating file with a small ring kNN graph (DS2 needs one)."""
    ws, res = import_to_workspace(BAD / name, tmp_path / name.split(".")[0])
    n = len(res.samples)
    idx = np.stack([(np.arange(n) + s) % n for s in (1, 2)], axis=1)
    atomic.write_npz(ws.path(KNN), indices=idx, similarities=np.full(idx.shape, 0.9))
    return ws


@pytest.mark.parametrize("name, scale, row, pattern", [
    ("ratings_strings_nan.jsonl", None, 4, r"rating 'good' is not a number; pass a scale"),
    ("ratings_out_of_scale.jsonl", "0-5", 4, r"rating 7\.0 is outside the 0-5 scale"),
    ("ratings_infinity.jsonl", None, 3, r"rating inf is not a number"),
    ("ratings_not_classes.jsonl", None, 3, r"rating 1000000000 is not a class label \(at "
                                           r"most 99\)"),
])
def test_curate_names_the_bad_rating(tmp_path, name, scale, row, pattern):
    ws = _rated_workspace(tmp_path, name)
    with pytest.raises(InputError) as err:
        run_curate(ws, rating_column="rating", scale=scale)
    assert (err.value.row, err.value.field) == (row, "rating")
    assert re.search(pattern, str(err.value)), str(err.value)
    assert not ws.path("scores", "ds2_rating.parquet").exists()


def test_missing_and_nan_ratings_are_missing_not_errors(tmp_path):
    """null and NaN mean "not rated" (class -1); only the word needs a mapping."""
    ws = _rated_workspace(tmp_path, "ratings_strings_nan.jsonl")
    classes, record = to_classes(ws.samples()["rating"], {"0": 0, "1": 1, "good": 1})
    assert classes.tolist() == [1, 0, -1, -1, 1, 0] and record["missing"] == 2


# ----- workspaces ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, pattern", [
    ("workspace_future", r"made by a newer Cherrypick \(workspace format 99; this version "
                         r"reads up to 1\)"),
    ("workspace_damaged_manifest", r"manifest.json is damaged"),
])
def test_unreadable_workspaces_are_refused(name, pattern):
    with pytest.raises(InputError, match=pattern) as err:
        Workspace.open(BAD / name)
    assert err.value.file == str(BAD / name / "manifest.json")


def test_every_corpus_file_is_tested_and_documented():
    tested = set(REJECTED) | set(SKIPPED) | {
        "bom.jsonl", "crlf.jsonl", "crlf.csv", "empty_strings.jsonl", "null_escape.jsonl",
        "huge_integer.jsonl", "ratings_strings_nan.jsonl", "ratings_out_of_scale.jsonl",
        "ratings_infinity.jsonl", "ratings_not_classes.jsonl", "workspace_future",
        "workspace_damaged_manifest",
        # sub-corpora, each with its own README and test file (issue 13's classes)
        "paths", "values", "inputs"}
    present = {p.name for p in BAD.iterdir() if p.name != "README.md"}
    assert present == tested
    readme = (BAD / "README.md").read_text(encoding="utf-8")
    assert [n for n in sorted(present) if f"`{n}" not in readme] == []
    assert len(present) >= 20


def test_a_folder_of_bad_files_stops_on_the_first_and_names_it():
    with pytest.raises(InputError) as err:
        read_datasets([BAD])
    assert Path(err.value.file).parent == BAD


# ----- the CLI: one line on stderr, exit 2, no traceback ---------------------------------------
CLI_CASES = [
    (["import", "malformed_line3.jsonl"], r"malformed_line3.jsonl, row 2: line 3 is not valid"),
    (["import", "latin1.jsonl"], r"latin1.jsonl: not valid utf-8 at line 2"),
    (["import", "truncated.jsonl.gz"], r"truncated.jsonl.gz: gzip data is damaged"),
    (["import", "deeply_nested.jsonl"], r"deeply_nested.jsonl, row 1: line 2 is nested"),
    (["import", "lone_surrogate.jsonl"], r"lone_surrogate.jsonl, row 1, field 'output': holds"),
    (["import", "jsonl_named.csv"], r"jsonl_named.csv: the name says CSV"),
    (["import", "parquet_wrong_types.parquet", "--skip-invalid"],
     r"parquet_wrong_types.parquet, row 0, field 'output': no valid rows"),
    (["info"], r"workspace_future/manifest.json, field 'format_version': made by a newer"),
]


@pytest.mark.slow
def test_cli_prints_one_line_and_exits_2(tmp_path):
    procs = []
    for k, (args, _) in enumerate(CLI_CASES):
        if args[0] == "import":
            cmd = ["import", str(BAD / args[1]), *args[2:], "--workspace", str(tmp_path / f"w{k}")]
        else:
            cmd = ["info", "--workspace", str(BAD / "workspace_future")]
        procs.append(subprocess.Popen([sys.executable, "-m", "core", *cmd], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for (args, pattern), proc in zip(CLI_CASES, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, err)
        assert "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert re.search(pattern, lines[0]), lines[0]
    assert not any((tmp_path / f"w{k}" / "manifest.json").exists() for k in range(len(procs)))
