"""DS2's reference variants (docs/methods.md §3, "Reference variants"): SimiFeat's self vote,
the majority-vote detector and ``min_confidence``, each checked against the plain rewrite in
``ds2_truth`` (no engine code), and wired through ``run_curate``, its cache key and the CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from core import atomic
from core.errors import InputError
from core.scores import ds2
from core.scores.simifeat import detect_misratings
from ds2_truth import TRUE_T, plain_curated, plain_noise_rates, plain_simifeat
from test_ds2 import knn_graph, synthetic
from test_ds2_runs import make_workspace
from ui_fixture import fixture_ws  # noqa: F401

FAST = dict(steps=200, epochs=7)


@pytest.fixture(scope="module")
def small():
    """300 topic-clustered samples, 3 classes, every 11th rating missing, a 14-NN graph."""
    T3 = TRUE_T[:3, :3] / TRUE_T[:3, :3].sum(axis=1, keepdims=True)
    x, _, rated = synthetic(300, seed=21, clusters=15, T=T3, prior=np.array([0.3, 0.4, 0.3]))
    rated[::11] = -1
    idx, sims = knn_graph(x, 14)
    return rated, idx, sims.astype(np.float64)


def _same(engine, plain, rated):
    noisy_avg, flagged, suggested, confidence = plain
    ok = rated >= 0
    np.testing.assert_allclose(engine["noisy_avg"][ok], noisy_avg[ok], atol=1e-12)
    np.testing.assert_array_equal(engine["flagged"].to_numpy(), flagged)
    np.testing.assert_array_equal(engine["suggested"].to_numpy(), suggested)
    np.testing.assert_allclose(engine["confidence"][ok], confidence[ok], atol=1e-12)


@pytest.mark.parametrize("self_vote", [False, True])
@pytest.mark.parametrize("detector", ["rank", "mv"])
def test_detection_variants_equal_the_plain_rewrite(small, detector, self_vote):
    rated, idx, sims = small
    rho = [0.2, 0.35, 0.1]
    engine = detect_misratings(rated, idx, sims, rho, k=10, epochs=5, seed=4,
                               self_vote=self_vote, detector=detector)
    plain = plain_simifeat(rated, idx, sims, rho, k=10, epochs=5, seed=4,
                           self_vote=self_vote, detector=detector)
    _same(engine, plain, rated)
    assert 0 < engine["flagged"].sum() < (rated >= 0).sum()


def test_self_vote_weight_comes_from_the_first_two_voting_neighbours():
    """A sample whose two graph-nearest neighbours are left out of the epoch's subsample:
    its self weight must come from the neighbours that do vote (docta's kNN runs inside the
    subsample), not from the graph's first two columns."""
    rated, idx, sims = (np.array([0, 1, 1, 0, 0]), np.array([[1, 2, 3, 4]] * 5),
                        np.tile([0.99, 0.98, 0.5, 0.2], (5, 1)))
    idx = np.array([[1, 2, 3, 4], [0, 2, 3, 4], [0, 1, 3, 4], [0, 1, 2, 4], [0, 1, 2, 3]])
    for seed in range(40):  # some seeds leave samples 1 and 2 out of sample 0's epoch
        engine = detect_misratings(rated, idx, sims, [0.3, 0.3], k=3, epochs=3, seed=seed,
                                   self_vote=True, sample_fraction=0.6)
        plain = plain_simifeat(rated, idx, sims, [0.3, 0.3], k=3, epochs=3, seed=seed,
                               self_vote=True, fraction=0.6)
        _same(engine, plain, rated)


def test_curate_with_mv_equals_the_plain_rewrite_end_to_end(small):
    """mv needs no transition matrix, so the whole curated column is the plain one."""
    rated, idx, sims = small
    frame, report = ds2.curate(rated, idx, sims, seed=2, detector="mv", self_vote=True,
                               min_confidence=0.4, **FAST)
    plain = plain_simifeat(rated, idx, sims, [0.0] * 3, epochs=FAST["epochs"], seed=2,
                           self_vote=True, detector="mv")
    _same(frame, plain, rated)
    curated = plain_curated(rated, plain[1], plain[2], plain[3], 0.4)
    np.testing.assert_array_equal(frame["curated"], curated)
    assert report["parameters"]["detector"] == "mv" and report["parameters"]["self_vote"]
    assert report["changed"] == int((frame["curated"] != rated).sum()) > 0


@pytest.mark.parametrize("min_confidence", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_min_confidence_equals_the_plain_rule(small, min_confidence):
    rated, idx, sims = small
    frame, report = ds2.curate(rated, idx, sims, seed=1, min_confidence=min_confidence,
                               **FAST)
    rho = plain_noise_rates(report["transition_matrix"], report["prior"],
                            report["histogram_raw"])
    np.testing.assert_allclose(report["noise_rates"], rho, atol=1e-12)
    plain = plain_simifeat(rated, idx, sims, rho, epochs=FAST["epochs"], seed=1)
    _same(frame, plain, rated)
    np.testing.assert_array_equal(
        frame["curated"], plain_curated(rated, plain[1], plain[2], plain[3], min_confidence))
    assert report["changed"] == int((frame["curated"] != rated).sum())


def test_a_lower_min_confidence_changes_more_ratings(small):
    rated, idx, sims = small
    changed = [ds2.curate(rated, idx, sims, min_confidence=x, **FAST)[1]["changed"]
               for x in (0.0, 0.5, 0.9)]
    assert changed[0] >= changed[1] >= changed[2] and changed[0] > changed[2]


@pytest.mark.parametrize("bad", [dict(detector="vote"), dict(min_confidence=1.5),
                                 dict(min_confidence=-0.1), dict(min_confidence="high")])
def test_bad_variant_values_are_input_errors(small, bad):
    rated, idx, sims = small
    with pytest.raises(InputError):
        ds2.curate(rated, idx, sims, **FAST, **bad)


def test_each_variant_has_its_own_cache_key(tmp_path):
    ws, x, _ = make_workspace(tmp_path / "ws", n=600)
    idx, sims = knn_graph(x, 15)
    atomic.write_npz(ws.path("knn.npz"), indices=idx, similarities=sims)
    variants = [dict(), dict(self_vote=True), dict(detector="mv"), dict(min_confidence=0.2)]
    keys, frames = [], []
    for variant in variants:
        run = ds2.run_curate(ws, "judge", **FAST, **variant)
        assert not run.cached, variant  # never the previous variant's file
        params = run.meta["params"]
        assert params["self_vote"] == variant.get("self_vote", False)
        assert params["detector"] == variant.get("detector", "rank")
        assert params["min_confidence"] == variant.get("min_confidence", 0.5)
        keys.append(run.meta["key"])
        frames.append(run.frame)
    assert len(set(keys)) == len(variants)
    assert all(not frames[0].equals(f) for f in frames[1:])
    again = ds2.run_curate(ws, "judge", **FAST, **variants[-1])
    assert again.cached and again.frame.equals(frames[-1])
    # the default spelled out is the default
    assert not ds2.run_curate(ws, "judge", **FAST).cached
    assert ds2.run_curate(ws, "judge", detector="rank", self_vote=False, min_confidence=0.5,
                          **FAST).cached


def main(argv: list[str]) -> int:
    """The curate command as ``python -m core`` parses it (only this area's parser)."""
    parser = argparse.ArgumentParser(prog="core")
    ds2.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_flags_reach_the_sidecar_and_bad_values_exit_2(tmp_path, capsys):
    ws, x, _ = make_workspace(tmp_path / "ws", n=600)
    idx, sims = knn_graph(x, 15)
    atomic.write_npz(ws.path("knn.npz"), indices=idx, similarities=sims)
    base = ["curate", "--workspace", str(ws.root), "--rating-column", "judge"]
    assert main(base + ["--detector", "mv", "--self-vote", "--min-confidence", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "detector mv, self-vote on, min confidence 0.3" in out
    params = ws.score_meta("ds2_judge")["params"]
    assert (params["detector"], params["self_vote"], params["min_confidence"]) == \
        ("mv", True, 0.3)
    for bad in (["--min-confidence", "1.5"], ["--min-confidence", "nan"],
                ["--detector", "vote"]):
        with pytest.raises(SystemExit) as stop:
            main(base + bad)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "error: argument" in err[-1] and bad[0] in err[-1]


def test_data_page_ds2_form_runs_the_chosen_variant(fixture_ws, tmp_path, monkeypatch):
    """The Data page's DS2 form passes the same three options as the CLI flags."""
    import shutil

    from streamlit.testing.v1 import AppTest

    from core.workspace import Workspace
    from ui_fixture import REPO

    root = tmp_path / "ws"
    shutil.copytree(fixture_ws.root, root)
    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/data.py").run()
    assert not at.exception, at.exception
    at.selectbox(key="ds2_column").set_value("claude_ge_4_5")
    at.selectbox(key="ds2_detector").set_value("mv")
    at.checkbox(key="ds2_self_vote").check()
    at.number_input(key="ds2_min_confidence").set_value(0.35)
    at.button(key="run_ds2").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    params = Workspace.open(root).score_meta("ds2_claude_ge_4_5")["params"]
    assert (params["detector"], params["self_vote"], params["min_confidence"]) == \
        ("mv", True, 0.35)
