"""Issue 13, classes 2, 3 and 4: no stale result survives a changed input, every DS2 score
has one name owned by ``core.names``, and export writes records back as they were read.

The corpus is tests/data/bad/values (README there); workspaces are built in tmp_path from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import atomic
from core.audit import append_decision, current_decisions
from core.cli import main as cli_main
from core.scores.ds2 import run_curate
from core.errors import InputError
from core.export import export_all, export_jsonl
from core.io import import_to_workspace, read_dataset
from core.knn import run_neighbors
from core.names import ds2_rating_column, ds2_score_name, ds2_scores, resolve_rating_column
from core.select import make_recipe, run_selection
from core.workspace import (EMBEDDINGS, KNN, SAMPLES, ChangedInputWarning, Workspace,
                            frame_fingerprint)

CORPUS = Path(__file__).resolve().parent / "data" / "bad" / "values"
NAMES = ["quality score", "a/b", "a b", "q.v", "質", "x\u2028y"]
FAST = dict(steps=40, epochs=3)  # DS2 options: these tests check names, not the estimate
USED = {"ragged.csv", "ragged_first_row.csv", "ragged.tsv", "quoted_separator.csv",
        "int64_with_null.parquet", "nan_inf.jsonl", "nan_inf.parquet",
        "binary_date_decimal.parquet", "rating_names.jsonl", "same_rows_other_ratings.jsonl"}


def strict_json(line: str):
    """``json.loads`` that refuses NaN/Infinity, as every JSON reader but Python's does."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(line, parse_constant=refuse)


def lines_of(path: Path) -> list[str]:
    """JSONL lines split at \\n only (U+2028 inside a key is not a line end)."""
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]


def workspace_with_knn(tmp_path: Path, source: str = "rating_names.jsonl") -> Workspace:
    """The corpus file imported, random unit embeddings with a sidecar, and its kNN graph."""
    ws, _ = import_to_workspace([CORPUS / source], tmp_path / "ws")
    write_embeddings(ws, seed=0)
    run_neighbors(ws, k=5, method="exact")
    return ws


def write_embeddings(ws: Workspace, seed: int, sidecar: bool = True) -> np.ndarray:
    emb = np.random.default_rng(seed).normal(size=(len(ws), 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    atomic.write_npy(ws.path(EMBEDDINGS), emb)
    if sidecar:
        atomic.write_json(ws.path("embeddings.json"), {"step": EMBEDDINGS, "key": "fixed"})
    return emb


def replace_samples(ws: Workspace, source: str) -> None:
    """What the issue reproduces: another dataset of the same row count copied over
    samples.parquet (the manifest left as it was)."""
    other = read_dataset(CORPUS / source).samples
    assert len(other) == len(ws)
    atomic.write_parquet(ws.path(SAMPLES), other)


# ======================================================================================
# class 2: no stale results
# ======================================================================================
def test_replaced_samples_invalidate_every_dependent_step_and_the_export(tmp_path):
    ws = workspace_with_knn(tmp_path)
    before = ws.samples_fingerprint()
    first = run_curate(ws, "quality score", **FAST)
    assert run_curate(ws, "quality score", **FAST).cached
    sel_before = run_selection(ws, make_recipe("ds2", rating_column="quality score", budget=5))

    replace_samples(ws, "same_rows_other_ratings.jsonl")
    with pytest.warns(ChangedInputWarning, match="samples.parquet changed"):
        after = ws.samples_fingerprint()
    assert after != before
    assert after == frame_fingerprint(pd.read_parquet(ws.path(SAMPLES)))
    again = run_curate(ws, "quality score", **FAST)
    assert not again.cached and again.meta["inputs"]["ratings"] == after
    assert again.meta["key"] != first.meta["key"]
    sel_after = run_selection(ws, make_recipe("ds2", rating_column="quality score", budget=5))
    assert sel_after.inputs[SAMPLES] == after != sel_before.inputs[SAMPLES]
    manifest = export_all(ws, tmp_path / "all.jsonl")
    assert manifest["samples_sha256"] == after
    assert ws.manifest["samples_fingerprint"] == after  # recorded: hashed once, not per call


def test_export_manifest_hashes_the_samples_it_read_not_the_manifest(tmp_path):
    ws, _ = import_to_workspace([CORPUS / "rating_names.jsonl"], tmp_path / "ws")
    replace_samples(ws, "same_rows_other_ratings.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChangedInputWarning)
        manifest = export_all(ws, tmp_path / "all.jsonl")
    exported = [json.loads(line) for line in lines_of(tmp_path / "all.jsonl")]
    truth = read_dataset(CORPUS / "same_rows_other_ratings.jsonl").samples
    assert manifest["samples_sha256"] == frame_fingerprint(truth)
    assert [r["a/b"] for r in exported] == truth["a/b"].tolist()


def test_touched_samples_keep_their_fingerprint_and_are_hashed_once(tmp_path, monkeypatch):
    ws, _ = import_to_workspace([CORPUS / "rating_names.jsonl"], tmp_path / "ws")
    fingerprint = ws.samples_fingerprint()
    assert set(ws.manifest["samples_file"]) == {"size", "mtime_ns", "sha256"}
    st = ws.path(SAMPLES).stat()
    os.utime(ws.path(SAMPLES), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChangedInputWarning)  # same bytes: nothing to say
        assert ws.samples_fingerprint() == fingerprint
    assert ws.manifest["samples_file"]["mtime_ns"] == st.st_mtime_ns + 10**9
    import core.workspace as workspace

    def no_hashing(path, chunk=0):
        raise AssertionError(f"{path} hashed again")
    monkeypatch.setattr(workspace, "sha256_file", no_hashing)
    monkeypatch.setattr(workspace, "frame_fingerprint", no_hashing)
    assert ws.samples_fingerprint() == fingerprint  # size + mtime unchanged: no read


def test_a_manifest_without_the_file_record_is_verified_from_the_data(tmp_path):
    ws, _ = import_to_workspace([CORPUS / "rating_names.jsonl"], tmp_path / "ws")
    fingerprint = ws.samples_fingerprint()
    old = {k: v for k, v in ws.manifest.items() if k != "samples_file"}
    atomic.write_json(ws.path("manifest.json"), old)  # as an older Cherrypick wrote it
    assert ws.samples_fingerprint() == fingerprint
    assert "samples_file" in ws.manifest
    atomic.write_json(ws.path("manifest.json"), old)
    replace_samples(ws, "same_rows_other_ratings.jsonl")
    with pytest.warns(ChangedInputWarning):
        assert ws.samples_fingerprint() != fingerprint


def test_hand_replaced_embeddings_and_knn_change_the_keys_of_what_reads_them(tmp_path):
    ws = workspace_with_knn(tmp_path)
    key = ws.fingerprint(EMBEDDINGS)
    assert run_neighbors(ws, k=5, method="exact").cached
    write_embeddings(ws, seed=1, sidecar=False)  # other vectors, the sidecar left alone
    with pytest.warns(ChangedInputWarning, match="embeddings.npy changed"):
        assert ws.fingerprint(EMBEDDINGS) != key
    rebuilt = run_neighbors(ws, k=5, method="exact")
    assert not rebuilt.cached and rebuilt.meta["inputs"]["embeddings"] != key

    curated = run_curate(ws, "a/b", **FAST)
    knn_key = ws.fingerprint(KNN)
    assert curated.meta["inputs"]["knn"] == knn_key
    idx, sims = ws.knn()
    atomic.write_npz(ws.path(KNN), indices=idx[::-1].copy(), similarities=sims[::-1].copy())
    with pytest.warns(ChangedInputWarning, match="knn.npz changed"):
        assert ws.fingerprint(KNN) != knn_key
    assert not run_curate(ws, "a/b", **FAST).cached


# ======================================================================================
# class 3: one name for each score and column
# ======================================================================================
def test_score_names_are_safe_distinct_and_plain_names_unchanged():
    assert ds2_score_name("claude_ge_4_5") == "ds2_claude_ge_4_5"  # the demo's file
    assert ds2_score_name("rating_gpt4o-mini") == "ds2_rating_gpt4o-mini"
    columns = NAMES + ["quality_score", "a_b", "q_v", "_", "x_y", "x y", "A", "a",
                       "ds2_x", "x", "long " * 80, "long " * 81]
    names = [ds2_score_name(c) for c in columns]
    assert len(set(names)) == len(columns)  # injective: a/b and a b no longer share a file
    for name in names:
        assert re.fullmatch(r"ds2_[A-Za-z0-9_~-]+", name) and len(name.encode()) < 200, name


@pytest.mark.parametrize("column", NAMES)
def test_rating_column_round_trips_curate_audit_select_export(tmp_path, column):
    ws = workspace_with_knn(tmp_path)
    run = run_curate(ws, column, **FAST)
    assert run.parquet.name == ds2_score_name(column) + ".parquet"
    assert ds2_rating_column(ws, ds2_score_name(column)) == column  # from the sidecar
    curated = ws.read_score(ds2_score_name(column)).set_index("sample_id")["curated"]
    low = int(curated.index[curated == curated.min()][0])
    append_decision(ws, low, column, "set", old=int(curated[low]), new=9)
    assert current_decisions(ws, column) == {low: 9}  # logged and matched exactly

    sel = run_selection(ws, make_recipe("ds2", rating_column=column, budget=3))
    assert sel.sample_ids[0] == low  # the hand-set 9 outranks every DS2 class
    out = tmp_path / "out.jsonl"
    manifest = export_jsonl(ws, sel.sample_ids, out, write_back_rating=column)
    rows = {r["instruction"]: r for r in map(strict_json, lines_of(out))}
    assert rows[f"Question {low}: what is {low} + {low}?"][f"{column}_curated"] == 9
    assert manifest["write_back_rating"]["column"] == column
    assert manifest["write_back_rating"]["score"] == ds2_score_name(column)
    # a person may type the DS2 score name where the column is asked for
    assert resolve_rating_column(ws, ds2_score_name(column)) == column
    assert run_selection(ws, make_recipe("ds2", rating_column=ds2_score_name(column),
                                         budget=3)).sample_ids == sel.sample_ids


def test_columns_that_slug_alike_keep_their_own_scores(tmp_path):
    ws = workspace_with_knn(tmp_path)
    runs = {c: run_curate(ws, c, **FAST) for c in ("a/b", "a b")}
    assert runs["a/b"].parquet != runs["a b"].parquet
    assert ds2_scores(ws) == {ds2_score_name("a/b"): "a/b", ds2_score_name("a b"): "a b"}
    raw = read_dataset(CORPUS / "rating_names.jsonl").samples
    for column, run in runs.items():
        saved = ws.read_score(ds2_score_name(column))
        assert saved["rating_class"].tolist() == raw[column].tolist()
        assert run.meta["params"]["rating_column"] == column


def test_cli_curate_select_export_with_a_slash_in_the_column(tmp_path, capsys):
    ws = workspace_with_knn(tmp_path)
    root = str(ws.root)
    assert cli_main(["curate", "--workspace", root, "--rating-column", "a/b",
                     "--seed", "0"]) == 0
    assert ws.path("scores", ds2_score_name("a/b") + ".parquet").exists()
    assert cli_main(["select", "--workspace", root, "--name", "slash", "--policy", "ds2",
                     "--rating-column", "a/b", "--budget", "4"]) == 0
    out = tmp_path / "slash.jsonl"
    assert cli_main(["export", "--workspace", root, "--selection", "slash", "--out",
                     str(out), "--write-back-rating", "a/b"]) == 0
    assert all("a/b_curated" in strict_json(line) for line in lines_of(out))
    capsys.readouterr()


def test_curation_never_overwrites_the_file_of_another_column(tmp_path):
    ws = workspace_with_knn(tmp_path)
    run = run_curate(ws, "a/b", **FAST)
    # an older Cherrypick sanitised 'a/b' to ds2_a_b, which is now the plain column a_b's
    shutil.copyfile(run.parquet, ws.path("scores", "ds2_a_b.parquet"))
    shutil.copyfile(run.parquet.with_suffix(".json"), ws.path("scores", "ds2_a_b.json"))
    ratings = tmp_path / "a_b.jsonl"  # the column a_b, kept in a ratings file
    ratings.write_text("".join(json.dumps({"sample_id": i, "a_b": i % 3}) + "\n"
                               for i in range(len(ws))))
    with pytest.raises(InputError, match="holds the DS2 scores of another rating column"):
        run_curate(ws, "a_b", ratings_file=ratings, **FAST)
    assert ws.read_score("ds2_a_b").equals(pd.read_parquet(run.parquet))  # kept
    forced = run_curate(ws, "a_b", ratings_file=ratings, force=True, **FAST)
    assert forced.meta["params"]["rating_column"] == "a_b"


# ======================================================================================
# class 4: values preserved on export
# ======================================================================================
def test_nullable_int64_parquet_exports_exact_integers(tmp_path):
    ws, _ = import_to_workspace([CORPUS / "int64_with_null.parquet"], tmp_path / "ws")
    assert ws.samples()["id"].tolist()[0] == 9007199254740993
    export_all(ws, tmp_path / "all.jsonl")
    text = (tmp_path / "all.jsonl").read_text(encoding="utf-8")
    assert '"id": 9007199254740993' in text and "9007199254740992" not in text
    ids = [strict_json(line)["id"] for line in lines_of(tmp_path / "all.jsonl")]
    assert ids == [9007199254740993, None, -9223372036854775808]
    assert all(isinstance(i, int) for i in ids if i is not None)


@pytest.mark.parametrize("source, counts", [
    ("nan_inf.jsonl", {"meta": 1, "score": 2}),
    ("nan_inf.parquet", {"score": 3}),
])
def test_nan_and_infinity_are_written_as_null_and_counted(tmp_path, capsys, source, counts):
    ws, _ = import_to_workspace([CORPUS / source], tmp_path / "ws")
    out = tmp_path / "all.jsonl"
    manifest = export_all(ws, out)
    rows = [strict_json(line) for line in lines_of(out)]  # valid JSON, every line
    assert manifest["non_finite_as_null"] == counts
    assert rows[0]["score"] == 1.5 if source.endswith("parquet") else rows[0]["score"] is None
    if source.endswith("jsonl"):
        assert rows[0]["meta"] == {"p": [1, None]} and rows[2]["meta"]["p"] == []
        assert rows[2]["meta"]["note"] == "NaN and Infinity as text stay text"
    # adding a score field takes the other path through the writer: the same rule holds
    ws.write_score("s", pd.DataFrame({"sample_id": range(len(rows)),
                                      "s": [np.nan, 1.0, np.inf, 2.0][:len(rows)]}), {})
    again = export_all(ws, tmp_path / "scored.jsonl", with_scores=["s"])
    scored = [strict_json(line) for line in lines_of(tmp_path / "scored.jsonl")]
    assert again["non_finite_as_null"] == counts and scored[0]["s"] is None
    assert scored[1]["s"] == 1.0
    assert cli_main(["export", "--workspace", str(ws.root), "--all", "--out",
                     str(tmp_path / "cli.jsonl")]) == 0
    assert "NaN/Infinity written as null" in capsys.readouterr().out


def test_integer_score_columns_stay_integers_when_rows_are_missing(tmp_path):
    ws, _ = import_to_workspace([CORPUS / "int64_with_null.parquet"], tmp_path / "ws")
    ws.write_score("tokens", pd.DataFrame({"sample_id": [0, 2], "tokens": [57, 9]}), {})
    export_all(ws, tmp_path / "all.jsonl", with_scores=["tokens", "samples.id"])
    text = (tmp_path / "all.jsonl").read_text(encoding="utf-8")
    rows = [strict_json(line) for line in lines_of(tmp_path / "all.jsonl")]
    assert [r["tokens"] for r in rows] == [57, None, 9] and "57.0" not in text
    assert [r["samples.id"] for r in rows] == [9007199254740993, None, -9223372036854775808]


@pytest.mark.parametrize("source, row, cells", [
    ("ragged.csv", 1, 4), ("ragged_first_row.csv", 0, 4), ("ragged.tsv", 2, 4)])
def test_ragged_csv_row_is_an_error_naming_the_row_or_is_skipped(tmp_path, source, row, cells):
    path = CORPUS / source
    with pytest.raises(InputError) as err:
        read_dataset(path)
    assert err.value.file == str(path) and err.value.row == row
    assert f"has {cells} cells for 3 columns" in err.value.message
    result = read_dataset(path, skip_invalid=True)
    assert [s["source_row"] for s in result.skipped] == [row]
    assert "has 4 cells for 3 columns" in result.skipped[0]["reason"]
    assert row not in result.samples["source_row"].tolist()
    for rec in map(json.loads, result.samples["record"]):  # nothing shifted
        assert list(rec) == ["instruction", "output", "score"] and rec["score"].isdigit()
    ws = tmp_path / "ws"
    assert cli_main(["import", str(path), "--workspace", str(ws)]) == 2
    assert not ws.exists()


def test_cli_ragged_csv_prints_one_line_with_file_and_row(tmp_path, capsys):
    # the control: quoted separators and newlines are cells, not extra ones
    result = read_dataset(CORPUS / "quoted_separator.csv")
    assert result.samples["output"].tolist() == ["Apples, pears.", "one,\ntwo"]
    assert result.samples["score"].tolist() == ["5", "4"] and not result.skipped
    assert cli_main(["import", str(CORPUS / "ragged.csv"), "--workspace",
                     str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "ragged.csv, row 1" in err
    assert cli_main(["import", str(CORPUS / "ragged.csv"), "--workspace",
                     str(tmp_path / "ws"), "--skip-invalid"]) == 0
    report = json.loads((tmp_path / "ws" / "import_report.json").read_text())
    assert [s["source_row"] for s in report["skipped"]] == [1]


def test_parquet_binary_date_time_decimal_are_kept_verbatim(tmp_path):
    ws, _ = import_to_workspace([CORPUS / "binary_date_decimal.parquet"], tmp_path / "ws")
    export_all(ws, tmp_path / "all.jsonl")
    first, second = (strict_json(line) for line in lines_of(tmp_path / "all.jsonl"))
    assert first["blob"] == "AP9QSwM="  # base64 of 00 ff 'P' 'K' 03
    assert first["day"] == "2024-01-31"
    assert first["at"] == "2024-01-31T12:30:00.123456+00:00"
    assert first["price"] == "12.340"  # the exact digits, trailing zero included
    assert first["clock"] == "23:59:58" and first["took"] == "P0DT0H1M30S"
    assert all(second[k] is None for k in ("blob", "day", "at", "price", "clock", "took"))


# ======================================================================================
# the corpus
# ======================================================================================
def test_every_corpus_file_is_tested_and_documented():
    present = {p.name for p in CORPUS.iterdir() if p.name != "README.md"}
    assert present == USED
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    source = Path(__file__).read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M)
    assert sorted(documented) == sorted(present)
    for name in present:  # each file is used by a test, not only listed in USED
        assert source.count(f'"{name}"') >= 2, name


def test_line_separators_in_text_are_escaped_in_exported_jsonl(tmp_path):
    """U+2028/U+2029 are valid inside JSON strings, but ``str.splitlines`` (and so many
    JSONL readers) would cut the record there: the export writes them as escapes."""
    src = tmp_path / "sep.jsonl"
    rows = [{"instruction": "a\u2028b", "input": "", "output": "c\u2029d"},
            {"instruction": "plain", "input": "", "output": "text"}]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    ws, _ = import_to_workspace([src], tmp_path / "ws")
    out = tmp_path / "out.jsonl"
    export_all(ws, out)
    text = out.read_text(encoding="utf-8")
    assert "\u2028" not in text and "\u2029" not in text
    assert [json.loads(line) for line in text.splitlines()] == rows
