"""Selection blocks and policies, on plain frames: IFD top-k against the Cherry and
Superfiltering rules, reflection, DS2 dual sort, RECOST windows, filters, cluster budgets and
the audit fold. Expected ids are worked out by hand in the comments, or come from plain
reimplementations of the reference rules written here independently of ``core.select``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from core.audit import fold_log, ratings_in_force, rejected_in
from core.select import (Budget, Context, DS2Ranking, Recipe, RecostRanking,
                         ReflectionRanking, Threshold, cap_per_cluster,
                         diversity_consistent_sample, dual_sort, make_recipe,
                         stratified_quotas, stratified_take)


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
