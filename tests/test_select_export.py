"""Selections and exports on real workspaces: the wide score table, saved selections that
rerun to the same ids, DS2 with the audit log, the select/diff/export CLI, recipe errors and
verbatim JSONL export in each input schema.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import atomic
from core.errors import InputError
from core.export import export_all, export_jsonl, manifest_path
from core.select import (ExcludeDuplicates, ExcludeRejected, IFDRanking, Recipe,
                         diff_selections, load_selection, rerun_selection, run_selection,
                         save_selection, score_table)
from core.select.cli import register_cli
from core.workspace import Workspace, sha256_file
from real_rows import first_rows

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ======================================================================================
# workspaces: score_table, saved selections, diff
# ======================================================================================
def _alpaca_records(n: int) -> list[dict]:
    return first_rows(DATA / "alpaca_random_9k.jsonl.gz", n)


def _make_workspace(root: Path, records: list[dict], fmt: str, tmp: Path) -> Workspace:
    from core.io import read_dataset

    src = tmp / f"source-{fmt}.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                   encoding="utf-8")
    result = read_dataset(src)
    assert result.format == fmt
    return Workspace.create(root, result.samples, source=dict(result.source,
                                                              licence_note="CC BY-NC 4.0"))


@pytest.fixture(scope="module")
def scored_ws(tmp_path_factory) -> Workspace:
    """200 real Alpaca rows (2 made duplicates) with synthetic IFD, r-IFD, RECOST and DS2
    score files, a map with 4 clusters and embeddings."""
    tmp = tmp_path_factory.mktemp("scored")
    records = _alpaca_records(198)
    records += [records[3], records[10]]  # exact duplicates: ids 198, 199
    ws = _make_workspace(tmp / "ws", records, "alpaca", tmp)
    n = 200
    rng = np.random.default_rng(7)
    ids = np.arange(n)
    scored = ids[ids % 13 != 5]  # some rows not scored at all
    ifd = pd.DataFrame({"sample_id": scored,
                        "ifd": np.exp(rng.normal(-0.2, 0.25, len(scored))),
                        "ifd_ppl": np.exp(rng.normal(-0.3, 0.3, len(scored))),
                        "answer_tokens": rng.integers(5, 200, len(scored))})
    ws.write_score("ifd", ifd, {"params": {"model": "SmolLM2-135M", "template": "none"},
                                "versions": {"torch": "x"}})
    ws.write_score("rifd", pd.DataFrame({"sample_id": ids, "rifd": rng.uniform(0.5, 1.2, n),
                                         "answer_tokens": rng.integers(5, 99, n)}),
                   {"params": {"model": "SmolLM2-135M"}})
    ws.write_score("recost", pd.DataFrame({"sample_id": ids, "recost": rng.normal(0, 1, n)}),
                   {"params": {"model": "SmolLM2-135M"}})
    raw = np.asarray([r["claude_ge_4_5"] for r in records])
    ds2 = pd.DataFrame({"sample_id": ids, "rating_class": raw, "flagged": rng.random(n) < .2,
                        "curated": np.where(rng.random(n) < .1, 1 - raw, raw),
                        "long_tail": rng.uniform(0, 0.5, n)})
    ws.write_score("ds2_claude_ge_4_5", ds2, {"params": {"embedding_model": "MiniLM"}})
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    atomic.write_npy(ws.path("embeddings.npy"), emb / np.linalg.norm(emb, axis=1,
                                                                      keepdims=True))
    atomic.write_parquet(ws.path("map.parquet"), pd.DataFrame(
        {"sample_id": ids, "x": rng.normal(size=n), "y": rng.normal(size=n),
         "cluster": ids % 4}))
    return ws


def test_score_table_joins_and_names_collisions(scored_ws):
    table = score_table(scored_ws, ["ifd", "rifd", "cluster", "claude_ge_4_5",
                                    "ds2_claude_ge_4_5.curated"])
    assert table["sample_id"].tolist() == list(range(200))
    raw = scored_ws.read_score("ifd").set_index("sample_id")["ifd"]
    # rows not in the ifd file are missing, the others equal the file
    assert table["ifd"].isna().tolist() == [i % 13 == 5 for i in range(200)]
    assert np.array_equal(table.set_index("sample_id")["ifd"].dropna(), raw)
    assert table["cluster"].tolist() == [i % 4 for i in range(200)]
    assert sorted(table.attrs["files"]) == ["map.parquet", "samples.parquet",
                                            "scores/ds2_claude_ge_4_5.parquet",
                                            "scores/ifd.parquet", "scores/rifd.parquet"]
    with pytest.raises(InputError, match="ifd.answer_tokens, rifd.answer_tokens"):
        score_table(scored_ws, ["answer_tokens"])
    assert score_table(scored_ws, ["rifd.answer_tokens"])["rifd.answer_tokens"].notna().all()
    with pytest.raises(InputError, match="no score column 'nope'"):
        score_table(scored_ws, ["nope"])


def test_saved_selection_reruns_to_identical_ids(scored_ws, tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        "filters:\n  - exclude_duplicates\n  - {type: threshold, column: ifd_ppl, max: 2}\n"
        "ranking: {type: recost}\nbudget: {ratio: 0.2, ratio_of: candidates}\n")
    sel = run_selection(scored_ws, recipe_file, name="recost20")
    path = save_selection(scored_ws, "recost20", sel)
    saved = load_selection(scored_ws, "recost20")
    again = rerun_selection(scored_ws, "recost20")
    assert json.dumps(again.sample_ids).encode() == json.dumps(saved["sample_ids"]).encode()
    assert len(saved["sample_ids"]) == int(0.2 * saved["counts"]["candidates"])
    # the inputs recorded are the files' real sha256
    for rel, digest in saved["inputs"].items():
        if rel != "samples.parquet" and digest is not None:
            assert digest == sha256_file(scored_ws.path(rel)), rel
    assert "embeddings.npy" in saved["inputs"] and "scores/recost.parquet" in saved["inputs"]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_ds2_selection_uses_audit_log_and_diff_counts(scored_ws):
    ws = scored_ws
    base = run_selection(ws, {"ranking": {"type": "ds2", "rating_column": "claude_ge_4_5"},
                              "budget": {"n": 30}})
    save_selection(ws, "ds2_a", base)
    ds2 = ws.read_score("ds2_claude_ge_4_5").set_index("sample_id")
    # a direct reference: curated desc, long_tail desc, sample_id asc
    expect = ds2.reset_index().sort_values(["curated", "long_tail", "sample_id"],
                                           ascending=[False, False, True])
    assert base.sample_ids == expect["sample_id"].head(30).tolist()
    # reject the first two chosen, promote a class-0 row by hand
    low = int(ds2.index[ds2["curated"] == 0][0])
    first, second = base.sample_ids[:2]
    lines = [{"time": "t", "sample_id": first, "rating_column": "claude_ge_4_5",
              "action": "reject"},
             {"time": "t", "sample_id": second, "rating_column": "claude_ge_4_5",
              "action": "reject"},
             {"time": "t", "sample_id": low, "rating_column": "claude_ge_4_5", "old": 0,
              "suggested": 0, "new": 1, "action": "set"}]
    ws.path("audit.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    try:
        b = run_selection(ws, {"filters": ["exclude_rejected"],
                               "ranking": {"type": "ds2", "rating_column": "claude_ge_4_5"},
                               "budget": {"n": 30}})
        save_selection(ws, "ds2_b", b)
        assert first not in b.sample_ids and second not in b.sample_ids
        assert low in b.sample_ids
        diff = diff_selections(ws, "ds2_a", "ds2_b")
    finally:
        ws.path("audit.jsonl").unlink()
    a_ids, b_ids = set(base.sample_ids), set(b.sample_ids)
    assert diff["added"] == sorted(b_ids - a_ids) and diff["removed"] == sorted(a_ids - b_ids)
    assert len(diff["added"]) == len(diff["removed"]) >= 2
    for cluster, n in diff["per_cluster"].items():
        assert n["a"] == sum(1 for i in a_ids if str(i % 4) == cluster)
        assert n["added"] == sum(1 for i in b_ids - a_ids if str(i % 4) == cluster)
    # per class: the hand-set row counts in class 1 (the audit decision applies)
    assert sum(n["b"] for n in diff["per_rating_class"].values()) == 30


def test_cli_select_diff_and_export(scored_ws, tmp_path, capsys):
    from core.export import register_cli as register_export

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    register_cli(sub)
    register_export(sub)
    ws = str(scored_ws.root)
    args = parser.parse_args(["select", "--workspace", ws, "--name", "cli_ifd", "--policy",
                              "ifd", "--ratio", "0.1", "--exclude-duplicates",
                              "--min", "ifd=0.5", "--per-cluster-cap", "6"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "exclude_duplicates" in out and "2 duplicate" in out and "selected 20 of 200" in out
    saved = load_selection(scored_ws, "cli_ifd")
    table = score_table(scored_ws, ["ifd", "cluster", "duplicate_of"])
    assert all(table.loc[i, "ifd"] < 1 and table.loc[i, "ifd"] >= 0.5
               for i in saved["sample_ids"])
    assert pd.Series([i % 4 for i in saved["sample_ids"]]).value_counts().max() <= 6
    args = parser.parse_args(["select", "--workspace", ws, "--name", "cli_ref", "--policy",
                              "reflection", "--budget", "15"])
    assert args.func(args) == 0
    assert "selected 15 of 200" in capsys.readouterr().out
    args = parser.parse_args(["diff", "--workspace", ws, "cli_ifd", "cli_ref", "--json"])
    assert args.func(args) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["count_a"] == 20 and diff["count_b"] == 15
    out_file = tmp_path / "subset.jsonl"
    args = parser.parse_args(["export", "--workspace", ws, "--selection", "cli_ifd", "--out",
                              str(out_file), "--with-scores", "ifd,rifd",
                              "--write-back-rating", "ds2_claude_ge_4_5"])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 20 and all({"ifd", "rifd", "claude_ge_4_5_curated"} <= set(r)
                                   for r in rows)
    with pytest.raises(InputError, match="--policy or --recipe"):
        args = parser.parse_args(["select", "--workspace", ws, "--name", "x"])
        args.func(args)


def test_recipe_errors_name_the_problem():
    with pytest.raises(InputError, match="unknown ranking type 'ifdd'"):
        Recipe.from_dict({"ranking": {"type": "ifdd"}})
    with pytest.raises(InputError, match="unknown parameter"):
        Recipe.from_dict({"ranking": {"type": "ifd", "colum": "ifd"}})
    with pytest.raises(InputError, match="not both"):
        Recipe.from_dict({"budget": {"n": 3, "ratio": 0.1}})
    with pytest.raises(InputError, match="cap or a stratified"):
        Recipe.from_dict({"budget": {"n": 3, "per_cluster_cap": 2, "stratified": True}})
    r = Recipe.from_dict({"filters": ["exclude_duplicates", "exclude_rejected"],
                          "ranking": {"type": "ifd", "column": "ifd_ppl", "drop": "gt1"},
                          "budget": {"n": 5}})
    assert Recipe.from_dict(r.to_dict()).to_dict() == r.to_dict()
    assert isinstance(r.filters[0], ExcludeDuplicates) and isinstance(r.filters[1],
                                                                      ExcludeRejected)
    assert isinstance(r.ranking, IFDRanking) and r.ranking.column == "ifd_ppl"


# ======================================================================================
# export
# ======================================================================================
SHAREGPT = [
    {"id": "a1", "conversations": [{"from": "human", "value": "Hi ünïcode ✓"},
                                   {"from": "gpt", "value": "Hello!"}]},
    {"id": "a2", "conversations": [{"from": "system", "value": "Be brief."},
                                   {"from": "human", "value": "2+2?"},
                                   {"from": "gpt", "value": "4"},
                                   {"from": "human", "value": "and 3+3?"},
                                   {"from": "gpt", "value": "6"}], "lang": "en"},
    {"id": "a3", "conversations": [{"from": "human", "value": "Name a colour"},
                                   {"from": "gpt", "value": "Blue\nor red"}]},
    {"id": "a4", "conversations": [{"from": "human", "value": "x"},
                                   {"from": "gpt", "value": "y"}], "score": 1.5},
]
MESSAGES = [
    {"messages": [{"role": "user", "content": "Write a haiku"},
                  {"role": "assistant", "content": "Old pond\nfrog jumps in\nsplash"}]},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}], "meta": {"src": "t", "n": 2}},
    {"messages": [{"role": "user", "content": "日本語で"},
                  {"role": "assistant", "content": "はい"}]},
]


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages"])
def test_export_round_trip_is_verbatim(fmt, tmp_path):
    records = {"alpaca": lambda: _alpaca_records(40), "sharegpt": lambda: SHAREGPT,
               "messages": lambda: MESSAGES}[fmt]()
    ws = _make_workspace(tmp_path / "ws", records, fmt, tmp_path)
    before = sha(ws.path("samples.parquet"))
    chosen = [2, 0] if fmt != "alpaca" else [31, 5, 17, 0, 5]
    out = tmp_path / "out" / "subset.jsonl"
    manifest = export_jsonl(ws, chosen, out)
    lines = out.read_text(encoding="utf-8").splitlines()
    expect = sorted(set(chosen))
    assert [json.loads(line) for line in lines] == [records[i] for i in expect]
    # key order and text are as in the source: each line is the source line, UTF-8, "\n"
    assert out.read_bytes() == "".join(json.dumps(records[i], ensure_ascii=False) + "\n"
                                       for i in expect).encode("utf-8")
    assert manifest["output_sha256"] == sha(out)
    on_disk = json.loads(manifest_path(out).read_text())
    assert on_disk["output_sha256"] == sha(out) and on_disk["rows"] == len(expect)
    assert on_disk["format"] == fmt and on_disk["licence_note"] == "CC BY-NC 4.0"
    assert on_disk["source"]["sha256"] == ws.manifest["source"]["sha256"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["subset.jsonl",
                                                           "subset.manifest.json"]
    assert sha(ws.path("samples.parquet")) == before
    # with a score added: the record's fields first, unchanged, then the score field
    n_chars = {i: float(len(json.dumps(r))) for i, r in enumerate(records)}
    ws.write_score("size", pd.DataFrame({"sample_id": list(n_chars),
                                         "n_chars": list(n_chars.values())}), {})
    export_jsonl(ws, chosen, out, with_scores=["n_chars"], force=True)
    assert out.read_bytes() == "".join(
        json.dumps({**records[i], "n_chars": n_chars[i]}, ensure_ascii=False) + "\n"
        for i in expect).encode("utf-8")
    # everything: the file re-imports to the same records
    manifest = export_all(ws, tmp_path / "all.jsonl")
    assert [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()] == \
        records
    assert manifest["rows"] == len(records)


def test_export_of_csv_rows_gives_objects_of_their_columns(tmp_path):
    from core.io import read_dataset

    src = tmp_path / "rows.csv"
    src.write_text('instruction,input,output,topic\nSay hi,,"Hi, there",greet\n'
                   'Add,"1,2",3,math\nÉcris,,Oui,fr\n', encoding="utf-8")
    result = read_dataset(src)
    ws = Workspace.create(tmp_path / "ws", result.samples, source=result.source)
    export_jsonl(ws, [2, 0], tmp_path / "out.jsonl")
    with open(src, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))  # every value is text, as the importer reads it
    got = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert got == [rows[0], rows[2]]
    assert json.loads(manifest_path(tmp_path / "out.jsonl").read_text())["format"] == "csv"


def test_export_adds_scores_and_curated_rating(scored_ws, tmp_path):
    ws = scored_ws
    before = sha(ws.path("samples.parquet"))
    ids = [0, 5, 7, 150]   # 5 has no ifd (5 % 13 == 5)
    ws.path("audit.jsonl").write_text(json.dumps(
        {"time": "t", "sample_id": 7, "rating_column": "claude_ge_4_5", "old": 0,
         "suggested": 1, "new": 1, "action": "accept"}) + "\n")
    try:
        m = export_jsonl(ws, ids, tmp_path / "s.jsonl", with_scores=["ifd", "ifd_ppl"],
                         write_back_rating="claude_ge_4_5", record=True)
    finally:
        ws.path("audit.jsonl").unlink()
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    ifd = ws.read_score("ifd").set_index("sample_id")
    ds2 = ws.read_score("ds2_claude_ge_4_5").set_index("sample_id")
    records = ws.samples(["sample_id", "record"]).set_index("sample_id")["record"]
    for sid, row in zip(ids, rows):
        rating = 1 if sid == 7 else int(ds2.loc[sid, "curated"])
        assert row.pop("claude_ge_4_5_curated") == rating
        if sid == 5:
            assert row.pop("ifd") is None and row.pop("ifd_ppl") is None
        else:
            assert row.pop("ifd") == ifd.loc[sid, "ifd"]
            assert row.pop("ifd_ppl") == ifd.loc[sid, "ifd_ppl"]
        assert row == json.loads(records[sid])
    vals = ifd.loc[[0, 7, 150], "ifd"]
    assert m["score_summaries"]["ifd"] == {"min": vals.min(), "median": float(vals.median()),
                                           "max": vals.max(), "missing": 1}
    assert m["scores"]["ifd"]["model"] == "SmolLM2-135M"
    assert m["scores"]["ifd"]["sha256"] == sha256_file(ws.path("scores", "ifd.parquet"))
    recorded = list(ws.path("exports").glob("*.json"))
    assert len(recorded) == 1 and json.loads(recorded[0].read_text())["output_sha256"] == \
        m["output_sha256"]
    recorded[0].unlink()
    assert sha(ws.path("samples.parquet")) == before
    with pytest.raises(InputError, match="not in the workspace"):
        export_jsonl(ws, [0, 10_000], tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()


def test_failed_export_leaves_no_file_and_no_temp(scored_ws, tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text("previous\n")
    # a score field that collides with a record field fails midway through the write
    with pytest.raises(InputError, match="already has a field 'claude_ge_4_5'"):
        export_jsonl(scored_ws, [0, 1], out, with_scores=["claude_ge_4_5"], force=True)
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]
