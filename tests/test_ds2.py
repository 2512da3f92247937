"""DS2 score curation: scales, HOC consensus and fit, SimiFeat detection, selection, wiring.

Every number is checked against an independent plain reference written here (loops over
the reference's counting rule, finite differences, sklearn's kappa and AUROC, brute-force
distances) or against a synthetic truth (a known transition matrix).
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.errors import InputError
from core.scores import ds2
from core.scores.hoc import (TransitionEstimator, consensus_counts, consensus_loss,
                             fit_transition, hoc_subsamples)
from core.scores.ratings import to_classes
from core.scores.simifeat import detect_misratings, long_tail_score, neighbour_evidence
from ds2_truth import TRUE_T, plain_simifeat

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PRIOR = np.array([0.10, 0.20, 0.25, 0.20, 0.15, 0.10])


def synthetic(n: int, seed: int = 0, clusters: int = 500, spread: float = 0.9, dim: int = 32,
              T: np.ndarray = TRUE_T, prior: np.ndarray = PRIOR):
    """Topic-clustered embeddings; the true class follows the cluster; ratings drawn via T."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster_class = rng.choice(len(prior), clusters, p=prior)
    member = rng.integers(0, clusters, n)
    x = centres[member] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    true = cluster_class[member]
    rated = (rng.random(n)[:, None] > np.cumsum(T, axis=1)[true]).sum(axis=1)
    return x, true, np.minimum(rated, len(prior) - 1)


def knn_graph(x: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN with faiss, self excluded (drop whichever column holds self)."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    k_all = min(k + 1, len(x))
    sims, idx = index.search(x, k_all)
    keep = idx != np.arange(len(x))[:, None]
    # exactly one self hit per row expected; if self was not returned, drop the last column
    keep[keep.all(axis=1), -1] = False
    return idx[keep].reshape(len(x), k_all - 1), sims[keep].reshape(len(x), k_all - 1)


@pytest.fixture(scope="module")
def synthetic_20k():
    x, true, rated = synthetic(20_000)
    idx, sims = knn_graph(x, 20)
    frame, rep = ds2.curate(rated, idx, sims, k=10, seed=0)
    return dict(x=x, true=true, rated=rated, idx=idx, sims=sims, frame=frame, report=rep)


# ----------------------------------------------------------------------------------------
# rating scales
# ----------------------------------------------------------------------------------------
def test_ds2_10_scale_follows_the_paper_table():
    raw = [1, 4, 5, 6, 7, 8, 9, 10, "8", "n/a", None, float("nan")]
    table = {1: 0, 4: 0, 5: 1, 6: 2, 7: 3, 8: 4, 9: 5, 10: 5, "8": 4, "n/a": 0}
    expected = [table.get(v, -1) if not (v is None or v != v) else -1 for v in raw]
    classes, mapping = to_classes(pd.Series(raw, dtype=object), "ds2-10")
    assert classes.tolist() == expected
    assert mapping["num_classes"] == 6 and mapping["unparseable"] == 1
    assert mapping["missing"] == 2


def test_other_scales_and_explicit_mapping():
    c, m = to_classes([0, 1, 1, 0, np.nan], None)          # the demo's binary 0/1
    assert c.tolist() == [0, 1, 1, 0, -1] and m["scale"] == "classes" and m["num_classes"] == 2
    c, m = to_classes([0, 2.4, 4.4, 4.5, 5], "0-5")
    assert c.tolist() == [0, 2, 4, 5, 5] and m["num_classes"] == 6  # class 5 means >= 4.5
    c, m = to_classes([1, 2, 3.5, 5], "1-5")
    assert c.tolist() == [0, 1, 3, 4] and m["num_classes"] == 5
    c, m = to_classes(["low", "high", "mid", None], {"low": 0, "mid": 1, "high": 2})
    assert c.tolist() == [0, 2, 1, -1] and m["num_classes"] == 3
    c, _ = to_classes([3, 7, 3], {"3": 0, "7": 1})            # JSON keys are strings
    assert c.tolist() == [0, 1, 0]
    c, m = to_classes([0, 3, 0, 1], "classes")                 # class 2 simply absent
    assert m["num_classes"] == 4 and m["counts"] == [2, 1, 0, 1]


@pytest.mark.parametrize("values, scale, row, why", [
    ([1, 2, "good"], "classes", 2, "not a number"),
    ([1, 2.5, 3], "classes", 1, "class label"),
    ([1, 2.5, 3], None, 1, "integer class"),
    ([0, 6, 3], "0-5", 1, "outside"),
    ([1, 2, 3], "stars", None, "unknown rating scale"),
    (["a", "b"], {"a": 0}, 1, "not in the mapping"),
])
def test_bad_ratings_name_row_and_field(values, scale, row, why):
    with pytest.raises(InputError) as err:
        to_classes(values, scale, field="score", rows=[10, 11, 12][:len(values)])
    assert why in str(err.value)
    assert err.value.field == "score"
    assert err.value.row == (None if row is None else [10, 11, 12][row])


# ----------------------------------------------------------------------------------------
# HOC: consensus counting and the fit
# ----------------------------------------------------------------------------------------
def plain_consensus(ratings, idx, k_classes, rounds, sample_size, seed):
    """The reference's counting (docta ``consensus_counts`` + ``estimator_hoc``) as loops.

    Points are the rated samples with two rated neighbours; the pattern is (own rating,
    first rated neighbour, second rated neighbour). Subsamples come from the engine's seeded
    draw, so both count exactly the same points.
    """
    points, patterns = [], []
    for i in range(len(ratings)):
        if ratings[i] < 0:
            continue
        nbrs = [j for j in idx[i] if j >= 0 and j != i and ratings[j] >= 0][:2]
        if len(nbrs) == 2:
            points.append(i)
            patterns.append((ratings[i], ratings[nbrs[0]], ratings[nbrs[1]]))
    c = [np.zeros(k_classes), np.zeros((k_classes,) * 2), np.zeros((k_classes,) * 3)]
    for sub in hoc_subsamples(len(points), rounds, sample_size, seed):
        cnt = [np.zeros_like(x) for x in c]
        for s in sub:
            a, b, d = patterns[s]
            cnt[0][a] += 1
            cnt[1][a][b] += 1
            cnt[2][a][b][d] += 1
        for j in range(3):
            c[j] += cnt[j] / len(sub)
    return [x / rounds for x in c]


def test_consensus_counts_equal_the_plain_loop():
    x, _, rated = synthetic(400, seed=3, clusters=20)
    rated = rated.astype(np.int64)
    rated[::17] = -1                                   # some missing ratings
    idx, _ = knn_graph(x, 8)
    engine = consensus_counts(rated, idx, 6, rounds=7, sample_size=250, seed=5)
    plain = plain_consensus(rated, idx, 6, rounds=7, sample_size=250, seed=5)
    for e, p in zip(engine, plain):
        np.testing.assert_allclose(e, p, rtol=0, atol=1e-12)
    est = TransitionEstimator(num_classes=6, rounds=7, sample_size=250, steps=10, seed=5)
    est.fit(rated, idx)
    np.testing.assert_allclose(est.c3_, plain[2], atol=1e-12)


def test_consensus_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    c3 = rng.random((4, 4, 4))
    c3 /= c3.sum()
    targets = [c3.sum(axis=(1, 2)), c3.sum(axis=2), c3]
    W, v = rng.normal(size=(4, 4)), rng.normal(size=4)
    _, gW, gv = consensus_loss(W, v, targets)
    h = 1e-6
    for i in range(4):
        for j in range(4):
            e = np.zeros_like(W)
            e[i, j] = h
            num = (consensus_loss(W + e, v, targets)[0]
                   - consensus_loss(W - e, v, targets)[0]) / (2 * h)
            assert abs(num - gW[i, j]) < 1e-7
        e = np.zeros(4)
        e[i] = h
        num = (consensus_loss(W, v + e, targets)[0]
               - consensus_loss(W, v - e, targets)[0]) / (2 * h)
        assert abs(num - gv[i]) < 1e-7


def test_fit_solves_exact_consensus_equations():
    # c_j computed here by explicit sums, not by the engine
    K = len(PRIOR)
    c1 = sum(PRIOR[r] * TRUE_T[r] for r in range(K))
    c2 = sum(PRIOR[r] * np.outer(TRUE_T[r], TRUE_T[r]) for r in range(K))
    c3 = sum(PRIOR[r] * np.einsum("a,b,c->abc", TRUE_T[r], TRUE_T[r], TRUE_T[r])
             for r in range(K))
    T, p, loss = fit_transition(c1, c2, c3, steps=1500, lr=0.1, seed=0)
    assert np.abs(T - TRUE_T).max() < 0.03
    assert np.abs(p - PRIOR).max() < 0.03
    np.testing.assert_allclose(T.sum(axis=1), 1.0)


# ----------------------------------------------------------------------------------------
# the whole curation on synthetic data with a known T
# ----------------------------------------------------------------------------------------
@pytest.mark.slow  # the 20,000-row curation takes ~6 s
def test_recovers_known_transition_matrix(synthetic_20k):
    T = np.asarray(synthetic_20k["report"]["transition_matrix"])
    assert T.shape == (6, 6)
    np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(T - TRUE_T).max() <= 0.07


@pytest.mark.slow
def test_flags_the_corrupted_ratings(synthetic_20k):
    s = synthetic_20k
    corrupted = s["rated"] != s["true"]
    frame = s["frame"]
    assert roc_auc_score(corrupted, frame["noisy_avg"]) >= 0.8
    assert roc_auc_score(corrupted, frame["flagged"].astype(float)) >= 0.8
    # curation should repair more ratings than it breaks
    assert np.mean(frame["curated"] == s["true"]) > np.mean(s["rated"] == s["true"])
    changed = frame["curated"] != frame["rating_class"]
    assert (~changed | frame["flagged"]).all()            # only flagged ratings change
    assert (frame.loc[changed, "confidence"] >= 0.5).all()


@pytest.mark.slow
def test_noise_rates_follow_T_p_and_histogram(synthetic_20k):
    rep = synthetic_20k["report"]
    T, p = np.asarray(rep["transition_matrix"]), np.asarray(rep["prior"])
    hist = np.asarray(rep["histogram_raw"], dtype=float)
    for c in range(6):
        clean = T[c, c] * p[c] / (hist[c] / hist.sum())
        expected = min(max(1 - min(clean, 1.0), 0.05), 0.95)
        assert rep["noise_rates"][c] == pytest.approx(expected, abs=1e-9)


def test_simifeat_equals_the_plain_loop():
    x, _, rated = synthetic(300, seed=12, clusters=15, T=TRUE_T[:3, :3] / TRUE_T[:3, :3].sum(
        axis=1, keepdims=True), prior=np.array([0.3, 0.4, 0.3]))
    rated[::11] = -1                                   # missing ratings neither vote nor count
    idx, sims = knn_graph(x, 14)
    sims = sims.astype(np.float64)
    rho = np.array([0.2, 0.35, 0.1])
    engine = detect_misratings(rated, idx, sims, rho, k=10, epochs=4, seed=3)
    noisy_avg, flagged, suggested, confidence = plain_simifeat(rated, idx, sims, rho, k=10,
                                                               epochs=4, fraction=0.9, seed=3)
    ok = rated >= 0
    np.testing.assert_allclose(engine["noisy_avg"][ok], noisy_avg[ok], atol=1e-12)
    np.testing.assert_array_equal(engine["flagged"], ok & (noisy_avg > 0.5))
    np.testing.assert_array_equal(flagged, ok & (noisy_avg > 0.5))
    np.testing.assert_array_equal(engine["suggested"][ok], suggested[ok])
    np.testing.assert_allclose(engine["confidence"][ok], confidence[ok], atol=1e-12)
    assert engine["noisy_avg"][~ok].isna().all() and (engine["suggested"][~ok] == -1).all()
    assert 0 < engine["flagged"].sum() < ok.sum()


def test_reference_self_vote_variant_also_finds_corruption():
    x, true, rated = synthetic(4000, seed=13, clusters=150)
    idx, sims = knn_graph(x, 15)
    frame, _ = ds2.curate(rated, idx, sims, steps=300, epochs=11, self_vote=True)
    assert roc_auc_score(rated != true, frame["noisy_avg"]) >= 0.8


def test_long_tail_equals_brute_force_reference():
    x, _, _ = synthetic(300)
    idx, sims = knn_graph(x, 12)
    engine = long_tail_score(sims, k=10, knn_indices=idx)
    for i in range(0, 300, 23):
        dist = sorted(1.0 - float(x[i] @ x[j]) for j in range(300) if j != i)[:10]
        mean = sum(dist) / 10
        assert engine[i] == pytest.approx(2.0 / (1.0 + math.exp(-mean)) - 1.0, abs=1e-5)


def test_same_seed_same_output_and_seed_matters():
    x, _, rated = synthetic(3000, seed=4, clusters=100)
    idx, sims = knn_graph(x, 15)
    a, ra = ds2.curate(rated, idx, sims, seed=7, steps=300)
    b, rb = ds2.curate(rated, idx, sims, seed=7, steps=300)
    c, _ = ds2.curate(rated, idx, sims, seed=8, steps=300)
    pd.testing.assert_frame_equal(a, b)
    assert ra == rb
    assert not np.array_equal(a["noisy_avg"].to_numpy(), c["noisy_avg"].to_numpy())


# ----------------------------------------------------------------------------------------
# small and degenerate cases
# ----------------------------------------------------------------------------------------
def test_classes_absent_from_the_data():
    x, _, rated = synthetic(1500, seed=5, clusters=60)
    rated = np.minimum(rated, 3)                        # classes 4 and 5 never used
    idx, sims = knn_graph(x, 15)
    frame, rep = ds2.curate(rated, idx, sims, num_classes=6, steps=300)
    T = np.asarray(rep["transition_matrix"])
    assert T.shape == (6, 6) and np.isfinite(T).all()
    np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-5)
    assert rep["noise_rates"][4] is None and rep["noise_rates"][5] is None
    assert any("class 4, 5" in w for w in rep["warnings"])
    assert frame["curated"].max() <= 5


def test_fewer_samples_than_k():
    x, _, rated = synthetic(7, seed=6, clusters=2)
    idx, sims = knn_graph(x, 10)                        # only 6 neighbours exist
    assert idx.shape == (7, 6)
    frame, rep = ds2.curate(rated, idx, sims, k=10, steps=50, epochs=5)
    assert len(frame) == 7
    assert any("only 6 neighbours" in w for w in rep["warnings"])
    assert any("only 7 rated samples" in w for w in rep["warnings"])
    with pytest.raises(InputError, match="two rated neighbours"):
        ds2.curate(np.array([0, 1]), np.array([[1], [0]]), np.ones((2, 1)))


def test_all_ratings_equal_flags_nothing():
    x, _, _ = synthetic(1000, seed=7, clusters=30)
    idx, sims = knn_graph(x, 15)
    frame, rep = ds2.curate(np.ones(1000, dtype=int), idx, sims, num_classes=2, steps=200,
                            epochs=5)
    assert not frame["flagged"].any()
    assert (frame["curated"] == 1).all()
    assert any("same class" in w for w in rep["warnings"])


def test_missing_ratings_are_left_alone():
    x, _, rated = synthetic(2000, seed=8, clusters=80)
    ratings, _ = to_classes(np.where(np.arange(2000) % 10 == 0, np.nan, rated), "classes",
                                num_classes=6)
    idx, sims = knn_graph(x, 15)
    frame, rep = ds2.curate(ratings, idx, sims, steps=200, epochs=11)
    gone = np.arange(2000) % 10 == 0
    assert (frame.loc[gone, "rating_class"] == -1).all()
    assert (frame.loc[gone, "curated"] == -1).all()
    assert not frame.loc[gone, "flagged"].any()
    assert frame.loc[gone, "noisy_avg"].isna().all()
    assert frame.loc[~gone, "noisy_avg"].notna().all()
    assert rep["missing"] == 200 and rep["rated"] == 1800
    assert sum(rep["histogram_raw"]) == 1800 == sum(rep["histogram_curated"])


def test_graph_that_does_not_match_the_ratings():
    with pytest.raises(InputError, match="does not match"):
        ds2.curate(np.zeros(5, dtype=int), np.zeros((4, 2), dtype=int), np.zeros((4, 2)))


# ----------------------------------------------------------------------------------------
# evidence, selection, agreement
# ----------------------------------------------------------------------------------------
def test_neighbour_evidence():
    idx = np.array([[2, 1, -1], [0, 2, -1], [1, 0, -1]])
    sims = np.array([[0.9, 0.5, 0.0], [0.8, 0.4, 0.0], [0.7, 0.6, 0.0]])
    ev = neighbour_evidence(0, idx, sims, np.array([3, 4, 5]), k=10)
    assert ev["neighbour_id"].tolist() == [2, 1]
    assert ev["similarity"].tolist() == [0.9, 0.5]
    assert ev["rating"].tolist() == [5, 4]
    assert neighbour_evidence(2, idx, sims, np.array([3, 4, 5]), k=1)["rating"].tolist() == [4]
