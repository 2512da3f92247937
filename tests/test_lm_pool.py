"""The LM worker pool (core/lm/pool.py): single-thread worker processes, one per core.

Real Alpaca rows and the real SmolLM2 model in fp32. What must hold: scores from the pool
are the plain per-sample reference's (tests/lm_reference.py) and the same bits as one thread
in this process; a worker that cannot load or dies raises a clear error and leaves no
process behind; a killed parent takes its workers with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core.lm import load_causal_lm, plan_batches, sequence_losses
from core.lm import pool as lm_pool
from core.lm.losses import _torch_threads, batch_losses
from core.scores import ifd

import lm_reference as ref
from real_rows import first_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MAX_LEN = 96
pytestmark = pytest.mark.lm


@pytest.fixture(scope="module")
def lm():
    lm = load_causal_lm(dtype="float32", workers=2)
    yield lm
    if lm.pool is not None:
        lm.pool.close()


@pytest.fixture(scope="module")
def rows():
    return first_rows(DATA / "alpaca_random_9k.jsonl.gz", 16)


def _columns(rows):
    return ([r["instruction"] for r in rows], [r["input"] for r in rows],
            [r["output"] for r in rows])


@contextlib.contextmanager
def one_thread():
    """An LM without workers, used on one thread (the thread count restored after)."""
    with _torch_threads(1):
        yield load_causal_lm(dtype="float32", workers=1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purpose
        return f.read().split(")")[-1].split()[0] != "Z"


def test_pool_scores_are_the_reference_and_the_same_bits_as_one_thread_here(lm, rows):
    assert lm.workers == 2
    # budget 256: 16 rows make about 20 batches, so the pool starts and every worker works
    got = ifd.ifd_scores(lm, *_columns(rows), max_length=MAX_LEN, token_budget=256)
    assert lm.pool is not None and not lm.pool.closed
    pids = [p.pid for p, *_ in lm.pool._procs]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    for i, r in enumerate(rows):
        want = ref.ifd_one(lm.model, lm.tokenizer, r["instruction"], r["input"], r["output"],
                           "none", MAX_LEN)
        for col in ("loss_conditioned", "loss_direct", "ifd"):
            assert abs(got[col].iloc[i] - want[col]) <= 1e-4 * abs(want[col]), (i, col)
    with one_thread() as here:
        alone = ifd.ifd_scores(here, *_columns(rows), max_length=MAX_LEN, token_budget=256)
    for col in ("loss_conditioned", "loss_direct", "ifd"):
        assert np.array_equal(got[col].to_numpy(), alone[col].to_numpy(), equal_nan=True), col


def test_small_calls_run_here_on_one_thread_and_progress_reaches_the_total(lm, rows):
    import torch

    tok = lm.tokenizer
    ids = [ref.begin(tok, ref.ids_of(tok, r["instruction"] + r["output"])) for r in rows]
    seqs = [(s[:40], 5 + k) for k, s in enumerate(s for s in ids if len(s) >= 40)][:3]
    assert len(seqs) == 3  # equal lengths: the plan is one batch
    seen = []
    fresh = load_causal_lm(dtype="float32", workers=2)
    threads = torch.get_num_threads()
    got = sequence_losses(fresh, seqs, token_budget=4096,
                          progress=lambda d, t: seen.append((d, t)))
    assert fresh.pool is None, "one batch is not worth starting workers for"
    assert torch.get_num_threads() == threads, "the thread count is restored"
    assert seen[-1][0] == seen[-1][1] == sum(len(s) for s, _ in seqs)
    # the same batch (longest first, as planned) in a worker: the same bits
    assert plan_batches([40, 40, 40], 4096) == [(0, 3)]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    batch = [seqs[i] for i in order]
    pool = lm_pool.LossPool(lm.recipe(), 1)
    try:
        [(_, in_worker)] = list(pool.imap([batch]))
    finally:
        pool.close()
    assert np.array_equal(got[order], in_worker)
    with one_thread() as here:
        assert np.array_equal(got[order], batch_losses(here, batch))


def test_a_worker_that_loads_another_model_fails_loudly_and_leaves_nothing(lm):
    recipe = lm.recipe()
    recipe["expect"] = {**recipe["expect"], "identity": "some-other-model"}
    pool = lm_pool.LossPool(recipe, 2)
    pids = [p.pid for p, *_ in pool._procs]
    with pytest.raises(RuntimeError, match="another model than the one the scores are keyed"):
        list(pool.imap([[([1, 2, 3, 4], 2)]] * 4))
    assert pool.closed
    assert not any(_alive(p) for p in pids)


def test_a_killed_worker_raises_and_the_next_call_starts_new_workers(lm, rows):
    tok = lm.tokenizer
    seqs = [(ref.begin(tok, ref.ids_of(tok, r["instruction"] + r["output"]))[:MAX_LEN], 8)
            for r in rows]
    want = sequence_losses(lm, seqs, token_budget=1)
    old = lm.pool
    victim = old._procs[0][0]
    os.kill(victim.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"exit code -9 \(killed"):
        sequence_losses(lm, seqs, token_budget=1)
    assert old.closed and not any(_alive(p.pid) for p, *_ in old._procs)
    again = sequence_losses(lm, seqs, token_budget=1)
    assert lm.pool is not old and not lm.pool.closed
    assert np.array_equal(again, want)


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from core.lm import load_causal_lm
        from core.lm.pool import LossPool
        lm = load_causal_lm(dtype="float32", workers=1)
        pool = LossPool(lm.recipe(), 2)
        list(pool.imap([[([1, 2, 3, 4, 5], 2)]] * 4))   # both workers loaded and used
        print(*[p.pid for p, *_ in pool._procs], flush=True)
        time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def test_auto_workers_follow_threads_memory_and_the_override(lm, monkeypatch):
    import torch

    monkeypatch.delenv(lm_pool.WORKERS_ENV, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(lm_pool, "_mem_available", lambda: 64 << 30)
    assert lm_pool.auto_workers("cpu", lm.model) == 3
    assert lm_pool.auto_workers("cuda", lm.model) == 1
    monkeypatch.setattr(lm_pool, "_mem_available", lambda: 1 << 30)  # room for none
    assert lm_pool.auto_workers("cpu", lm.model) == 1
    monkeypatch.setenv(lm_pool.WORKERS_ENV, "1")
    assert lm_pool.auto_workers("cpu", lm.model) == 1


def test_dropping_the_lm_stops_its_workers(rows):
    import gc

    lm = load_causal_lm(dtype="float32", workers=2)
    tok = lm.tokenizer
    seqs = [(ref.begin(tok, ref.ids_of(tok, r["output"]))[:MAX_LEN], 4) for r in rows]
    sequence_losses(lm, seqs, token_budget=1)
    pids = [p.pid for p, *_ in lm.pool._procs]
    assert all(_alive(p) for p in pids)
    del lm
    gc.collect()
    assert not any(_alive(p) for p in pids), "a step's workers must not outlive its model"
