"""IFD / r-IFD / RECOST engine against the plain per-sample reference (tests/lm_reference.py).

Real Alpaca rows, the real SmolLM2 model (converted once into the user cache), fp32, and a
small max_length so truncation is common and the suite stays fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.scores import ifd, recost
from core.lm import LoadedLM, load_causal_lm, plan_batches

import lm_reference as ref
from real_rows import first_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MAX_LEN = 128
REL = 1e-4


@pytest.fixture(scope="session")
def lm() -> LoadedLM:
    return load_causal_lm(dtype="float32")


@pytest.fixture(scope="session")
def alpaca_rows() -> list[dict]:
    return first_rows(DATA / "alpaca_random_9k.jsonl.gz", 3000)


@pytest.fixture(scope="session")
def rows40(alpaca_rows, lm) -> list[dict]:
    """40 real rows: 10 short, 10 longer than MAX_LEN tokens, 10 with an input, 10 non-ASCII."""
    tok = lm.tokenizer
    short, long, with_input, non_ascii = [], [], [], []
    for r in alpaca_rows[:3000]:
        text = r["instruction"] + r["input"] + r["output"]
        n = len(tok(text)["input_ids"])
        if not text.isascii():
            bucket = non_ascii
        elif r["input"].strip():
            bucket = with_input
        elif n > MAX_LEN + 20:
            bucket = long
        elif n < 40:
            bucket = short
        else:
            continue
        if len(bucket) < 10:
            bucket.append(r)
    rows = short + long + with_input + non_ascii
    assert len(rows) == 40
    return rows


def _columns(rows):
    return ([r["instruction"] for r in rows], [r["input"] for r in rows],
            [r["output"] for r in rows])


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(b), 1e-12)


# ----- IFD vs the reference -------------------------------------------------------------------
@pytest.mark.lm
@pytest.mark.parametrize("template", ["none", "alpaca", "wiz", "vicuna", "chat"])
def test_ifd_matches_per_sample_reference(lm, rows40, template):
    got = ifd.ifd_scores(lm, *_columns(rows40), template=template, max_length=MAX_LEN,
                         token_budget=1024)
    assert len(got) == 40
    assert got["truncated"].sum() >= 5, "the long rows must exercise truncation"
    for i, r in enumerate(rows40):
        want = ref.ifd_one(lm.model, lm.tokenizer, r["instruction"], r["input"], r["output"],
                           template, MAX_LEN)
        row = got.iloc[i]
        assert pd.isna(row["missing_reason"]) and want["missing_reason"] is None
        assert row["answer_tokens"] == want["answer_tokens"]
        assert bool(row["truncated"]) == want["truncated"]
        for col in ("loss_conditioned", "loss_direct", "ifd", "ifd_ppl"):
            assert _close(row[col], want[col]), (template, i, col, row[col], want[col])


@pytest.mark.lm
def test_batching_does_not_change_scores(lm, rows40):
    rows = rows40[:12]
    one = ifd.ifd_scores(lm, *_columns(rows), max_length=MAX_LEN, token_budget=1)
    many = ifd.ifd_scores(lm, *_columns(rows), max_length=MAX_LEN, token_budget=8192)
    np.testing.assert_allclose(many["ifd"], one["ifd"], rtol=REL)


@pytest.mark.lm
@pytest.mark.parametrize("template", ["none", "wiz", "vicuna"])
def test_rifd_matches_reference(lm, rows40, template):
    rows = rows40[:4] + rows40[10:14] + rows40[20:24] + rows40[30:32]
    got = ifd.rifd_scores(lm, *_columns(rows), max_length=160, template=template)
    assert got["reverse_truncated"].any()
    for i, r in enumerate(rows):
        want = ref.rifd_one(lm.model, lm.tokenizer, r["instruction"], r["input"], r["output"],
                            160, template)
        row = got.iloc[i]
        assert row["instruction_tokens"] == want["instruction_tokens"]
        assert bool(row["reverse_truncated"]) == want["reverse_truncated"]
        for col in ("loss_reverse_conditioned", "loss_reverse_direct", "rifd", "rifd_ppl"):
            assert _close(row[col], want[col]), (template, i, col, row[col], want[col])


def test_rifd_prompt_is_the_template_then_instruction_and_input_glued(monkeypatch):
    """The model reads R through the template, then instruction + input with no separator
    (Reflection-Tuning's data_analysis.py), for a row with an input."""
    read = {}

    def fake_split(tok, prompt, target):
        read["prompt"], read["target"] = prompt, target
        return [5, 6], [7, 8], False

    monkeypatch.setattr(ifd, "split_prompt_answer", fake_split)
    ifd._rifd_pair(None, 1, ifd.reverse_target("Sort these", "b, a"), "a, b", 512, "vicuna")
    reversed_instruction = ref.REVERSED.format(answer="a, b")
    assert read["prompt"] == ref.VICUNA_WITHOUT_INPUT.format(instruction=reversed_instruction)
    assert read["prompt"].endswith("above response. ASSISTANT:")
    assert read["target"] == "Sort theseb, a"
    assert ifd.reverse_prompt("a, b") == reversed_instruction + "\n"  # template none
    assert ifd.reverse_target("Sort these", "  ") == "Sort these"  # blank input: none


def test_text_templates_are_the_reference_strings():
    from core.lm import direct_prefix, render_prompt

    for template, with_input, without_input, prefix in (
            ("wiz", ref.WIZARD_WITH_INPUT, ref.WIZARD_WITHOUT_INPUT, "### Response:"),
            ("vicuna", ref.VICUNA_WITH_INPUT, ref.VICUNA_WITHOUT_INPUT, "ASSISTANT:"),
            ("alpaca", ref.ALPACA_WITH_INPUT, ref.ALPACA_WITHOUT_INPUT, "### Response:")):
        assert render_prompt(template, "Do {x}", "in {y}") == with_input.format(
            instruction="Do {x}", input="in {y}")
        assert render_prompt(template, "Do {x}", " ") == without_input.format(
            instruction="Do {x}")
        assert direct_prefix(template) == prefix


@pytest.mark.lm
def test_rifd_instruction_too_long_is_missing(lm, alpaca_rows):
    r = alpaca_rows[0]
    got = ifd.rifd_scores(lm, [r["instruction"] * 40], [""], [r["output"]], max_length=64)
    assert got["rifd_missing_reason"].iloc[0] == "instruction_too_long"
    assert np.isnan(got["rifd"].iloc[0])


# ----- RECOST ---------------------------------------------------------------------------------
@pytest.mark.lm
def test_recost_matches_reference(lm, rows40):
    # short rows (room for demonstrations) and rows with an input; then one long row whose
    # answer fills max_length, leaving no room for any demonstration
    samples = rows40[:3] + rows40[22:24]
    pool = rows40[24:40]
    demos = [[(d["instruction"], d["input"], d["output"]) for d in pool[i:i + 3]]
             for i in range(len(samples))]
    got = recost.recost_scores(lm, *_columns(samples), demos, template="none", max_length=MAX_LEN,
                            knowledge_max_length=MAX_LEN)
    truncated_demos = 0
    for i, r in enumerate(samples):
        want = ref.recost_one(lm.model, lm.tokenizer, r["instruction"], r["input"],
                              r["output"], demos[i], "none", MAX_LEN)
        row = got.iloc[i]
        assert row["demo_tokens"] == want["demo_tokens"]
        truncated_demos += want["demo_tokens"] < len(ref.ids_of(
            lm.tokenizer, "".join(ref.prompt_for("none", d[0], d[1], lm.tokenizer) + d[2]
                                  + "\n\n" for d in demos[i])))
        for col in ("entropy_plain", "entropy_knowledge"):
            assert _close(row[col], want[col]), (i, col, row[col], want[col])
        assert abs(row["recost"] - want["recost"]) <= 1e-4 * max(1.0, abs(want["entropy_plain"]))
    assert truncated_demos >= 1, "some demonstrations must be cut from the left"
    # reusing IFD's conditioned loss as the plain entropy gives the same scores
    plain = ifd.ifd_scores(lm, *_columns(samples), max_length=MAX_LEN)["loss_conditioned"]
    again = recost.recost_scores(lm, *_columns(samples), demos, max_length=MAX_LEN,
                              knowledge_max_length=MAX_LEN,
                              entropy_plain=plain.to_numpy())
    np.testing.assert_allclose(again["recost"], got["recost"], rtol=1e-4, atol=1e-6)
    none = recost.recost_scores(lm, *_columns(samples[:1]), [[]], max_length=MAX_LEN)
    assert none["recost_missing_reason"].iloc[0] == "no_demonstrations"
    assert np.isnan(none["recost"].iloc[0]) and _close(none["entropy_plain"].iloc[0],
                                                       got["entropy_plain"].iloc[0])
    long_row = rows40[10]
    full = [{**long_row, "output": long_row["output"] * 4}]
    assert len(ref.ids_of(lm.tokenizer, full[0]["output"])) > MAX_LEN
    crowded = recost.recost_scores(lm, *_columns(full), [demos[0]], max_length=MAX_LEN,
                                knowledge_max_length=MAX_LEN)
    assert crowded["recost_missing_reason"].iloc[0] == "no_room_for_demonstrations"
    assert np.isnan(crowded["recost"].iloc[0]) and np.isfinite(crowded["entropy_plain"].iloc[0])


def test_retrieve_demos_excludes_the_sample_itself():
    rng = np.random.default_rng(0)
    ref_emb = rng.normal(size=(30, 8)).astype(np.float32)
    ref_emb /= np.linalg.norm(ref_emb, axis=1, keepdims=True)
    sample_emb = ref_emb[[3, 7]] + 0.01 * rng.normal(size=(2, 8)).astype(np.float32)
    sample_emb /= np.linalg.norm(sample_emb, axis=1, keepdims=True)
    ref_texts = [f"row {j}" for j in range(30)]
    ref_texts[11] = "row 3"  # an exact duplicate of sample 0 elsewhere in the reference
    idx, sims = recost.retrieve_demos(sample_emb, ref_emb, k=4, sample_texts=["row 3", "row 7"],
                                   ref_texts=ref_texts)
    for i, own in enumerate(["row 3", "row 7"]):
        allowed = [j for j in range(30) if ref_texts[j] != own]
        brute = sorted(allowed, key=lambda j: -float(ref_emb[j] @ sample_emb[i]))[:4]
        assert idx[i].tolist() == brute
        np.testing.assert_allclose(sims[i], [ref_emb[j] @ sample_emb[i] for j in brute],
                                   rtol=1e-5)


# ----- boundary, start token, missing ---------------------------------------------------------
@pytest.mark.lm
def test_merge_across_boundary_is_split_explicitly(lm):
    tok = lm.tokenizer
    # SmolLM2 merges ":" + ":)" into "::" after "### Response:" and "\n" + "\n\n" into "\n\n\n"
    for prompt, answer in [("### Response:", ":)"), ("Say hi\n", "\n\nHi")]:
        joint = ref.ids_of(tok, prompt + answer)
        p = ref.ids_of(tok, prompt)
        assert joint[:len(p)] != p, "this case must merge across the boundary"
        p_ids, a_ids, merged = ifd.split_prompt_answer(tok, prompt, answer)
        assert merged and p_ids == p and a_ids == ref.ids_of(tok, answer)
        assert tok.decode(a_ids) == answer
    # a row whose alpaca prompt merges with its answer scores like the reference
    got = ifd.ifd_scores(lm, ["Smile"], [""], [":) of course"], template="alpaca",
                         max_length=MAX_LEN)
    want = ref.ifd_one(lm.model, tok, "Smile", "", ":) of course", "alpaca", MAX_LEN)
    assert got["answer_tokens"].iloc[0] == len(ref.ids_of(tok, ":) of course"))
    assert _close(got["ifd"].iloc[0], want["ifd"])


class _BosAddingTokenizer:
    """A tokenizer that adds its BOS itself (like LLaMA's): the engine must not double it."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, text, add_special_tokens=True, **kw):
        out = dict(self._inner(text, add_special_tokens=False, **kw))
        if add_special_tokens:
            out["input_ids"] = [self._inner.bos_token_id] + list(out["input_ids"])
        return out


@pytest.mark.lm
def test_exactly_one_start_token(lm, rows40, monkeypatch):
    tok = lm.tokenizer
    start = lm.start_token_id
    assert start == (tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id)
    seen = []
    real = ifd.sequence_losses

    def spy(lm_, seqs, *a, **kw):
        seen.extend(seqs)
        return real(lm_, seqs, *a, **kw)

    monkeypatch.setattr(ifd, "sequence_losses", spy)
    rows = rows40[:3]
    base = ifd.ifd_scores(lm, *_columns(rows), template="chat", max_length=MAX_LEN)
    wrapped = LoadedLM(**{**lm.__dict__, "tokenizer": _BosAddingTokenizer(tok)})
    again = ifd.ifd_scores(wrapped, *_columns(rows), template="chat", max_length=MAX_LEN)
    np.testing.assert_allclose(again["ifd"], base["ifd"], rtol=1e-6)
    for ids, n in seen:
        assert ids[0] == start and ids[1] != start  # one start token, never two
    # the direct pass reads [start] + assistant header + exactly the scored answer tokens
    answer = ref.answer_ids(tok, ref.prompt_for("chat", rows[0]["instruction"], rows[0]["input"],
                                                tok), rows[0]["output"])[1]
    direct = seen[1][0]
    n = seen[1][1]
    assert direct[-n:] == answer[:n] and seen[0][0][-n:] == answer[:n]


@pytest.mark.lm
def test_missing_reasons_never_zero_never_crash(lm, alpaca_rows, monkeypatch):
    r = alpaca_rows[1]
    got = ifd.ifd_scores(lm, [r["instruction"], r["instruction"], "word " * 300, "", "Hi"],
                         ["", "", "", "", None], ["", "   ", r["output"], "Hello.", "Hello."],
                         max_length=64)
    assert got["missing_reason"].tolist()[:3] == ["empty_answer", "empty_answer",
                                                   "answer_truncated_away"]
    assert got["missing_reason"].isna().tolist()[3:] == [True, True]
    assert got["ifd"].iloc[:3].isna().all() and (got["ifd"].iloc[3:] > 0).all()
    # a non-finite loss becomes a missing score with its reason
    monkeypatch.setattr(ifd, "sequence_losses",
                        lambda lm_, seqs, *a, **k: np.array([math.inf, 1.0] * (len(seqs) // 2)))
    bad = ifd.ifd_scores(lm, ["Hi"], [""], ["Hello."], max_length=64)
    assert bad["missing_reason"].iloc[0] == "non_finite_loss" and np.isnan(bad["ifd"].iloc[0])


# ----- workspace, CLI, kill and resume --------------------------------------------------------
def _workspace(tmp_path: Path, rows: list[dict], name: str):
    from core.workspace import Workspace

    frame = pd.DataFrame({
        "sample_id": np.arange(len(rows), dtype=np.int64),
        "source_row": np.arange(len(rows), dtype=np.int64),
        "instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows],
        "output": [r["output"] for r in rows],
        "record": [json.dumps(r) for r in rows]})
    return Workspace.create(tmp_path / name, frame, source={"path": "test"})


@pytest.mark.lm
def test_rifd_cached_by_an_older_rule_is_recomputed(tmp_path, rows40, lm):
    """An r-IFD cached under scorer version 1 (the bare prompt and a newline before the input)
    is not up to date after the rule changed, whether or not its key named the template; IFD,
    whose rule did not change, stays a cache hit."""
    from core.workspace import SAMPLES, Step

    rows = rows40[20:23]  # rows with an input: the old and the new Q_r differ
    ws = _workspace(tmp_path, rows, "old_rifd")
    ifd.run_ifd(ws, model=lm, max_length=MAX_LEN)
    old_keys = [ifd.lm_params(lm, max_length=MAX_LEN),  # what version 1 wrote
                ifd.lm_params(lm, template="none", max_length=MAX_LEN, scorer_version=1)]
    for params in old_keys:
        def old_scores(chunk, progress):
            n = len(chunk)
            return pd.DataFrame({"sample_id": np.asarray(chunk, dtype=np.int64),
                                 **{c: np.full(n, 0.5) for c in ifd.RIFD_COLUMNS[:4]},
                                 "instruction_tokens": np.ones(n, dtype=np.int64),
                                 "reverse_truncated": np.zeros(n, dtype=bool),
                                 "rifd_missing_reason": pd.array([None] * n, dtype="string")})

        assert params["scorer_version"] == 1
        ws.run_chunked(Step(ifd.RIFD_SCORE, params, inputs={"samples": SAMPLES}),
                       np.arange(3), old_scores, force=True)
        assert (ws.read_score("rifd")["rifd"] == 0.5).all()
        again = ifd.run_ifd(ws, model=lm, max_length=MAX_LEN, with_reverse=True)
        assert again["ifd"].cached and not again["rifd"].cached
        assert ws.score_meta("rifd")["params"]["scorer_version"] == ifd.RIFD_SCORER_VERSION
        assert ws.score_meta("rifd")["params"]["template"] == "none"
        fresh = ifd.rifd_scores(lm, *_columns(rows), max_length=MAX_LEN)
        np.testing.assert_allclose(ws.read_score("rifd")["rifd"], fresh["rifd"], rtol=REL)


@pytest.mark.lm
def test_cli_killed_after_first_chunk_resumes_to_identical_scores(tmp_path, rows40, lm):
    rows = rows40[:4] + rows40[20:28]
    ws = _workspace(tmp_path, rows, "killed")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "core", "score", "ifd", "--workspace", str(ws.root),
           "--max-length", "64", "--chunk-size", "3", "--dtype", "float32"]
    parts = ws.path("scores", "ifd.parquet.parts")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if list(parts.glob("*/chunk-*.parquet")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    chunks = list(parts.glob("*/chunk-*.parquet"))
    assert 1 <= len(chunks) < 4 and not ws.path("scores", "ifd.parquet").exists()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "scored 12 of 12" in done.stdout
    resumed = ws.read_score("ifd")
    # the uninterrupted run, in this process, same chunking
    other = _workspace(tmp_path, rows, "whole")
    whole = ifd.run_ifd(other, model=lm, max_length=64, chunk_size=3)["ifd"].value
    assert resumed["sample_id"].tolist() == list(range(12))
    for col in ("loss_conditioned", "loss_direct", "ifd", "ifd_ppl"):
        np.testing.assert_array_equal(resumed[col].to_numpy(), whole[col].to_numpy())
    meta = ws.score_meta("ifd")
    assert meta["params"]["template"] == "none" and meta["params"]["max_length"] == 64
    assert meta["params"]["dtype"] == "float32"
    # a second run is a cache hit
    assert ifd.run_ifd(ws, model=lm, max_length=64, chunk_size=3)["ifd"].cached


@pytest.mark.lm
def test_run_recost_against_a_reference_file(tmp_path, rows40, lm):
    rows = rows40[:3] + rows40[20:23]
    trusted = rows40[30:38] + [rows[0]]  # the sample's own duplicate must not be its demo
    ref_file = tmp_path / "trusted.jsonl"
    ref_file.write_text("".join(json.dumps(r) + "\n" for r in trusted), encoding="utf-8")
    ws = _workspace(tmp_path, rows, "recost")
    ifd.run_ifd(ws, model=lm, max_length=MAX_LEN)
    res = recost.run_recost(ws, str(ref_file), k=2, model=lm, max_length=MAX_LEN)
    frame = res.value
    assert res.meta["reused_ifd_entropy"] is True
    assert frame["sample_id"].tolist() == list(range(6))
    assert all(len(d) == 2 for d in frame["demo_rows"])
    assert 8 not in list(frame["demo_rows"].iloc[0])
    # the stored scores equal a direct computation with the demos the step picked
    demos = [[(trusted[j]["instruction"], trusted[j]["input"], trusted[j]["output"])
              for j in d] for d in frame["demo_rows"]]
    direct = recost.recost_scores(lm, *_columns(rows), demos, max_length=MAX_LEN)
    np.testing.assert_allclose(frame["recost"], direct["recost"], rtol=1e-4, atol=1e-6)


# ----- speed options: batch planning and bf16 -------------------------------------------------
def _padded_cost(lengths, cuts, batch_cost):
    return sum(lengths[lo] * (hi - lo) + batch_cost for lo, hi in cuts)


def _all_cuts(n):
    for mask in range(2 ** (n - 1)):
        bounds = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        yield list(zip(bounds, bounds[1:]))


def test_plan_batches_is_the_least_padding_within_the_budget():
    rng = np.random.default_rng(0)
    for _ in range(40):
        lengths = sorted(rng.integers(1, 60, int(rng.integers(1, 11))).tolist(), reverse=True)
        budget, cost = int(rng.integers(1, 240)), int(rng.integers(0, 40))
        cuts = plan_batches(lengths, budget, batch_cost=cost)
        assert cuts[0][0] == 0 and cuts[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
        assert all(hi - lo == 1 or lengths[lo] * (hi - lo) <= budget for lo, hi in cuts)
        allowed = [c for c in _all_cuts(len(lengths))
                   if all(hi - lo == 1 or lengths[lo] * (hi - lo) <= budget for lo, hi in c)]
        best = min(_padded_cost(lengths, c, cost) for c in allowed)
        assert _padded_cost(lengths, cuts, cost) == best, (lengths, budget, cost, cuts)
    assert plan_batches([5, 4, 3], 1) == [(0, 1), (1, 2), (2, 3)]


@pytest.fixture(scope="session")
def lm16() -> LoadedLM:
    return load_causal_lm(dtype="bfloat16")


@pytest.mark.lm
def test_bf16_keeps_the_residual_stream_fp32_and_stays_close_to_fp32(lm, lm16, rows40):
    import torch
    from scipy.stats import spearmanr

    model = lm16.model
    assert lm.compute is None and "fp32" in lm16.compute
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert model.get_input_embeddings().weight.dtype == torch.float32  # tied weights split
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "norm" in n)
    assert ifd.lm_params(lm16)["compute"] == lm16.compute and "compute" not in ifd.lm_params(lm)
    exact = ifd.ifd_scores(lm, *_columns(rows40), max_length=MAX_LEN)["ifd"].to_numpy()
    fast = ifd.ifd_scores(lm16, *_columns(rows40), max_length=MAX_LEN)["ifd"].to_numpy()
    rel = np.abs(fast - exact) / np.abs(exact)
    assert rel.max() > 1e-5, "the bf16 model computed in fp32"
    assert np.median(rel) <= 0.005 and rel.max() < 0.05
    assert spearmanr(fast, exact)[0] >= 0.999
    # the model's own forward (the reference loop, a local rater's generate) runs in bf16 too
    r = rows40[0]
    want = ref.ifd_one(model, lm16.tokenizer, r["instruction"], r["input"], r["output"],
                       "none", MAX_LEN)
    assert math.isclose(want["ifd"], fast[0], rel_tol=1e-2)
    ids = lm16.tokenizer("Hello", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=2, do_sample=False).shape[1] >= 2
