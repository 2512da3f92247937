"""Faults lose nothing: kill -9 mid-step then resume, damaged cache files, exports on a full
disk. Real Alpaca rows, the real embedding model, a fake rater server on 127.0.0.1; the
uninterrupted reference runs through the same CLI in another process, so results must be
bitwise identical."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import atomic, export
from core.errors import InputError
from core.io import import_to_workspace
from core.workspace import DamagedFileWarning, Step, Workspace
from loopback import LoopbackServer, QuietHandler, chat_completion, read_json, send_json

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
SEED = 20261123  # picks the chunk each kill lands after


def _workspace(tmp_path: Path, data_dir: Path, name: str, rows: int) -> Workspace:
    ws, _ = import_to_workspace(data_dir / "alpaca_random_9k.jsonl.gz", tmp_path / name,
                                limit=rows)
    return ws


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "core", *args]


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _kill_after_chunks(cmd: list[str], parts: Path, final: Path, chunks: int,
                       is_complete) -> int:
    """Start ``cmd``, SIGKILL it once ``chunks`` chunk files exist; meanwhile the final file
    must never be visible half-written. Returns the number of chunks on disk at the kill."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            assert not final.exists() or is_complete(final)
            if len(list(parts.glob("*/chunk-*.parquet"))) >= chunks:
                break
            time.sleep(0.01)
        assert proc.poll() is None, ("the run ended before it could be killed: " +
                                     proc.stderr.read().decode()[-2000:])
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists()
    return len(list(parts.glob("*/chunk-*.parquet")))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: ")
            and "was damaged" in line]


# ----- kill -9 during embedding ----------------------------------------------------------------
EMBED_ROWS, EMBED_CHUNK = 60, 5


@pytest.mark.slow  # embeds 60 rows in killed and whole subprocesses (~30 s)
def test_embed_killed_at_a_random_chunk_resumes_to_identical_vectors(tmp_path, data_dir):
    """Killed, then a damaged chunk, then resumed; then the final file truncated, which makes
    the next run embed every row again in one uninterrupted pass: the reference."""
    ws = _workspace(tmp_path, data_dir, "ws", EMBED_ROWS)
    cmd = _cli("embed", "--workspace", str(ws.root), "--text", "instruction", "--chunk-size",
               str(EMBED_CHUNK), "--batch-size", "5")
    final, parts = ws.path("embeddings.npy"), ws.path("embeddings.npy.parts")
    n_chunks = EMBED_ROWS // EMBED_CHUNK
    at = random.Random(SEED).randint(2, n_chunks - 4)

    def complete(path: Path) -> bool:
        return np.load(path, allow_pickle=False).shape == (EMBED_ROWS, 384)

    on_disk = _kill_after_chunks(cmd, parts, final, at, complete)
    assert at <= on_disk < n_chunks
    # a chunk damaged while the run was dead: detected, deleted, its rows embedded again
    _truncate(sorted(parts.glob("*/chunk-000000.parquet"))[0])
    resumed = _run(cmd)
    [note] = _damage_warnings(resumed.stderr)
    assert "chunk-000000.parquet was damaged" in note and "recomputing" in note
    assert not parts.exists()
    after_resume = np.load(final, allow_pickle=False)
    key = ws.meta("embeddings.npy")["key"]

    # the final file truncated (a bad copy, a full disk elsewhere): recomputed, person told
    _truncate(final)
    with pytest.raises(InputError, match=r"embeddings.npy is damaged .*rerun `python -m core "
                                         r"embed"):
        ws.embeddings()
    again = _run(cmd)
    [note] = _damage_warnings(again.stderr)
    assert note.startswith("warning: embeddings.npy was damaged")
    uninterrupted = np.load(final, allow_pickle=False)
    assert uninterrupted.shape == (EMBED_ROWS, 384) and np.isfinite(uninterrupted).all()
    assert np.array_equal(after_resume, uninterrupted)
    assert ws.meta("embeddings.npy")["key"] == key


# ----- kill -9 during DS2 rating ---------------------------------------------------------------
class FakeRater(LoopbackServer):
    """An OpenAI-compatible /v1/chat/completions that rates deterministically from the text
    it is asked about (so two servers agree), a little slowly, counting requests."""

    def __init__(self, delay: float = 0.02):
        self.asked: dict[str, int] = {}
        lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                text = read_json(self)["messages"][-1]["content"]
                with lock:
                    server.asked[text] = server.asked.get(text, 0) + 1
                time.sleep(delay)
                h = hashlib.sha256(text.encode()).digest()
                answer = json.dumps({"Rarity": 1 + h[0] % 10, "Complexity": 1 + h[1] % 10,
                                     "Informativeness": 1 + h[2] % 10,
                                     "Overall rating": 1 + h[3] % 10})
                if h[4] % 17 == 0:  # now and then an answer DS2 cannot read
                    answer = "I would rather not say."
                send_json(self, 200, chat_completion(answer))

        super().__init__(Handler)


RATE_ROWS, RATE_CHUNK, CONCURRENCY = 200, 10, 2


def _rate_cmd(ws: Workspace, api: FakeRater) -> list[str]:
    return _cli("rate", "--workspace", str(ws.root), "--backend", "openai", "--name", "fake",
                "--base-url", api.base_url, "--model", "fake-model", "--api-key-env", "",
                "--concurrency", str(CONCURRENCY), "--chunk-size", str(RATE_CHUNK),
                "--max-retries", "0")


@pytest.mark.slow  # two 200-row ratings through subprocesses (~10 s)
def test_rate_killed_at_a_random_chunk_resumes_to_identical_ratings(tmp_path, data_dir):
    killed = _workspace(tmp_path, data_dir, "killed", RATE_ROWS)
    whole = _workspace(tmp_path, data_dir, "whole", RATE_ROWS)
    final = killed.path("scores", "rating_fake.parquet")

    def complete(path: Path) -> bool:
        return len(pd.read_parquet(path)) == RATE_ROWS

    with FakeRater() as api, FakeRater() as reference_api:
        reference = subprocess.Popen(_rate_cmd(whole, reference_api), cwd=ROOT, env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        at = random.Random(SEED + 1).randint(2, RATE_ROWS // RATE_CHUNK - 5)
        _kill_after_chunks(_rate_cmd(killed, api), killed.path("scores",
                           "rating_fake.parquet.parts"), final, at, complete)
        asked_before = sum(api.asked.values())
        assert at * RATE_CHUNK <= asked_before < RATE_ROWS
        _run(_rate_cmd(killed, api))
        # answers paid for before the kill were cached: only requests in flight at the kill
        # (at most a chunk's worth) are asked twice
        _, err = reference.communicate(timeout=240)
        assert reference.returncode == 0 and "Traceback" not in err, err
        assert set(api.asked) == set(reference_api.asked)
        assert 0 <= sum(api.asked.values()) - sum(reference_api.asked.values()) <= RATE_CHUNK
        expected = whole.read_score("rating_fake")
        got = killed.read_score("rating_fake")
        assert len(expected) == RATE_ROWS and expected["parse_error"].notna().any()
        assert got.equals(expected)
        assert not killed.path("scores", "rating_fake.parquet.parts").exists()

        # the final file truncated: rebuilt from the response cache, without a request
        _truncate(final)
        asked = sum(api.asked.values())
        again = _run(_rate_cmd(killed, api))
        [note] = _damage_warnings(again.stderr)
        assert note.startswith("warning: scores/rating_fake.parquet was damaged")
        assert sum(api.asked.values()) == asked
        assert killed.read_score("rating_fake").equals(expected)


# ----- damaged cache files, in process ---------------------------------------------------------
def _tiny(tmp_path: Path, n: int = 30) -> Workspace:
    frame = pd.DataFrame({"sample_id": np.arange(n), "source_row": np.arange(n),
                          "instruction": [f"q{i}" for i in range(n)], "input": [""] * n,
                          "output": [f"a{i}" for i in range(n)],
                          "record": [json.dumps({"instruction": f"q{i}", "output": f"a{i}"})
                                     for i in range(n)],
                          "duplicate_of": pd.array([None] * n, dtype="Int64")})
    return Workspace.create(tmp_path / "ws", frame, source={"path": "synthetic"})


def _square(calls: list):
    def compute(ids: np.ndarray, progress=None) -> pd.DataFrame:
        calls.extend(ids.tolist())
        return pd.DataFrame({"sample_id": ids, "sq": ids.astype(float) ** 2})
    return compute


def test_damaged_score_and_chunk_are_recomputed_with_a_warning(tmp_path):
    ws = _tiny(tmp_path)
    calls: list = []
    name = "scores/sq.parquet"
    first = ws.run_chunked(Step(name, {"p": 1}), range(30), _square(calls),
                           chunk_size=10).value
    _truncate(ws.path(name))
    with pytest.raises(InputError, match=r"scores/sq.parquet is damaged"):
        ws.read_score("sq")
    notes = []
    with pytest.warns(DamagedFileWarning, match=r"scores/sq.parquet was damaged"):
        res = ws.run_chunked(Step(name, {"p": 1}), range(30), _square(calls), chunk_size=10,
                             progress=lambda d, t, note="": notes.append(note))
    assert not res.cached and res.value.equals(first) and calls == list(range(30)) * 2
    assert notes[0] == "recomputing 1 damaged file(s)"
    # a damaged chunk among good ones: only its rows are recomputed, names never reused
    parts = ws.path(name + ".parts")
    with pytest.raises(RuntimeError):
        ws.run_chunked(Step(name, {"p": 2}), range(30), _fail_after(20, []), chunk_size=10)
    chunk_files = sorted(parts.glob("*/chunk-*.parquet"))
    assert [p.name for p in chunk_files] == ["chunk-000000.parquet", "chunk-000001.parquet"]
    _truncate(chunk_files[0])
    calls.clear()
    with pytest.warns(DamagedFileWarning, match=r"chunk-000000.parquet was damaged"):
        res = ws.run_chunked(Step(name, {"p": 2}), range(30), _square(calls), chunk_size=10)
    assert sorted(calls) == list(range(10)) + list(range(20, 30))
    assert res.value.equals(first)


def _fail_after(n: int, calls: list):
    square = _square(calls)

    def compute(ids: np.ndarray, progress=None) -> pd.DataFrame:
        if len(calls) >= n:
            raise RuntimeError("stop")
        return square(ids)
    return compute


def test_damaged_whole_step_result_and_sidecar_are_recomputed(tmp_path):
    ws = _tiny(tmp_path)
    runs = []

    def compute():
        runs.append(1)
        return pd.DataFrame({"sample_id": [0, 1], "v": [1.0, 2.0]})

    step = Step("scores/w.parquet", {"k": 1})
    ws.run_whole(step, compute)
    _truncate(ws.path("scores/w.parquet"))
    with pytest.warns(DamagedFileWarning, match=r"scores/w.parquet was damaged"):
        res = ws.run_whole(step, compute)
    assert not res.cached and len(runs) == 2 and res.value["v"].tolist() == [1.0, 2.0]
    _truncate(ws.path("scores/w.json"))
    with pytest.warns(DamagedFileWarning, match=r"scores/w.json was damaged"):
        res = ws.run_whole(step, compute)
    assert not res.cached and len(runs) == 3 and ws.score_meta("w")["params"] == {"k": 1}


def test_a_wrong_column_is_not_mistaken_for_damage(tmp_path):
    ws = _tiny(tmp_path)
    with pytest.raises(Exception) as err:
        ws.samples(["sample_id", "no_such_column"])
    assert not isinstance(err.value, InputError)
    assert ws.path("samples.parquet").exists()


def test_damaged_samples_cannot_be_recomputed_and_say_so(tmp_path):
    ws = _tiny(tmp_path)
    _truncate(ws.path("samples.parquet"))
    with pytest.raises(InputError, match=r"samples.parquet is damaged .*re-import the source"):
        ws.samples()
    assert ws.path("samples.parquet").exists()  # never deleted: nothing can rebuild it
    done = subprocess.run(_cli("export", "--workspace", str(ws.root), "--all", "--out",
                               str(tmp_path / "out.jsonl")), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "samples.parquet is damaged" in line


# ----- export: no silent overwrite, a full disk keeps the previous export --------------------
def test_export_refuses_to_overwrite_without_force(tmp_path):
    ws = _tiny(tmp_path)
    out = tmp_path / "subset.jsonl"
    export.export_jsonl(ws, [0, 1], out)
    before = (out.read_bytes(), export.manifest_path(out).read_bytes())
    with pytest.raises(InputError, match=r"subset.jsonl: already exists; .*--force"):
        export.export_jsonl(ws, [2, 3], out)
    assert (out.read_bytes(), export.manifest_path(out).read_bytes()) == before
    export.manifest_path(out).rename(tmp_path / "kept.json")
    out.unlink()
    (tmp_path / "kept.json").rename(export.manifest_path(out))
    with pytest.raises(InputError, match=r"subset.manifest.json: already exists"):
        export.export_jsonl(ws, [2, 3], out)  # a stray manifest is not overwritten either
    manifest = export.export_jsonl(ws, [2, 3], out, force=True)
    assert manifest["rows"] == 2 and len(out.read_text().splitlines()) == 2

    cmd = _cli("export", "--workspace", str(ws.root), "--all", "--out", str(out))
    refused = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == f"error: {out}: already exists; choose another name or " \
                                     "pass --force to replace it"
    assert len(out.read_text().splitlines()) == 2
    forced = subprocess.run(cmd + ["--force"], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert forced.returncode == 0, forced.stderr
    assert len(out.read_text().splitlines()) == 30


class _FullDisk:
    """A text file whose writes fail with ENOSPC once ``budget`` characters are written."""

    def __init__(self, fh, budget: int):
        self.fh, self.budget = fh, budget

    def write(self, text: str) -> int:
        if self.budget < len(text):
            self.fh.write(text[: self.budget])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(text)
        return self.fh.write(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.mark.parametrize("fail_in", ["output", "manifest"])
def test_full_disk_keeps_the_previous_export_and_leaves_no_temp(tmp_path, monkeypatch, fail_in):
    ws = _tiny(tmp_path)
    out_dir = tmp_path / "exports"
    out = out_dir / "subset.jsonl"
    export.export_jsonl(ws, range(10), out)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    if fail_in == "output":  # the disk fills a few lines into the JSONL
        monkeypatch.setattr(export, "open", lambda *a, **k: _FullDisk(open(*a, **k), 100),
                            raising=False)
    else:  # the JSONL fits, the manifest does not
        def write_bytes(path, data, **kwargs):
            with atomic.atomic_path(path) as tmp:
                tmp.write_bytes(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(atomic, "write_bytes", write_bytes)
    with pytest.raises(OSError) as err:
        export.export_jsonl(ws, range(30), out, force=True)
    assert err.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before  # no temp either
