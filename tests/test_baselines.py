"""Baselines next to the papers' presets (issue 15 item 4): longest responses (Long Is More),
seeded random, k-center greedy on embeddings. Each against a plain rewrite written here
(never importing ``core.select``), then through the CLI: saved, diffed against a preset and
exported like any selection."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist

from test_presets import demo_ws, text_vectors  # noqa: F401
from ui_fixture import fixture_ws  # noqa: F401

from core.cli import main
from core.select import (Context, k_center_greedy, load_selection, named_ranking,
                         score_table, with_ranking)
from core.select.recipe import make_recipe
from core.workspace import Workspace


def run_baseline(ws, name, ctx=None, seed=0, **budget):
    recipe = with_ranking(make_recipe("threshold", **budget), named_ranking(name, seed=seed))
    return recipe.apply(score_table(ws, recipe.columns()), ctx or Context(n_all=len(ws)))


def plain_k_center(x: np.ndarray, budget: int, first: int) -> list[int]:
    """Farthest-first: each next row is the one farthest from its nearest chosen row;
    ties: the smaller index."""
    chosen = [first]
    nearest = cdist(x, x[[first]]).ravel()
    while len(chosen) < budget:
        nearest[chosen] = -1.0
        j = int(np.argmax(nearest))  # first maximum: smaller index on ties
        chosen.append(j)
        nearest = np.minimum(nearest, cdist(x, x[[j]]).ravel())
    return chosen


def test_longest_takes_the_longest_responses(demo_ws):  # noqa: F811
    samples = demo_ws.samples(["sample_id", "output"])
    rows = sorted(zip(samples["sample_id"], samples["output"].fillna("")),
                  key=lambda r: (-len(r[1]), r[0]))
    got = run_baseline(demo_ws, "longest", budget=1000)
    assert got.sample_ids == [int(i) for i, _ in rows[:1000]]
    assert len(samples.set_index("sample_id").loc[got.sample_ids[-1], "output"]) > \
        samples["output"].str.len().median()


def test_random_is_seeded_and_stable_under_filters(demo_ws):  # noqa: F811
    n = len(demo_ws)
    want = [int(i) for i in np.random.default_rng(7).permutation(n)[:500]]
    got = run_baseline(demo_ws, "random", seed=7, budget=500)
    assert got.sample_ids == want
    assert run_baseline(demo_ws, "random", seed=8, budget=500).sample_ids != want
    # a filter removes rows without reshuffling the rest
    filtered = run_baseline(demo_ws, "random", seed=7, budget=500, min={"ifd": 0.9})
    ifd = score_table(demo_ws, ["ifd"]).set_index("sample_id")["ifd"]
    order = [int(i) for i in np.random.default_rng(7).permutation(n) if ifd.get(i, 0) >= 0.9]
    assert filtered.sample_ids == order[:500]


def test_k_center_equals_farthest_first(demo_ws):  # noqa: F811
    samples = demo_ws.samples(["sample_id", "instruction", "input", "output"])
    ids = samples["sample_id"].to_numpy()[:1500]
    x = text_vectors([f"{r.instruction}\n{r.input}\n{r.output}"
                      for r in samples.iloc[:1500].itertuples()], dim=64)
    x[11] = x[10]  # an exact copy: never taken while another row is left
    first = int(np.argmin(np.argsort(np.random.default_rng(0).permutation(len(demo_ws)))[ids]))
    want = plain_k_center(x.astype(np.float64), 120, first)
    assert k_center_greedy(x, 120, first).tolist() == want
    full = np.zeros((len(demo_ws), x.shape[1]), dtype=np.float32)
    full[ids] = x
    recipe = with_ranking(make_recipe("threshold", budget=120), named_ranking("kcenter"))
    frame = score_table(demo_ws, recipe.columns())
    got = recipe.apply(frame[frame["sample_id"] < 1500],
                       Context(embeddings=full, n_all=len(demo_ws)))
    assert got.sample_ids == [int(ids[j]) for j in want]
    # the picks spread out: the covering radius is far below a random sample's
    rand = np.random.default_rng(1).choice(1500, 120, replace=False)
    assert cdist(x, x[want]).min(1).max() < cdist(x, x[rand]).min(1).max()


def test_k_center_copies_come_last():
    x = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    assert k_center_greedy(x, 4, 0).tolist() == [0, 2, 3, 1]
    assert k_center_greedy(x, 0, 0).tolist() == []


def test_cli_baselines_are_saved_diffed_and_exported(fixture_ws, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "ws"
    shutil.copytree(fixture_ws.root, root)
    shutil.rmtree(root / "selections", ignore_errors=True)
    ws = Workspace.open(root)
    base = ["select", "--workspace", str(root)]
    assert main([*base, "--name", "kc", "--baseline", "kcenter", "--budget", "30",
                 "--seed", "3"]) == 0
    assert main([*base, "--name", "long", "--baseline", "longest", "--ratio", "0.1"]) == 0
    assert main([*base, "--name", "rnd", "--baseline", "random", "--budget", "30"]) == 0
    assert main([*base, "--name", "sfd", "--preset", "superfiltering-d", "--budget", "5",
                 "--ifd-num", "15"]) == 0
    out = capsys.readouterr().out
    assert "k-center greedy" in out and "objective" in out
    kc = load_selection(ws, "kc")
    assert kc["recipe"]["ranking"] == {"type": "kcenter", "seed": 3} and \
        len(kc["sample_ids"]) == 30
    assert len(load_selection(ws, "sfd")["sample_ids"]) == 5
    assert main(["diff", "--workspace", str(root), "sfd", "kc", "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["count_a"] == 5 and diff["count_b"] == 30 and "per_cluster" in diff
    out_file = tmp_path / "kc.jsonl"
    assert main(["export", "--workspace", str(root), "--selection", "kc", "--out",
                 str(out_file)]) == 0
    assert len(out_file.read_text("utf-8").splitlines()) == 30
    # a baseline takes no preset flag, a preset no seed
    assert main([*base, "--name", "x", "--baseline", "longest", "--seed", "1"]) == 2
    assert main([*base, "--name", "x", "--preset", "cherry", "--seed", "1"]) == 2
    assert main([*base, "--name", "x", "--baseline", "kcenter"]) == 2  # needs a budget
    assert "needs a budget" in capsys.readouterr().err
    lengths = ws.samples(["sample_id", "output"]).set_index("sample_id")["output"].str.len()
    longest = load_selection(ws, "long")["sample_ids"]
    assert list(lengths.loc[longest]) == sorted(lengths.loc[longest], reverse=True)
    assert pd.Series(lengths.loc[longest]).min() >= lengths.drop(longest).max()
