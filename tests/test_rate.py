"""LLM ratings (core/raters/): prompt, answer parsing, the OpenAI-compatible backend against a
fake server on 127.0.0.1, the response cache and resuming, and the CLI (the local backend on
real rows: test_rate_local.py)."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from core.errors import Cancelled, InputError
from core.raters.backends import OpenAIRater, public_url, retry_after_seconds
from core.raters.cache import ResponseCache
from core.raters.prompt import explain_rating, parse_rating, prompt_sha256, rating_prompt
from core.raters.run import (UNPARSEABLE, check_rater_name, rater_names, rating_path,
                             ratings_for_curation, responses_path, run_rate)
from core.workspace import Workspace
from loopback import LoopbackServer, QuietHandler, chat_completion, read_json, send_json

KEY_ENV = "CHERRYPICK_TEST_RATER_KEY"
SECRET = "sk-test-3f9c1e7d-never-on-disk"
NAN = float("nan")


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """All traffic goes straight to 127.0.0.1."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv(KEY_ENV, SECRET)


# ----- prompt --------------------------------------------------------------------------------
def test_prompt_asks_for_the_ds2_fields_and_shows_the_sample():
    messages = rating_prompt("Name a prime.", "between 10 and 20", "13 is prime.")
    assert [m["role"] for m in messages] == ["system", "user"]
    text = "\n".join(m["content"] for m in messages)
    for key in ("Rarity", "Complexity", "Informativeness", "Overall rating"):
        assert f'"{key}"' in messages[1]["content"]
    assert "1 to 10" in messages[0]["content"]
    assert "### user: Name a prime.\n\nbetween 10 and 20\n### assistant: 13 is prime." in text
    for missing in ("", None, float("nan"), pd.NA):
        no_input = rating_prompt("Say hi.", missing, "Hi!")[1]["content"]
        assert "### user: Say hi.\n### assistant: Hi!" in no_input


def test_prompt_text_with_braces_is_kept_verbatim():
    messages = rating_prompt("Fill {x} in {{y}}", "", "{}")
    assert "### user: Fill {x} in {{y}}\n### assistant: {}" in messages[1]["content"]


# ----- parsing -------------------------------------------------------------------------------
PARSED = [
    # (answer, rarity, complexity, informativeness, overall)
    ('{"Rarity": 5, "Complexity": 6, "Informativeness": 7, "Overall rating": 8}', 5, 6, 7, 8),
    ('```json\n{"Rarity": 2, "Complexity": 3, "Informativeness": 4, "Overall rating": 5}\n```',
     2, 3, 4, 5),
    ('Here you go:\n```\n{"Rarity": 9, "Complexity": 9, "Informativeness": 9, '
     '"Overall rating": 10}\n```\nLet me know if you need more.', 9, 9, 9, 10),
    ("{'Rarity': 4, 'Complexity': 5, 'Informativeness': 6, 'Overall rating': 7}", 4, 5, 6, 7),
    ('{"Rarity": "3", "Complexity": "4", "Informativeness": "5", "Overall rating": "6"}',
     3, 4, 5, 6),
    ('{"Rarity": 3, "Complexity": 4, "Informativeness": 5, "Overall rating": "6/10"}',
     3, 4, 5, 6),
    ('{"Rarity": "3 out of 10", "Complexity": 4, "Informativeness": 5, '
     '"Overall rating": "7 out of 10"}', 3, 4, 5, 7),
    ('{"rarity": 1, "complexity": 2, "informativeness": 3, "overall_rating": 4}', 1, 2, 3, 4),
    ('{"Rarity": 5, "Complexity": 6, "Informativeness": 7, "Overall": 8}', 5, 6, 7, 8),
    # trailing comma (not JSON), last object wins (as in DS2)
    ('{"Rarity": 5, "Complexity": 6, "Informativeness": 7, "Overall rating": 8,}', 5, 6, 7, 8),
    ('Example: {"Rarity": 1, "Overall rating": 1}. My rating: {"Rarity": 6, '
     '"Complexity": 6, "Informativeness": 6, "Overall rating": 7}', 6, 6, 6, 7),
    # a later object without an overall rating does not hide the one before it
    ('{"Rarity": 2, "Complexity": 2, "Informativeness": 2, "Overall rating": 3} {"note": 1}',
     2, 2, 2, 3),
    # nested, unquoted keys, fractional, missing criteria are NaN
    ('{"scores": {"Rarity": 4, "Overall rating": 6}}', 4, NAN, NAN, 6),
    ("{Rarity: 5, Complexity: 5, Informativeness: 5, Overall rating: 9}", 5, 5, 5, 9),
    ('{"Overall rating": 7.5}', NAN, NAN, NAN, 7.5),
    ('{"Rarity": 0, "Complexity": 11, "Informativeness": "n/a", "Overall rating": 4}',
     NAN, NAN, NAN, 4),
    # cut off by the token limit after the overall rating was finished
    ('{"Rarity": 5, "Overall rating": 8, "Comple', 5, NAN, NAN, 8),
    ("It's fine. {'Overall rating': '2'}", NAN, NAN, NAN, 2),
]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("answer,rarity,complexity,informativeness,overall", PARSED)
def test_parse_rating_reads_many_answer_shapes(answer, rarity, complexity, informativeness,
                                               overall):
    got = parse_rating(answer)
    assert got is not None, answer
    want = {"rarity": rarity, "complexity": complexity, "informativeness": informativeness,
            "overall": overall}
    assert set(got) == set(want)
    for name, value in want.items():
        assert _same(float(got[name]), float(value)), (answer, name, got[name])


UNPARSED = [
    ("", "empty"),
    (None, "empty"),
    ("I would rate this an 8 out of 10.", "no JSON"),
    ('{"Rarity": 5, "Complexity": 6, "Informativeness": 7}', "no overall"),
    ('{"Overall rating": "excellent"}', "not a number"),
    ('{"Overall rating": 12}', "outside 1-10"),
    ('{"Overall rating": 0}', "outside 1-10"),
    ('{"Overall rating": true}', "not a number"),
    # cut off inside the overall number: "1" may be the start of "10"
    ('{"Rarity": 5, "Complexity": 6, "Informativeness": 7, "Overall rating": 1', "cut off"),
]


@pytest.mark.parametrize("answer,reason", UNPARSED)
def test_unreadable_answers_are_none_with_a_reason(answer, reason):
    assert parse_rating(answer) is None
    parsed = explain_rating(answer)
    assert parsed.rating is None and reason in parsed.error


def test_helpers_for_urls_and_retry_after():
    assert public_url("https://user:pw@api.example.com:8443/v1/?key=abc") == \
        "https://api.example.com:8443/v1"
    assert retry_after_seconds(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "1500"})) == 1.5
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    seconds = retry_after_seconds(httpx.Headers({"Retry-After": format_datetime(when)}))
    assert 25 <= seconds <= 31
    assert retry_after_seconds(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after_seconds(httpx.Headers({})) is None


def test_rater_names_are_checked():
    for bad in ("", "a.b", "a/b", "../x", "x" * 65):
        with pytest.raises(InputError):
            check_rater_name(bad)
    assert check_rater_name("gpt4o-mini_2") == "gpt4o-mini_2"


def test_response_cache_survives_a_cut_last_line(tmp_path):
    path = tmp_path / "responses.jsonl"
    cache = ResponseCache(path)
    cache.add({"request_hash": "a", "content": "x"})
    with open(path, "ab") as fh:  # a kill in the middle of a write, inside a character
        fh.write('{"request_hash": "b", "content": "caf\u00e9'.encode("utf-8")[:-1])
    again = ResponseCache(path)
    assert set(again.entries) == {"a"} and again.skipped_lines == 1
    again.add({"request_hash": "c", "content": "z"})
    third = ResponseCache(path)
    assert set(third.entries) == {"a", "c"} and third.skipped_lines == 1


# ----- a fake OpenAI-compatible server -------------------------------------------------------
TASK = re.compile(r"task-(\d+) mode=(\w+) overall=(\d+)")
SLOW_SECONDS = 4.0
CLIENT_TIMEOUT = 2.0  # generous: the in-process server shares a busy CPU


class FakeAPI(LoopbackServer):
    """Answers /v1/chat/completions; each sample's instruction says how (``mode``)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()      # requests per task id
        self.times: dict[int, list[float]] = {}
        self.auth: set[str] = set()
        self.bodies: list[dict] = []
        api = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = read_json(self)
                with api.lock:
                    api.auth.add(self.headers.get("Authorization", ""))
                    api.bodies.append(body)
                if self.path != "/v1/chat/completions":
                    return send_json(self, 404, b'{"error": "not found"}')
                task, mode, overall = TASK.search(body["messages"][-1]["content"]).groups()
                task = int(task)
                with api.lock:
                    api.counts[task] += 1
                    n = api.counts[task]
                    api.times.setdefault(task, []).append(time.monotonic())
                api.answer(self, mode, n, int(overall))

        super().__init__(Handler)

    def answer(self, handler, mode: str, n: int, overall: int) -> None:
        good = chat_completion(json.dumps({"Rarity": 3, "Complexity": 4, "Informativeness": 5,
                                           "Overall rating": overall}))
        if mode == "ok":
            return send_json(handler, 200, good)
        if mode == "lag":  # slow enough that a cancel finds requests in flight
            time.sleep(0.1)
            return send_json(handler, 200, good)
        if mode == "fenced":
            return send_json(handler, 200, chat_completion(
                "Sure.\n```json\n{'Rarity': '3', 'Complexity': '4', 'Informativeness': '5', "
                f"'Overall rating': '{overall}'}}\n```\nDone."))
        if mode == "slowonce":
            if n == 1:
                time.sleep(SLOW_SECONDS)
            return send_json(handler, 200, good)
        if mode == "ratelimitonce":
            if n == 1:
                return send_json(handler, 429, b'{"error": "slow down"}', {"Retry-After": "1"})
            return send_json(handler, 200, good)
        if mode == "error500once":
            return send_json(handler, 500 if n == 1 else 200,
                             b'{"error": "oops"}' if n == 1 else good)
        if mode == "garbageonce":
            return send_json(handler, 200, b'{"choices": [ not json' if n == 1 else good)
        if mode == "prose":
            return send_json(handler, 200, chat_completion("A fine sample; I'd give it eight."))
        if mode == "badrequest":  # echoes the credentials back, as a careless proxy might
            echo = handler.headers.get("Authorization", "")
            return send_json(handler, 400,
                             json.dumps({"error": f"bad request from {echo}"}).encode())
        if mode == "error500always":
            return send_json(handler, 503, b'{"error": "down"}')
        raise AssertionError(mode)


def _workspace(tmp_path: Path, modes: list[str], overalls: list[int]) -> Workspace:
    n = len(modes)
    instructions = [f"task-{i} mode={m} overall={o}" for i, (m, o) in
                    enumerate(zip(modes, overalls))]
    samples = pd.DataFrame({
        "sample_id": np.arange(n, dtype=np.int64), "source_row": np.arange(n, dtype=np.int64),
        "instruction": instructions, "input": ["" if i % 2 else "some input" for i in range(n)],
        "output": [f"answer {i}" for i in range(n)],
        "record": [json.dumps({"instruction": q}) for q in instructions],
        "duplicate_of": pd.array([None] * n, dtype="Int64")})
    return Workspace.create(tmp_path / "ws", samples, source={"path": "synthetic"})


MAX_RETRIES = 3


def _rater(api: FakeAPI, **kw) -> OpenAIRater:
    options = dict(api_key_env=KEY_ENV, concurrency=4, timeout=CLIENT_TIMEOUT,
                   max_retries=MAX_RETRIES, backoff=0.01, max_backoff=0.05)
    options.update(kw)
    return OpenAIRater(api.base_url, "fake-model", **options)


def _files_contain(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


MODES = ["ok", "fenced", "slowonce", "ratelimitonce", "error500once", "garbageonce", "prose",
         "badrequest", "error500always", "ok"]
OVERALLS = [7, 4, 9, 2, 10, 5, 6, 3, 8, 1]


@pytest.mark.slow  # waits out Retry-After and timeouts (~3 s)
def test_openai_backend_retries_parses_records_errors_and_caches(tmp_path):
    ws = _workspace(tmp_path, MODES, OVERALLS)
    with FakeAPI() as api:
        result = run_rate(ws, _rater(api), "fake", chunk_size=4)
        frame = result.value.set_index("sample_id")
        counts_first = dict(api.counts)

        # requests per row: retried where the server failed transiently, once otherwise
        expected_requests = {"ok": 1, "fenced": 1, "slowonce": 2, "ratelimitonce": 2,
                             "error500once": 2, "garbageonce": 2, "prose": 1, "badrequest": 1,
                             "error500always": MAX_RETRIES + 1}
        for i, mode in enumerate(MODES):
            assert counts_first[i] == expected_requests[mode], mode
        gap = api.times[3][1] - api.times[3][0]  # Retry-After: 1 was honoured
        assert gap >= 0.9, gap
        assert api.auth == {f"Bearer {SECRET}"}
        assert {b["temperature"] for b in api.bodies} == {0.0}
        assert {b["model"] for b in api.bodies} == {"fake-model"}

        # ratings as the server gave them; unreadable and failed rows marked, not invented
        answered = [i for i, m in enumerate(MODES) if m not in ("prose", "badrequest",
                                                              "error500always")]
        for i in answered:
            assert frame.loc[i, "overall"] == OVERALLS[i]
            assert (frame.loc[i, "rarity"], frame.loc[i, "complexity"],
                    frame.loc[i, "informativeness"]) == (3, 4, 5)
            assert pd.isna(frame.loc[i, "parse_error"]) and pd.isna(frame.loc[i, "request_error"])
        prose, bad, down = MODES.index("prose"), MODES.index("badrequest"), \
            MODES.index("error500always")
        assert np.isnan(frame.loc[prose, "overall"]) and "no JSON" in frame.loc[prose,
                                                                                "parse_error"]
        assert pd.isna(frame.loc[prose, "request_error"])
        assert frame.loc[bad, "request_error"].startswith("HTTP 400")
        assert "503" in frame.loc[down, "request_error"] and \
            f"{MAX_RETRIES + 1} attempts" in frame.loc[down, "request_error"]
        for i in (bad, down):
            assert np.isnan(frame.loc[i, "overall"]) and pd.isna(frame.loc[i, "parse_error"])

        # the files: the rating column, its sidecar, the raw answers
        assert rating_path(ws, "fake").exists()
        meta = ws.score_meta("rating_fake")
        assert meta["counts"] == {"rows": 10, "parsed": 7, "unparsed": 1, "request_errors": 2}
        assert meta["backend"]["base_url"] == api.base_url
        assert meta["backend"]["api_key_env"] == KEY_ENV
        assert meta["prompt_sha256"] == prompt_sha256()
        lines = responses_path(ws, "fake").read_text().splitlines()
        assert len(lines) == 8  # successful answers only (the prose one included)
        assert len({json.loads(x)["request_hash"] for x in lines}) == 8
        assert rater_names(ws) == ["fake"]

        # rerun: only the failed requests go out again
        run_rate(ws, _rater(api), "fake", chunk_size=4)
        new = {i: api.counts[i] - counts_first[i] for i in range(10)}
        assert new == {i: (1 if i == bad else MAX_RETRIES + 1 if i == down else 0)
                       for i in range(10)}

        # with retry_errors=False a rerun sends nothing; a forced rebuild answers every row
        # from the cache except the two failures (failed requests are never cached)
        before = dict(api.counts)
        run_rate(ws, _rater(api), "fake", chunk_size=4, retry_errors=False)
        assert dict(api.counts) == before
        again = run_rate(ws, _rater(api), "fake", chunk_size=3, force=True,
                              retry_errors=False)
        new = {i: api.counts[i] - before[i] for i in range(10)}
        assert new == {i: (1 if i == bad else MAX_RETRIES + 1 if i == down else 0)
                       for i in range(10)}
        assert again.meta["last_run"]["requests"] == 2
        assert again.meta["last_run"]["cached"] == 10 - 2
        pd.testing.assert_frame_equal(again.value.drop(columns="request_error"),
                                      result.value.drop(columns="request_error"))

    # the key travelled in the header only: no file in the workspace holds it
    assert _files_contain(ws.root, SECRET) == []
    assert _files_contain(ws.root, "never-on-disk") == []


def test_ratings_for_curation_mark_unparseable_and_missing(tmp_path):
    from core.scores.ratings import to_classes

    modes = ["ok", "prose", "badrequest", "ok", "ok", "ok"]
    overalls = [3, 5, 7, 9, 6, 10]
    ws = _workspace(tmp_path, modes, overalls)
    with FakeAPI() as api:
        run_rate(ws, _rater(api), "fake", sample_ids=[0, 1, 2, 3, 4])  # 5 is not rated
    values = ratings_for_curation(ws, "fake")
    assert values.index.tolist() == [0, 1, 2, 3, 4, 5]
    assert values[0] == 3.0 and values[3] == 9.0 and values[4] == 6.0
    assert values[1] == UNPARSEABLE
    assert pd.isna(values[2]) and pd.isna(values[5])  # failed request, not rated: missing
    classes, record = to_classes(values, "ds2-10")
    # DS2: clip to [4, 9] minus 4; an unreadable answer is class 0; missing stays -1
    assert classes.tolist() == [0, 0, -1, 5, 2, -1]
    assert record["unparseable"] == 1
    with pytest.raises(InputError):
        ratings_for_curation(ws, "nobody")


def test_cancel_mid_run_then_resume_asks_each_row_once(tmp_path):
    n = 24
    ws = _workspace(tmp_path, ["lag"] * n, [(i % 10) + 1 for i in range(n)])
    seen = []

    def cancel_at_ten(done, total, note=""):
        seen.append(done)
        if done >= 10:
            raise Cancelled("stop")

    with FakeAPI() as api:
        with pytest.raises(Cancelled):
            run_rate(ws, _rater(api, concurrency=2), "fake", chunk_size=4,
                          progress=cancel_at_ten)
        asked_first = sum(api.counts.values())
        cached = ResponseCache(responses_path(ws, "fake"))
        assert 10 < asked_first < n  # requests were in flight when the cancel came ...
        assert len(cached.entries) == asked_first  # ... and their answers were kept
        assert not rating_path(ws, "fake").exists()

        progress = []
        result = run_rate(ws, _rater(api, concurrency=2), "fake", chunk_size=4,
                               progress=lambda d, t, note="": progress.append((d, t)))
        assert progress[0][0] >= 8 and progress[-1] == (n, n)  # resumed, then finished
        assert dict(api.counts) == {i: 1 for i in range(n)}  # no row asked twice
        assert result.value["overall"].tolist() == [float((i % 10) + 1) for i in range(n)]
        assert result.meta["last_run"]["cached"] + result.meta["last_run"]["requests"] \
            <= n - 8

        # and a plain rerun is free
        run_rate(ws, _rater(api), "fake")
        assert sum(api.counts.values()) == n


def test_subset_then_extend_and_unknown_ids(tmp_path):
    ws = _workspace(tmp_path, ["ok"] * 6, [1, 2, 3, 4, 5, 6])
    with FakeAPI() as api:
        first = run_rate(ws, _rater(api), "fake", sample_ids=[4, 1])
        assert first.value["sample_id"].tolist() == [1, 4]
        full = run_rate(ws, _rater(api), "fake")
        assert full.value["overall"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        assert dict(api.counts) == {i: 1 for i in range(6)}
        with pytest.raises(InputError):
            run_rate(ws, _rater(api), "fake", sample_ids=[99])


def test_rate_picks_its_samples_as_every_step_does(tmp_path, capsys):
    """``rate --sample/--limit`` uses the workspace's picker (``ws.pick_sample_ids``), the one
    the app and the other steps use."""
    from core.cli import main

    ws = _workspace(tmp_path, ["ok"] * 20, [5] * 20)
    assert ws.pick_sample_ids().tolist() == list(range(20))  # neither: every sample
    assert ws.pick_sample_ids(limit=4).tolist() == [0, 1, 2, 3]
    picked = ws.pick_sample_ids(sample=6, seed=3)
    assert len(set(picked.tolist())) == 6 and set(picked.tolist()) <= set(range(20))
    assert picked.tolist() == sorted(picked.tolist())
    assert ws.pick_sample_ids(sample=6, seed=3).tolist() == picked.tolist()
    others = [ws.pick_sample_ids(sample=6, seed=s).tolist() for s in range(4, 8)]
    assert any(o != picked.tolist() for o in others)
    assert len(ws.pick_sample_ids(sample=50)) == 20
    with pytest.raises(SystemExit) as refused:  # a bad argument: one line, exit status 2
        main(["rate", "--workspace", str(ws.root), "--backend", "openai", "--name", "x",
              "--model", "m", "--limit", "0"])
    assert refused.value.code == 2 and "at least 1" in capsys.readouterr().err
    with FakeAPI() as api:
        assert main(["rate", "--workspace", str(ws.root), "--backend", "openai", "--name",
                     "pick", "--base-url", api.base_url, "--model", "fake-model",
                     "--api-key-env", KEY_ENV, "--sample", "6", "--seed", "3"]) == 0
        assert sorted(api.counts) == picked.tolist()
    assert ws.read_score("rating_pick")["sample_id"].tolist() == picked.tolist()


def test_missing_key_and_bad_settings_are_input_errors(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(InputError, match=KEY_ENV):
        OpenAIRater("http://127.0.0.1:9/v1", "m", api_key_env=KEY_ENV)
    rater = OpenAIRater("http://127.0.0.1:9/v1", "m", api_key_env="")  # keyless server
    assert "Authorization" not in repr(rater)
    with pytest.raises(InputError):
        OpenAIRater("127.0.0.1:9", "m", api_key_env="")
    with pytest.raises(InputError):
        OpenAIRater("http://127.0.0.1:9/v1", "m", api_key_env="", concurrency=0)


def test_cli_rate_writes_the_rating_file(tmp_path, capsys):
    from core.cli import main

    ws = _workspace(tmp_path, ["ok"] * 5, [3, 4, 5, 6, 7])
    with FakeAPI() as api:
        code = main(["rate", "--workspace", str(ws.root), "--backend", "openai", "--name",
                     "cli", "--base-url", api.base_url, "--model", "fake-model",
                     "--api-key-env", KEY_ENV, "--concurrency", "2", "--limit", "3"])
        assert code == 0
        assert dict(api.counts) == {0: 1, 1: 1, 2: 1}
        out = capsys.readouterr().out
        assert "scores/rating_cli.parquet" in out and "parsed 3" in out
        assert ws.read_score("rating_cli")["overall"].tolist() == [3.0, 4.0, 5.0]

        code = main(["rate", "--workspace", str(ws.root), "--backend", "openai", "--name",
                     "cli", "--base-url", api.base_url, "--model", "fake-model",
                     "--api-key-env", "CHERRYPICK_UNSET_VARIABLE"])
        assert code == 2
        assert "CHERRYPICK_UNSET_VARIABLE" in capsys.readouterr().err
    assert _files_contain(ws.root, SECRET) == []
