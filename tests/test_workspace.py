"""Workspace contract: atomic writes, cache keys, chunked steps that resume and extend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from core import atomic
from core.errors import Cancelled, InputError
from core.workspace import JSON, Step, Workspace, frame_fingerprint


def small_samples(n: int) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": np.arange(n), "source_row": np.arange(n),
                         "instruction": [f"q{i}" for i in range(n)], "input": [""] * n,
                         "output": [f"a{i}" for i in range(n)],
                         "record": [json.dumps({"instruction": f"q{i}", "output": f"a{i}"})
                                    for i in range(n)]})


def test_atomic_write_killed_midway_keeps_previous_file(tmp_path):
    target = tmp_path / "data.bin"
    atomic.write_bytes(target, b"old contents")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from core.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"new half-written " * 1000)
                fh.flush()
                print("writing", flush=True)
                time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert target.read_bytes() == b"old contents"


def test_atomic_write_error_leaves_no_temp(tmp_path):
    target = tmp_path / "x.json"
    atomic.write_json(target, {"a": 1})
    with pytest.raises(AttributeError):
        atomic.write_parquet(target, object())  # fails inside the write
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_create_open_and_manifest(tmp_path):
    samples = small_samples(5)
    ws = Workspace.create(tmp_path / "ws", samples, source={"path": "x", "format": "alpaca"})
    assert len(ws) == 5
    assert ws.samples_fingerprint() == frame_fingerprint(samples)
    assert Workspace.open(tmp_path / "ws").samples()["instruction"].tolist() == \
        samples["instruction"].tolist()
    with pytest.raises(InputError, match="already exists"):
        Workspace.create(tmp_path / "ws", samples, source={})
    with pytest.raises(InputError, match="not a workspace"):
        Workspace.open(tmp_path / "nothing")


def test_run_whole_caches_on_key(tmp_path):
    ws = Workspace.create(tmp_path / "ws", small_samples(3), source={})
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    def step(k):
        return Step("thing.json.out", {"k": k}, external={"samples": "abc"}, codec=JSON)

    first = ws.run_whole(step(1), compute)
    again = ws.run_whole(step(1), compute)
    other = ws.run_whole(step(2), compute)
    assert (first.cached, again.cached, other.cached) == (False, True, False)
    assert len(calls) == 2 and other.value == {"value": 2}


def square(ids: np.ndarray, progress=None) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": ids, "sq": ids.astype(float) ** 2})


def test_run_chunked_resumes_after_cancel_and_extends(tmp_path):
    ws = Workspace.create(tmp_path / "ws", small_samples(50), source={})
    seen = []

    def cancel_after_two_chunks(done, total, note=""):
        if done >= 20:
            raise Cancelled()

    def counting(ids, progress=None):
        seen.extend(ids.tolist())
        return square(ids)

    with pytest.raises(Cancelled):
        ws.run_chunked(Step("scores/sq.parquet", {"p": 1}), range(30), counting, chunk_size=10,
                       progress=cancel_after_two_chunks)
    assert not ws.path("scores/sq.parquet").exists()
    assert seen == list(range(20))
    sq = Step("scores/sq.parquet", {"p": 1})
    res = ws.run_chunked(sq, range(30), counting, chunk_size=10)
    assert seen == list(range(30))  # finished chunks were not redone
    assert res.value["sample_id"].tolist() == list(range(30))
    assert res.meta["rows"] == 30 and ws.score_meta("sq")["params"] == {"p": 1}
    assert not ws.path("scores/sq.parquet.parts").exists()
    # extending: only the new ids are computed, the result keeps the old ones
    res = ws.run_chunked(sq, range(50), counting, chunk_size=10)
    assert seen == list(range(50))
    assert res.value["sq"].tolist() == [float(i * i) for i in range(50)]
    # same request again: nothing to do
    assert ws.run_chunked(sq, range(50), counting).cached
    # a changed parameter starts afresh
    ws.run_chunked(Step("scores/sq.parquet", {"p": 2}), range(5), counting)
    assert seen[-5:] == list(range(5))
    assert ws.read_score("sq")["sample_id"].tolist() == list(range(5))


def test_run_chunked_rejects_wrong_row_count(tmp_path):
    ws = Workspace.create(tmp_path / "ws", small_samples(4), source={})
    with pytest.raises(RuntimeError, match="returned 1 rows for 4 ids"):
        ws.run_chunked(Step("scores/bad.parquet", {}), range(4),
                       lambda ids, progress: square(ids[:1]))
