"""Selection policies, recipes, saved selections, the audit fold and JSONL export.

Expected ids are worked out by hand in the comments, or come from plain reimplementations of
the reference rules (Cherry LLM ``data_by_IFD.py``, Superfiltering ``select_data.py``)
written here independently of ``core.select``.
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
from core.audit import fold_log, ratings_in_force, rejected_in
from core.select import (Budget, Context, DS2Ranking, ExcludeDuplicates, ExcludeRejected,
                         IFDRanking, Recipe, RecostRanking, ReflectionRanking, Threshold,
                         cap_per_cluster, diff_selections, diversity_consistent_sample,
                         dual_sort, load_selection, make_recipe, rerun_selection,
                         run_selection, save_selection, score_table, stratified_quotas,
                         stratified_take)
from core.select.cli import register_cli
from core.workspace import Workspace, sha256_file
from real_rows import first_rows

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ifd_top_k(frame: pd.DataFrame, column: str = "ifd", **options) -> list[int]:
    """The IFD policy as it runs (``make_recipe("ifd")`` applied to ``frame``)."""
    return make_recipe("ifd", column=column, **options).apply(frame).sample_ids


def reflection_order(frame: pd.DataFrame, **options) -> list[int]:
    """The reflection ranking as it runs, without a budget."""
    return Recipe(ranking=ReflectionRanking(**options)).apply(frame).sample_ids


# ======================================================================================
# policies on hand-made frames
# ======================================================================================
def test_ifd_top_k_drops_ge1_or_gt1_and_missing():
    frame = pd.DataFrame({"sample_id": range(8),
                          "ifd": [0.5, 1.0, 0.9, np.nan, 1.2, 0.9, 0.2, np.inf]})
    # ge1 keeps < 1: ids 0 (0.5), 2 (0.9), 5 (0.9), 6 (0.2); best first, the 0.9 tie by id
    assert ifd_top_k(frame, drop="ge1") == [2, 5, 0, 6]
    # gt1 also keeps id 1 (exactly 1.0), which ranks first
    assert ifd_top_k(frame, drop="gt1") == [1, 2, 5, 0, 6]
    # budget 2 of the gt1 ranking
    assert ifd_top_k(frame, drop="gt1", budget=2) == [1, 2]
    # ratio 0.5 of all 8 rows = 4 rows; of the 5 ranked rows = floor(2.5) = 2
    assert ifd_top_k(frame, drop="gt1", ratio=0.5) == [1, 2, 5, 0]
    assert ifd_top_k(frame, drop="gt1", ratio=0.5, ratio_of="ranked") == [1, 2]
    # a ratio giving 0 rows selects nothing (Cherry would select everything: list[-0:])
    assert ifd_top_k(frame, ratio=0.01) == []
    with pytest.raises(InputError):
        ifd_top_k(frame, drop="ge2")


def _realistic_ifd(n: int, seed: int) -> pd.DataFrame:
    """IFDs shaped like real ones: lognormal around 0.8, ~15 % above 1, a few missing, a few
    exactly 1.0, and ties from rounding to 3 decimals."""
    rng = np.random.default_rng(seed)
    ifd = np.round(np.exp(rng.normal(-0.22, 0.22, n)), 3)
    ifd[rng.choice(n, n // 30, replace=False)] = np.nan
    ifd[rng.choice(n, 10, replace=False)] = 1.0
    ppl = np.exp(rng.normal(-0.3, 0.3, n))
    return pd.DataFrame({"sample_id": np.arange(n), "ifd": ifd, "ifd_ppl": ppl})


def cherry_data_by_ifd(rates: list[float], sample_rate: float) -> list[int]:
    """Cherry LLM's data_by_IFD.py rule, rewritten plainly: skip unscored rows and rate > 1,
    sort (rate, index) tuples, take the last int(len × rate), return the indices sorted."""
    pairs = []
    for i, r in enumerate(rates):
        if r != r:  # unscored (the reference `continue`s before computing a rate)
            continue
        if r > 1:
            continue
        pairs.append((r, i))
    pairs = sorted(pairs)
    number = int(len(pairs) * sample_rate)
    chosen = [i for _, i in pairs[-number:]] if number > 0 else []
    return sorted(chosen)


def superfiltering_select(rates: list[float], sample_rate: float) -> list[int]:
    """Superfiltering's select_data.py rule: keep rate < 1, stable sort descending, take the
    first int(len(all) × rate) (their 52002 is the pool size)."""
    kept = [(r, i) for i, r in enumerate(rates) if isinstance(r, float) and r < 1]
    kept = sorted(kept, key=lambda x: x[0], reverse=True)  # stable: ties keep index order
    return [i for _, i in kept[:int(len(rates) * sample_rate)]]


def test_ifd_top_k_equals_cherry_reference_rule():
    frame = _realistic_ifd(3000, seed=1)
    frame["ifd"] = frame["ifd"] + np.arange(3000) * 1e-9  # Cherry breaks ties by larger index
    frame.loc[frame["ifd"].between(0.9999, 1.0001), "ifd"] = 1.0  # keep the exact 1.0 rows
    for rate in (0.05, 0.1, 0.3):
        ours = sorted(ifd_top_k(frame, "ifd", drop="gt1", ratio=rate, ratio_of="ranked"))
        assert ours == cherry_data_by_ifd(frame["ifd"].tolist(), rate)
        assert len(ours) > 0


def test_ifd_top_k_equals_superfiltering_rule_with_ties():
    frame = _realistic_ifd(3000, seed=2)
    assert frame["ifd"].duplicated().sum() > 100  # the rounding made real ties
    for rate in (0.05, 0.2):
        ours = ifd_top_k(frame, "ifd", drop="ge1", ratio=rate)
        assert ours == superfiltering_select(frame["ifd"].tolist(), rate)
        # the recipe gives the same rows in the same order
        recipe = Recipe.from_dict({"ranking": {"type": "ifd", "drop": "ge1"},
                                   "budget": {"ratio": rate}})
        assert recipe.apply(frame).sample_ids == ours


def test_reflection_keeps_both_below_one():
    frame = pd.DataFrame({"sample_id": range(6),
                          "ifd": [0.9, 0.8, 1.1, 0.7, 0.95, np.nan],
                          "rifd": [0.5, 1.0, 0.4, 0.9, 0.6, 0.3]})
    # feasible: 0 (0.9, 0.5), 3 (0.7, 0.9), 4 (0.95, 0.6); 1 has rifd = 1, 2 has ifd > 1,
    # 5 has no ifd. By ifd desc: 4, 0, 3; by rifd asc: 0 (0.5), 4 (0.6), 3 (0.9)
    assert reflection_order(frame) == [4, 0, 3]
    assert reflection_order(frame, rank_by="rifd", descending=False) == [0, 4, 3]
    sel = Recipe(ranking=ReflectionRanking()).apply(frame)
    assert sel.sample_ids == [4, 0, 3]
    assert sel.steps[-2]["dropped"] == {"missing ifd/rifd": 1, "ifd ≥ 1 or rifd ≥ 1": 2}


def test_ds2_dual_sort_and_audit_override():
    frame = pd.DataFrame({"sample_id": range(7),
                          "curated": [5, 3, 5, 4, 3, np.nan, 4],
                          "long_tail": [0.1, 0.9, 0.3, 0.2, 0.5, 0.9, 0.2]})
    # class 5: ids 2 (0.3), 0 (0.1); class 4: 3 and 6 tie at 0.2 -> 3, 6; class 3: 1 (0.9), 4
    assert dual_sort(frame).tolist() == [2, 0, 3, 6, 1, 4]
    # budget 3: whole class 5 fits (2 rows), then the rarest of class 4 (tie -> smaller id)
    assert dual_sort(frame, budget=3).tolist() == [2, 0, 3]

    ds2 = frame.rename(columns={"curated": "ds2_r.curated", "long_tail": "ds2_r.long_tail"})
    audit = [
        {"sample_id": 4, "rating_column": "r", "old": 3, "suggested": 3, "new": 5,
         "action": "set"},          # 4 becomes class 5 (long_tail 0.5: first)
        {"sample_id": 5, "rating_column": "r", "old": None, "suggested": 2, "new": 2,
         "action": "accept"},       # 5 gets a rating by hand: class 2, last
        {"sample_id": 2, "rating_column": "ds2_r", "old": 5, "suggested": 1, "new": 1,
         "action": "accept"},       # another column (names match exactly): ignored here
    ]
    recipe = Recipe(ranking=DS2Ranking("r"), budget=Budget(n=4))
    sel = recipe.apply(ds2, Context(audit=audit))
    # class 5: 4 (0.5), 2 (0.3), 0 (0.1); class 4: 3 -> budget 4 ends there
    assert sel.sample_ids == [4, 2, 0, 3]
    assert sel.steps[-1]["dropped"] == {"beyond budget": 3}   # 6, 1, 5
    assert sel.steps[-2]["dropped"] == {}                      # 5 is rated by hand now


def test_recost_windows_take_the_farthest():
    # pool of 6 ranked by score: ids 10, 11, 12, 13, 14, 15; budget 3 -> windows of w = 2:
    # (10, 11), (12, 13), (14, 15).
    ids = [13, 11, 15, 10, 12, 14]
    scores = [0.6, 0.9, 0.1, 1.0, 0.7, 0.3]
    e = {10: [1, 0], 11: [0.99, 0.141], 12: [0.98, 0.199], 13: [0, 1], 14: [0.6, 0.8],
         15: [-1, 0]}
    emb = np.asarray([e[i] for i in ids], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # window 1: nothing taken -> the best, 10. window 2: 12 is close to 10 (cos 0.98), 13 is
    # orthogonal -> 13. window 3: 14 has cos 0.8 with 13; 15 has cos -1 with 10, 0 with 13 ->
    # 15 (highest similarity 0 < 0.8).
    picks = diversity_consistent_sample(ids, scores, emb, 3).tolist()
    assert picks == [10, 13, 15]
    # budget 2 -> windows of 3: (10, 11, 12) -> 10; (13, 14, 15): 13 cos 0, 14 cos 0.6,
    # 15 cos -1 -> 15
    assert diversity_consistent_sample(ids, scores, emb, 2).tolist() == [10, 15]
    # in a recipe: the embeddings are indexed by sample_id
    full = np.zeros((16, 2), dtype=np.float32)
    full[ids] = emb
    frame = pd.DataFrame({"sample_id": ids, "recost": scores})
    sel = Recipe(ranking=RecostRanking(), budget=Budget(n=3)).apply(frame,
                                                                     Context(embeddings=full))
    assert sel.sample_ids == [10, 13, 15]
    # ratio of the ranked rows: floor(0.5 * 6) = 3 -> the same windows
    sel = Recipe(ranking=RecostRanking(), budget=Budget(ratio=0.5, ratio_of="ranked")).apply(
        frame, Context(embeddings=full))
    assert sel.sample_ids == [10, 13, 15]


@pytest.mark.slow  # many sampling rounds (~3 s)
def test_diversity_sampling_equals_a_plain_window_loop(monkeypatch):
    """The blocked implementation picks exactly what a window-by-window loop picks, for
    windows that are smaller and larger than a block."""
    import core.select.blocks as blocks

    rng = np.random.default_rng(3)
    n = 3000
    emb = rng.normal(size=(n, 24))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = rng.normal(size=n)
    ids = rng.permutation(10 * n)[:n]

    def plain(budget):
        order = sorted(range(n), key=lambda i: (-scores[i], ids[i]))
        width = n / budget
        picks = []
        for k in range(budget):
            lo, hi = int(np.floor(k * width)), (n if k == budget - 1
                                               else int(np.floor((k + 1) * width)))
            window = order[lo:hi]
            if not picks:
                picks.append(window[0])
                continue
            nearest = [max(float(emb[i] @ emb[j]) for j in picks) for i in window]
            picks.append(window[int(np.argmin(nearest))])
        return ids[picks].tolist()

    monkeypatch.setattr(blocks, "BLOCK_ROWS", 256)
    for budget in (7, 150, 1000):
        got = diversity_consistent_sample(ids, scores, emb.astype(np.float32), budget)
        assert got.tolist() == plain(budget), budget


def test_filters_record_why_rows_were_dropped():
    frame = pd.DataFrame({"sample_id": range(8),
                          "samples.duplicate_of": pd.array([None, None, 0, None, None, None,
                                                            None, 3], dtype="Int64"),
                          "ifd": [0.5, 0.9, 0.5, np.nan, 0.3, 0.7, 1.5, 0.8],
                          "len": [10, 200, 10, 50, 5, 80, 90, 50]})
    audit = [{"sample_id": 5, "rating_column": "r", "action": "reject"},
             {"sample_id": 1, "rating_column": "r", "action": "reject"},
             {"sample_id": 1, "rating_column": "r", "action": "undo"}]
    recipe = Recipe.from_dict({
        "filters": ["exclude_duplicates", "exclude_rejected",
                    {"type": "threshold", "column": "len", "min": 10, "max": 100}],
        "ranking": {"type": "ifd"}, "budget": {"n": 10}})
    sel = recipe.apply(frame, Context(audit=audit))
    # duplicates: 2, 7 -> 0,1,3,4,5,6 ; rejected: 5 (1's reject was undone) -> 0,1,3,4,6 ;
    # 10 <= len <= 100: 1 (200) and 4 (5) out -> 0, 3, 6 ; ifd: 3 missing, 6 >= 1 -> 0
    assert sel.sample_ids == [0]
    assert [s["dropped"] for s in sel.steps] == [
        {"duplicate": 2}, {"rejected in audit": 1}, {"len outside range": 2},
        {"missing ifd": 1, "ifd ≥ 1": 1}, {}]
    assert [(s["rows_in"], s["rows_out"]) for s in sel.steps] == [
        (8, 6), (6, 5), (5, 3), (3, 1), (1, 1)]
    why = dict(zip(sel.dropped["sample_id"], sel.dropped["reason"]))
    assert why == {1: "len outside range", 2: "duplicate", 3: "missing ifd",
                   4: "len outside range", 5: "rejected in audit", 6: "ifd ≥ 1",
                   7: "duplicate"}
    # a threshold keeping missing values
    kept = Threshold("ifd", max=1.0, keep_missing=True).apply(frame, Context()).kept
    assert kept["sample_id"].tolist() == [0, 1, 2, 3, 4, 5, 7]


def test_cluster_cap_and_stratified_budget():
    order = [0, 1, 2, 3, 4, 5, 6, 7]
    clusters = ["a", "a", "a", "b", "a", "b", "c", "c"]
    # cap 2: take 0, 1 (a full), skip 2, take 3, skip 4, take 5, 6 -> budget 5 reached
    assert cap_per_cluster(order, clusters, 5, 2).tolist() == [0, 1, 3, 5, 6]
    assert cap_per_cluster(order, clusters, None, 1).tolist() == [0, 3, 6]
    # quotas of 4 over sizes a=6, b=3, c=1: exact 2.4, 1.2, 0.4 -> floors 2, 1, 0, the one
    # left goes to the largest remainder, c (0.4 > 0.4? equal to a's 0.4 -> larger cluster a)
    assert stratified_quotas({"a": 6, "b": 3, "c": 1}, 4) == {"a": 3, "b": 1, "c": 0}
    # quotas a=3, b=1, c=0 over the order: a: 0, 1, 2; b: 3 -> [0, 1, 2, 3]
    assert stratified_take(order, clusters, 4, {"a": 6, "b": 3, "c": 1}).tolist() == \
        [0, 1, 2, 3]
    # sizes a=1, b=1, c=8: quotas of 4: 0.4, 0.4, 3.2 -> 0, 0, 3 + 1 left -> a (tie with b,
    # same size, smaller key); c has only 2 rows in the order (6, 7) -> 1 short, filled by
    # the best row left (1)
    assert stratified_take(order, clusters, 4, {"a": 1, "b": 1, "c": 8}).tolist() == \
        [0, 1, 6, 7]
    frame = pd.DataFrame({"sample_id": order, "map.cluster": clusters,
                          "s": [8, 7, 6, 5, 4, 3, 2, 1]})
    sel = Recipe(ranking=ScoreRankingFor("s"), budget=Budget(n=5, per_cluster_cap=2)).apply(
        frame)
    assert sel.sample_ids == [0, 1, 3, 5, 6]
    assert sel.steps[-1]["dropped"] == {"cluster cap reached": 2, "beyond budget": 1}


def ScoreRankingFor(column):  # noqa: N802 - reads like a class in the recipe above
    from core.select import ScoreRanking

    return ScoreRanking(column)


def test_audit_fold_last_decision_wins_and_undo_pops():
    log = [
        {"sample_id": 1, "rating_column": "r", "new": 3, "action": "accept"},
        {"sample_id": 1, "rating_column": "r", "new": 4, "action": "set"},
        {"sample_id": 1, "rating_column": "r", "action": "undo"},       # back to 3
        {"sample_id": 2, "rating_column": "r", "new": 0, "action": "keep"},
        {"sample_id": 2, "rating_column": "r", "action": "skip"},       # skip sets nothing
        {"sample_id": 3, "rating_column": "r", "new": 5, "action": "set"},
        {"sample_id": 3, "rating_column": "r", "action": "undo"},
        {"sample_id": 3, "rating_column": "r", "action": "undo"},       # nothing left: no-op
        {"sample_id": 4, "rating_column": "other", "new": 1, "action": "set"},
        {"sample_id": 5, "rating_column": "r", "new": 2, "action": "set"},
        {"sample_id": 5, "rating_column": "r", "action": "reject"},     # rejected, rating kept
        {"sample_id": 6, "rating_column": "r", "action": "reject"},
        {"sample_id": 6, "rating_column": "r", "new": 1, "action": "set"},  # later: not rejected
        {"sample_id": 7, "rating_column": "r", "action": "reject"},
        {"sample_id": 7, "rating_column": "r", "action": "skip"},       # still rejected
    ]
    assert ratings_in_force(fold_log(log), "r") == {1: 3, 2: 0, 5: 2, 6: 1}
    assert ratings_in_force(fold_log(log), "other") == {4: 1}
    assert ratings_in_force(fold_log(log), "ds2_other") == {}  # exact names, no prefix alias
    assert rejected_in(fold_log(log)) == {5, 7}


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
