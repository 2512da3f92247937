"""Cherry's brief (pre-experienced) model, docs/methods.md §1b (core/lm/brief.py).

The pick rule is checked against a plain rewrite of Cherry_LLM's
``sample_middle_confidence_data`` (lists and a hand-written percentile; no numpy), on
synthetic data covering every branch and on the real analysis of 20 Alpaca rows. The LM tests
train SmolLM2-135M for two single-step epochs on the rows picked from 20 real rows (kept tiny:
the machine is shared): the answer loss on those rows goes down, a run killed after its first
epoch resumes to the same weights, and IFD scored with ``--model brief`` names the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import DATA
from real_rows import first_rows

from core.errors import Cancelled, InputError
from core.lm.brief import cluster_labels, middle_band_picks


# ----- the pick rule against a plain rewrite -----------------------------------------------
def percentile(ordered, p):
    """The p-th percentile of sorted values, interpolating linearly between closest ranks."""
    pos = (len(ordered) - 1) * p / 100
    lo = int(pos)
    if lo + 1 >= len(ordered) or pos == lo:
        return ordered[lo]
    return ordered[lo] + (ordered[lo + 1] - ordered[lo]) * (pos - lo)


def plain_pick(labels, perplexities, n, low=25, high=75):
    """Cherry's data_by_cluster.py rule written out with lists: clusters 0..K-1 in order,
    whole cluster below n members, else the inclusive percentile band (linear interpolation
    between closest ranks), whole band below n, else every (len // n)-th."""
    picks = []
    for cluster in sorted(set(labels)):
        members = [i for i, c in enumerate(labels) if c == cluster]
        if len(members) < n:
            picks.extend(members)
            continue
        values = sorted(perplexities[i] for i in members)
        lower, upper = percentile(values, low), percentile(values, high)
        band = [i for i in members if lower <= perplexities[i] <= upper]
        if len(band) < n:
            picks.extend(band)
        else:
            step = len(band) // n
            picks.extend([band[k] for k in range(0, len(band), step)][:n])
    return picks


def test_pick_rule_matches_plain_rewrite_on_synthetic_clusters():
    rng = np.random.default_rng(3)
    # cluster sizes: below n (whole), band below n (13 members -> band of 7), large bands
    # with step 1, 2 and 7, and ties in perplexity (band ends inclusive)
    sizes = [4, 13, 25, 45, 150, 9, 10]
    labels = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    rng.shuffle(labels)
    ppl = rng.lognormal(1.5, 0.6, len(labels))
    ppl[labels == 6] = np.round(ppl[labels == 6])          # ties at the percentile cuts
    got = middle_band_picks(labels, ppl, 10).tolist()
    want = plain_pick(labels.tolist(), ppl.tolist(), 10)
    assert got == want
    per_cluster = pd.Series(labels[got]).value_counts().to_dict()
    assert per_cluster[0] == 4 and per_cluster[1] < 10 and per_cluster[4] == 10


@pytest.mark.parametrize("n", [1, 3, 10])
def test_pick_rule_matches_plain_rewrite_after_kmeans(n):
    rng = np.random.default_rng(n)
    centres = rng.normal(0, 5, (6, 8))
    emb = np.concatenate([c + rng.normal(0, 1, (rng.integers(5, 60), 8)) for c in centres])
    labels = cluster_labels(emb, 6, seed=0)
    assert set(labels.tolist()) == set(range(6))
    ppl = rng.gamma(2.0, 2.0, len(emb))
    assert middle_band_picks(labels, ppl, n).tolist() == plain_pick(labels.tolist(),
                                                                    ppl.tolist(), n)


def test_kmeans_is_seeded_and_checks_its_size():
    emb = np.random.default_rng(0).normal(size=(40, 5))
    assert (cluster_labels(emb, 4, 0) == cluster_labels(emb, 4, 0)).all()
    with pytest.raises(InputError, match="clusters"):
        cluster_labels(emb[:3], 4, 0)


# ----- the LM phase on 20 real rows ----------------------------------------------------------
MAX_LEN = 64
TRAIN = dict(epochs=2, lr=1e-4, batch_size=4, seed=0)
PICK = dict(n_clusters=2, per_cluster=10, max_length=MAX_LEN, template="alpaca",
            precision="float32")


def _workspace(root: Path, rows: list[dict]):
    from core.workspace import Workspace

    frame = pd.DataFrame({
        "sample_id": np.arange(len(rows), dtype=np.int64),
        "source_row": np.arange(len(rows), dtype=np.int64),
        "instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows],
        "output": [r["output"] for r in rows], "record": [json.dumps(r) for r in rows]})
    return Workspace.create(root, frame, source={"path": "test"})


def _train(ws, progress=None):
    from core.lm.brief import run_brief_model
    from core.lm.brief_train import TrainConfig

    return run_brief_model(ws, config=TrainConfig(**TRAIN), train_progress=progress, **PICK)


@pytest.fixture(scope="module")
def rows20():
    return first_rows(DATA / "alpaca_random_9k.jsonl.gz", 20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, rows20):
    """One uninterrupted brief training on 20 real rows (its workspace and result)."""
    ws = _workspace(tmp_path_factory.mktemp("brief") / "ws", rows20)
    return ws, _train(ws)


@pytest.mark.lm
def test_pick_rule_on_real_analysis(trained):
    from core.lm.brief import ANALYSIS

    ws, res = trained
    analysis = pd.read_parquet(ws.path(ANALYSIS)).sort_values("sample_id")
    assert len(analysis) == 20 and analysis["perplexity"].notna().all()
    labels = cluster_labels(np.stack(analysis["embedding"].to_numpy()), 2, seed=0)
    ids = analysis["sample_id"].to_numpy()
    want = [int(ids[i]) for i in plain_pick(labels.tolist(),
                                            analysis["perplexity"].tolist(), 10)]
    assert res.sidecar["picked_sample_ids"] == want
    assert 0 < len(want) <= 20


@pytest.mark.lm
def test_brief_training_lowers_answer_loss_on_its_rows(trained, rows20):
    """Measured by the scoring engine (``sequence_losses``), not by the training code."""
    from core.lm import encode, load_causal_lm, render_prompt, sequence_losses, with_start

    ws, res = trained
    side = json.loads((res.folder / "brief.json").read_text())
    assert side["params"]["train"]["epochs"] == 2 and len(side["history"]) == 2
    assert side["history"][1]["train_loss"] < side["history"][0]["train_loss"]

    def answer_loss(lm):
        tok, seqs = lm.tokenizer, []
        for sid in side["picked_sample_ids"]:
            r = rows20[sid]
            head = with_start(lm.start_token_id,
                              encode(tok, render_prompt("alpaca", r["instruction"], r["input"])))
            answer = encode(tok, r["output"])[:MAX_LEN - len(head)]
            if answer:
                seqs.append((head + answer, len(answer)))
        losses = sequence_losses(lm, seqs)
        weights = np.array([n for _, n in seqs])
        return float(np.nansum(losses * weights) / weights.sum())

    before = answer_loss(load_causal_lm(dtype="float32"))
    after = answer_loss(load_causal_lm(res.folder, dtype="float32"))
    assert after < before - 0.05, (before, after)


@pytest.mark.lm
def test_killed_training_resumes_from_its_epoch_checkpoint(trained, rows20, tmp_path):
    import torch
    from safetensors.torch import load_file

    ws_done, done = trained
    ws = _workspace(tmp_path / "ws", rows20)
    calls = []

    def kill_in_epoch_two(step, total, note):
        calls.append((step, total))
        if step == total // 2 + 1:  # a step into epoch 2: epoch 1's checkpoint is on disk
            raise Cancelled()

    with pytest.raises(Cancelled):
        _train(ws, kill_in_epoch_two)
    assert list((ws.path("models", "brief.checkpoints")).glob("*/epoch-1/state.json"))
    assert not ws.path("models", "brief").exists()
    total = calls[-1][1]
    calls.clear()
    res = _train(ws, lambda step, total, note: calls.append(step))
    assert calls == list(range(total // 2, total + 1))  # epoch 1 is not trained again
    assert res.sidecar["resumed_from_epoch"] == 1
    losses = [(h["epoch"], h["train_loss"]) for h in res.sidecar["history"]]
    assert losses == [(h["epoch"], h["train_loss"]) for h in done.sidecar["history"]]
    assert not ws.path("models", "brief.checkpoints").exists()
    a = load_file(str(res.folder / "model.safetensors"))
    b = load_file(str(done.folder / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same weights as the uninterrupted run
    assert _train(ws).cached


@pytest.mark.lm
def test_ifd_with_brief_model_names_it_and_recomputes_after_retraining(trained, tmp_path):
    from core.scores.ifd import run_ifd
    from core.workspace.files import sha256_file

    ws_done, done = trained
    ws_root = tmp_path / "ws"
    shutil.copytree(ws_done.root, ws_root)
    from core.workspace import Workspace

    ws = Workspace.open(ws_root)
    first = run_ifd(ws, [0, 1, 2], model="brief", template="alpaca", max_length=MAX_LEN)["ifd"]
    meta = ws.score_meta("ifd")
    brief = json.dumps(meta)
    sidecar = ws.path("models", "brief", "brief.json")
    assert str(sidecar.resolve()) in brief and sha256_file(sidecar) in brief
    assert meta["params"]["model_identity"].startswith("brief:")
    assert run_ifd(ws, [0, 1, 2], model="brief", template="alpaca",
                   max_length=MAX_LEN)["ifd"].cached
    # a retrained model (another sidecar) must not reuse those scores
    side = json.loads(sidecar.read_text())
    side["history"][0]["train_loss"] += 1.0
    sidecar.write_text(json.dumps(side))
    again = run_ifd(ws, [0, 1, 2], model="brief", template="alpaca", max_length=MAX_LEN)["ifd"]
    assert not again.cached and not first.cached


def test_model_brief_without_a_brief_model_is_a_one_line_error(tmp_path, rows20):
    from core.cli import main

    ws = _workspace(tmp_path / "ws", rows20[:3])
    with pytest.raises(InputError, match="no brief model"):
        from core.lm.models import resolve_model

        resolve_model("brief", ws)
    assert main(["score", "ifd", "--workspace", str(ws.root), "--model", "brief"]) == 2


@pytest.mark.lm
def test_app_scoring_form_offers_the_brief_model(trained, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core.workspace import Workspace

    ws_root = tmp_path / "ws"
    shutil.copytree(trained[0].root, ws_root)
    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(ws_root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"),
                           default_timeout=300).run()
    at.switch_page("pages/data.py").run()
    assert not at.exception, at.exception
    at.radio(key="ifd_model").set_value("brief").run()
    at.number_input(key="ifd_size").set_value(2).run()
    at.number_input(key="ifd_max_length").set_value(MAX_LEN).run()
    at.button(key="run_ifd").click().run()
    assert not at.exception, at.exception
    meta = Workspace.open(ws_root).score_meta("ifd")
    assert meta["params"]["model_identity"].startswith("brief:") and meta["rows"] == 2
