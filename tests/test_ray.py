"""The Ray Data executor (core/executors): same scores and embeddings as the local executor,
and a driver killed with SIGKILL mid-run resumes from the chunks its actors finished.

One local 2-CPU Ray cluster serves the whole file (started here, joined by the CLI through
``--ray-address``); real rows, the cached SmolLM2-135M and MiniLM.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from real_rows import first_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHERRYPICK_DATA", ROOT.parent / "shared" / "data"))
ROWS = 24
MAX_LEN = 64
CHUNK = 4

pytestmark = [pytest.mark.ray, pytest.mark.lm]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this file; yields its address for other drivers."""
    import ray

    from core.executors.ray_cluster import connect

    connect(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return first_rows(DATA / "alpaca_random_9k.jsonl.gz", ROWS)


def _workspace(root: Path, rows: list[dict]):
    from core.workspace import Workspace

    frame = pd.DataFrame({
        "sample_id": np.arange(len(rows), dtype=np.int64),
        "source_row": np.arange(len(rows), dtype=np.int64),
        "instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows],
        "output": [r["output"] for r in rows], "record": [json.dumps(r) for r in rows]})
    return Workspace.create(root, frame, source={"path": "test"})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kill_after_first_chunk(proc: subprocess.Popen, parts: Path, timeout: float) -> None:
    """SIGKILL ``proc`` as soon as a chunk file appears under ``parts`` (or at ``timeout``)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list(parts.glob("*/chunk-*.parquet")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)


def test_ifd_driver_killed_mid_run_resumes_on_ray_and_matches_local(tmp_path, rows, cluster):
    """A Ray run driven by the CLI is SIGKILLed after its first chunk; the rerun (Ray again)
    resumes from the chunks on disk and gives the local executor's file, byte for byte.
    The local run is computed while the CLI's driver and actor start (this machine is
    shared: overlapping them keeps the file under two minutes)."""
    from core.executors.ray_cluster import RayExecutor
    from core.lm import load_causal_lm
    from core.scores.ifd import run_ifd

    ws = _workspace(tmp_path / "ray", rows)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "core", "score", "ifd", "--workspace", str(ws.root),
           "--max-length", str(MAX_LEN), "--chunk-size", str(CHUNK), "--dtype", "float32",
           "--executor", "ray", "--ray-address", cluster]
    parts = ws.path("scores", "ifd.parquet.parts")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    killer = threading.Thread(target=_kill_after_first_chunk, args=(proc, parts, 150))
    killer.start()
    lm = load_causal_lm(dtype="float32")
    local = _workspace(tmp_path / "local", rows)
    expected = run_ifd(local, model=lm, max_length=MAX_LEN, chunk_size=CHUNK)["ifd"]
    killer.join()
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    finished = len(list(parts.glob("*/chunk-*.parquet")))
    assert 1 <= finished < ROWS // CHUNK and not ws.path("scores", "ifd.parquet").exists()

    reports = []
    result = run_ifd(ws, model=lm, max_length=MAX_LEN, chunk_size=CHUNK,
                     executor=RayExecutor(),
                     progress=lambda done, total, note="": reports.append((done, total, note)))
    result = result["ifd"]
    assert reports[0][0] >= CHUNK and reports[0][2] == "resuming"   # finished rows kept
    assert [d for d, _, _ in reports][-1] == ROWS
    assert result.meta["executor"] == "ray" and result.meta["rows"] == ROWS
    got, want = result.value, expected.value
    assert got["sample_id"].tolist() == list(range(ROWS))
    for col in ("loss_conditioned", "loss_direct", "ifd", "ifd_ppl"):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=0,
                                   atol=1e-6, equal_nan=True)
    assert got["missing_reason"].tolist() == want["missing_reason"].tolist()
    assert _sha(ws.path("scores", "ifd.parquet")) == _sha(local.path("scores", "ifd.parquet"))


def test_embeddings_on_ray_equal_local(tmp_path, rows, cluster):
    from core.embed import run_embed
    from core.executors.ray_cluster import RayExecutor

    local = _workspace(tmp_path / "local", rows)
    expected = run_embed(local, precision="fp32", chunk_size=8).value
    ws = _workspace(tmp_path / "ray", rows)
    result = run_embed(ws, precision="fp32", chunk_size=8, executor=RayExecutor())
    assert result.meta["executor"] == "ray" and result.meta["ray_actors"] == 1
    np.testing.assert_array_equal(result.value, expected)
    assert _sha(ws.path("embeddings.npy")) == _sha(local.path("embeddings.npy"))


def test_reflect_student_on_ray_equals_local(tmp_path, cluster, monkeypatch):
    """Selective Reflection-Tuning's student scores (four versions of each sample) computed
    by Ray actors are the local executor's file, byte for byte. The versions come from
    tests/test_reflect.py's fake teacher on 127.0.0.1, asked once; both workspaces score them."""
    import shutil

    from core.executors.ray_cluster import RayExecutor
    from core.reflect.student import run_student, student_score_name
    from core.reflect.teacher import run_teacher
    from core.workspace import Workspace
    from loopback import LoopbackServer
    from test_reflect import SYNTHETIC, make_handler, make_ws, teacher

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    reflect_rows = first_rows(DATA / "alpaca_random_9k.jsonl.gz", 3) + [SYNTHETIC[1]]
    local = make_ws(tmp_path, reflect_rows, "local")
    with LoopbackServer(make_handler()) as server:
        run_teacher(local, teacher(server), "fake")
    shutil.copytree(local.root, tmp_path / "ray")
    ws = Workspace.open(tmp_path / "ray")
    settings = dict(max_length=MAX_LEN, dtype="float32", chunk_size=2)
    expected = run_student(local, "fake", **settings)
    result = run_student(ws, "fake", executor=RayExecutor(), **settings)
    assert result.meta["executor"] == "ray" and not expected.meta.get("executor")
    assert result.value["ori_ifd_ppl"].notna().all() and len(result.value) == 4
    path = f"scores/{student_score_name('fake')}.parquet"
    assert _sha(ws.path(path)) == _sha(local.path(path))


def test_ray_flags_are_checked_before_any_work(tmp_path, rows, capsys):
    """``--ray-address`` without ``--executor ray`` is a one-line error, exit status 2."""
    from core.cli import main

    ws = _workspace(tmp_path / "ws", rows[:2])
    for command in (["score", "ifd"], ["embed"], ["score", "recost", "--reference", "x"],
                    ["reflect", "--teacher", "local"]):
        assert main([*command, "--workspace", str(ws.root), "--ray-address", "1.2.3.4:1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "--ray-address needs --executor ray" in err
        assert "\n" not in err


def test_actor_pool_follows_the_cluster(monkeypatch):
    """One actor per GPU with its share of the node's cores; without GPUs one actor per node
    with all of its cores; ``actors`` shares the cores out; never more actors than chunks."""
    import ray

    from core.executors.ray_cluster import RayExecutor

    def nodes(*resources):
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": r}
                                                   for r in resources])

    nodes({"CPU": 16, "GPU": 4}, {"CPU": 8, "GPU": 2}, {"CPU": 4})
    assert RayExecutor()._pool(100) == (6, 1.0, 4)
    assert RayExecutor()._pool(3) == (3, 1.0, 4)
    nodes({"CPU": 2}, {"CPU": 8})
    assert RayExecutor()._pool(100) == (5, 0.0, 2)
    assert RayExecutor(actors=2)._pool(100) == (2, 0.0, 2)
    nodes({"CPU": 8})
    assert RayExecutor(actors=4)._pool(100) == (4, 0.0, 2)


def test_gpu_token_budget_grows_with_free_memory():
    """The CUDA token budget is half the free memory over the model's bytes per token,
    a multiple of 256 within [256, 65536]: SmolLM2-135M's shapes, 92,160 bytes a token."""
    from types import SimpleNamespace

    from core.lm.losses import activation_bytes_per_token, cuda_token_budget

    config = SimpleNamespace(hidden_size=576, num_attention_heads=9, num_hidden_layers=30,
                             num_key_value_heads=3, head_dim=64, intermediate_size=1536)
    model = SimpleNamespace(config=config)
    assert activation_bytes_per_token(config, 512) == 4 * (2 * 30 * 3 * 64 + 4 * 576
                                                           + 3 * 1536 + 9 * 512)
    assert cuda_token_budget(model, 512, free_bytes=2 * 2**30) == 11_520
    assert cuda_token_budget(model, 512, free_bytes=80 * 2**30) == 65_536
    assert cuda_token_budget(model, 512, free_bytes=10 * 2**20) == 256


def test_a_ray_driver_loads_no_weights_but_keys_its_cache_the_same(monkeypatch):
    """With ``--executor ray`` the driver describes the LM without its weights (the actors
    load them): the same cache key and recipe as a loaded model, and no weights read."""
    from transformers import AutoModelForCausalLM

    from core.executors.shipping import lm_recipe
    from core.lm import load_causal_lm
    from core.scores.ifd import lm_params, load_scoring_lm

    for dtype in ("float32", "bfloat16"):
        loaded = load_causal_lm(dtype=dtype)
        described = load_causal_lm(dtype=dtype, weights=False)
        assert described.model is None and loaded.model is not None
        assert lm_params(described, max_length=MAX_LEN) == lm_params(loaded, max_length=MAX_LEN)
        assert lm_recipe(described) == lm_recipe(loaded)
        assert described.meta() == loaded.meta()

    def no_weights(*args, **kwargs):
        raise AssertionError("the driver of a Ray run loaded the model's weights")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    ray_like = type("RayLike", (), {"name": "ray"})()
    assert load_scoring_lm(None, "float32", ray_like).model is None
    with pytest.raises(AssertionError, match="loaded the model"):
        load_scoring_lm(None, "float32")  # the local executor does need them
