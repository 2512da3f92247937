"""Selective Reflection-Tuning (core/reflect/): the bracket parser, the prompts, the teacher step
against a fake OpenAI-compatible teacher on 127.0.0.1 (malformed answers, failed requests,
resuming), the selection rule against a plain rewrite of Reflection_Tuning's
get_select_data.py, the student's scores, the recycled export, and the local SmolLM2 as a
real (weak) teacher."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.errors import Cancelled
from core.io import import_to_workspace
from core.raters.backends import LocalRater, OpenAIRater
from core.reflect.parse import (EMPTY_ANSWER, NO_ANSWER, NO_INSTRUCTION, NO_MARKERS, OK,
                                parse_instruction_reflection, parse_response_reflection)
from core.reflect.prompts import (INSTRUCTION_SYSTEM, RESPONSE_SYSTEM, instruction_reflection,
                                  response_reflection)
from core.reflect.recycle import decide, decisions
from core.reflect.rule import choose_versions
from core.reflect.student import VERSIONS, student_score_name
from core.reflect.teacher import responses_path, run_teacher, versions_name
from core.workspace import Workspace
from loopback import LoopbackServer, QuietHandler, chat_completion, read_json, send_json
from real_rows import first_rows

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_random_9k.jsonl.gz"
NAN = float("nan")
REAL_ROWS = 6


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


# ----- a fake teacher -------------------------------------------------------------------------
def teacher_answer(messages: list[dict]) -> tuple[int, str]:
    """What the fake teacher says: bracket answers built from the sample, except for
    instructions that ask for trouble (MALFORMED: no markers; HALF: a new instruction without
    its answer; ECHO: the prompt's placeholder first, then the real answer; FAIL: HTTP 400)."""
    system, content = messages[0]["content"], messages[1]["content"]
    instruction = content.split("[Instruction]\n", 1)[1].split("\n\n[The Start of", 1)[0]
    answer = content.split("[The Start of Answer]\n", 1)[1].split("\n\n[The End of", 1)[0]
    if "FAIL" in instruction:
        return 400, "bad request"
    if system == INSTRUCTION_SYSTEM:
        if "MALFORMED" in instruction:
            return 200, "I would rather not follow any format today."
        if "HALF" in instruction:
            return 200, f"Analysis.\n[New Instruction] Rewrite: {instruction} [End]\n"
        return 200, ("1. The instruction is vague.\n2. [New Instruction] Explain in detail, "
                     f"with two examples: {instruction}[End]\n3. [New Answer] Here is a "
                     f"detailed answer. {answer} In short, that is the answer.[End]")
    if "MALFORMED" in instruction:
        return 200, "Better answer is not something I can give."
    if "ECHO" in instruction:
        return 200, ("I will use the format [Better Answer] your answer [End] as asked.\n"
                     f"[Better Answer] {answer} Endpoints and all. [End]")
    # restating the instruction makes it easier to guess from the answer (a lower r-IFD)
    return 200, (f"The answer is short.\n[Better Answer] To answer \"{instruction}\": {answer} "
                 "It also says why.[End]")


class TeacherHandler(QuietHandler):
    requests: list = []
    lock = threading.Lock()

    def do_POST(self):
        body = read_json(self)
        with self.lock:
            type(self).requests.append(body)
        status, text = teacher_answer(body["messages"])
        send_json(self, status, chat_completion(text) if status == 200
                  else json.dumps({"error": text}).encode())


def make_handler():
    return type("Handler", (TeacherHandler,), {"requests": [], "lock": threading.Lock()})


def teacher(server, **kw) -> OpenAIRater:
    return OpenAIRater(server.base_url, "fake-teacher", api_key_env=None, max_retries=0,
                       concurrency=4, **kw)


def make_ws(tmp_path: Path, rows: list[dict], name: str = "ws") -> Workspace:
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ws, _ = import_to_workspace([src], tmp_path / name)
    return ws


SYNTHETIC = [
    {"instruction": "Name a prime number.", "input": "", "output": "7 is prime."},
    {"instruction": "MALFORMED question about cats.", "input": "", "output": "Cats purr."},
    {"instruction": "HALF: what is water?", "input": "", "output": "H2O."},
    {"instruction": "ECHO: translate hello.", "input": "to French", "output": "Bonjour."},
    {"instruction": "FAIL this one.", "input": "", "output": "Nothing."},
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
]


# ----- parsing --------------------------------------------------------------------------------
def test_instruction_reflection_parses_brackets_colons_and_reports_what_is_missing():
    good = parse_instruction_reflection(
        "Analysis...\n2. [New Instruction] Write a poem.\n\n3.[End]\n[New Answer] Roses.[End]")
    assert (good.instruction, good.answer, good.status) == ("Write a poem.", "Roses.", OK)
    colon = parse_instruction_reflection("New Instruction: Count to 3.\nNew Answer: 1, 2, 3")
    assert (colon.instruction, colon.answer, colon.status) == ("Count to 3.", "1, 2, 3", OK)
    # an echo of the prompt's placeholder is skipped, the real segment is read
    echo = parse_instruction_reflection(
        "Format: [New Instruction] your instruction [End] [New Answer] your answer [End]\n"
        "[New Instruction] Real one. [End] [New Answer] Real answer. [End]")
    assert (echo.instruction, echo.answer) == ("Real one.", "Real answer.")
    assert parse_instruction_reflection("no format at all").status == NO_MARKERS
    assert parse_instruction_reflection(None).status == NO_MARKERS
    assert parse_instruction_reflection("[New Instruction] Q without end").status == \
        NO_INSTRUCTION
    assert parse_instruction_reflection("[New Instruction] Q [End]").status == NO_ANSWER
    assert parse_instruction_reflection("[New Instruction] Q [End] [New Answer] N/A [End]"
                                        ).status == NO_ANSWER
    # an answer cut off by the token limit runs to the end of the text
    cut = parse_instruction_reflection("[New Instruction] Q [End] [New Answer] long answer")
    assert (cut.answer, cut.status) == ("long answer", OK)


def test_response_reflection_keeps_the_last_real_answer_and_only_ends_at_the_marker():
    one = parse_response_reflection("Why: short.\n[Better Answer] Endpoints matter. [End]")
    assert (one.answer, one.status) == ("Endpoints matter.", OK)
    many = parse_response_reflection("[Better Answer] your answer [End] then "
                                     "[Better Answer] first [End] [Better Answer] second")
    assert many.answer == "second"
    assert parse_response_reflection("nothing here").status == NO_MARKERS
    assert parse_response_reflection("[Better Answer]  [End]").status == EMPTY_ANSWER
    assert parse_response_reflection("**Better Answer:** Plain.").answer == "Plain."


def test_prompts_ask_for_the_markers_and_show_the_input_only_when_there_is_one():
    ins = instruction_reflection("Sum these.", "1 2", "3")
    assert [m["role"] for m in ins] == ["system", "user"]
    assert ins[0]["content"] == INSTRUCTION_SYSTEM
    body = ins[1]["content"]
    for needle in ("[Instruction]\nSum these.", "[The Start of Input]\n1 2",
                   "[The Start of Answer]\n3", "[New Instruction]", "[New Answer]", "[End]",
                   "Complexity of the Topic", "Ambiguity", "Helpfulness"):
        assert needle in body
    res = response_reflection("Say hi.", "", "Hi")
    assert res[0]["content"] == RESPONSE_SYSTEM
    assert "[Better Answer]" in res[1]["content"]
    assert "Input" not in res[1]["content"]
    assert "and its input" in response_reflection("Say hi.", "politely", "Hi")[1]["content"]


# ----- the selection rule against a plain rewrite of get_select_data.py ------------------------
def reference_select(rows: list[dict]) -> tuple[list[str | None], list[int]]:
    """get_select_data.py's loop, rewritten plainly (own code; no import from core.reflect):
    per sample the emitted version ('QA' / 'A' / None) and the counter it increments (0 if
    none)."""
    emitted, counters = [], []
    for r in rows:
        out, counter = None, 0
        if r["Q_ifd"] > r["ori_ifd"]:
            if r["QA_rifd"] < r["Q_rifd"]:
                if r["QA_rifd"] < 1 and r["QA_ifd"] < 1:
                    out, counter = "QA", 1
            else:
                if r["Q_rifd"] < 1 and r["Q_ifd"] < 1:
                    counter = 2
        else:
            if r["A_rifd"] < r["ori_rifd"]:
                if r["A_rifd"] < 1 and r["A_ifd"] < 1:
                    out, counter = "A", 3
            else:
                if r["ori_rifd"] < 1 and r["ori_ifd"] < 1:
                    counter = 4
        emitted.append(out)
        counters.append(counter)
    return emitted, counters


def synthetic_scores(n: int = 4000, seed: int = 3) -> pd.DataFrame:
    """Ratios around 1 (both sides of every comparison), ties, and missing scores."""
    rng = np.random.default_rng(seed)
    frame = {"sample_id": np.arange(n, dtype=np.int64)}
    for v in VERSIONS:
        for f in ("ifd_ppl", "rifd_ppl"):
            values = rng.choice([0.6, 0.8, 0.9, 1.0, 1.1, 1.3], size=n) \
                + rng.normal(0, 0.05, size=n) * (rng.random(n) < 0.7)
            values[rng.random(n) < 0.06] = np.nan
            frame[f"{v}_{f}"] = values
    return pd.DataFrame(frame)


def test_rule_equals_a_plain_rewrite_of_get_select_data_on_every_branch():
    scores = synthetic_scores()
    names = {"ori": "ori", "q": "Q", "qa": "QA", "a": "A"}
    rows = [{f"{names[v]}_{f}": float(scores.at[k, f"{v}_{f}_ppl"])
             for v in VERSIONS for f in ("ifd", "rifd")} for k in range(len(scores))]
    emitted, counters = reference_select(rows)
    got = choose_versions(scores)
    assert got["case"].tolist() == counters
    assert [{"qa": "QA", "a": "A"}.get(c) if isinstance(c, str) else None
            for c in got["chosen"].tolist()] == emitted
    # every branch of the script, and each way to land in none of its counters, occurs
    assert set(counters) == {0, 1, 2, 3, 4}
    harder = np.array([r["Q_ifd"] > r["ori_ifd"] for r in rows])
    assert ((np.array(counters) == 0) & harder).any() and \
        ((np.array(counters) == 0) & ~harder).any()
    assert np.isnan(scores["q_ifd_ppl"]).any()  # missing scores go through the same rule
    # every verdict is one sentence naming its outcome
    for reason, chosen in zip(got["reason"], got["chosen"]):
        assert reason.count(". ") == 0 and reason.endswith(".")
        assert reason.startswith({"qa": "Keep QA*", "a": "Keep A*"}.get(chosen, "Keep nothing")
                                 if isinstance(chosen, str) else "Keep nothing")


def test_rule_reason_quotes_the_numbers_it_rests_on():
    row = {"sample_id": [0], "ori_ifd_ppl": [0.8], "ori_rifd_ppl": [0.9], "q_ifd_ppl": [0.95],
           "q_rifd_ppl": [0.7], "qa_ifd_ppl": [0.9], "qa_rifd_ppl": [0.5], "a_ifd_ppl": [NAN],
           "a_rifd_ppl": [NAN]}
    got = choose_versions(pd.DataFrame(row)).iloc[0]
    assert got["chosen"] == "qa" and got["case"] == 1
    assert "0.950 > the original's 0.800" in got["reason"] and "0.500 < Q*'s 0.700" in \
        got["reason"]


# ----- the teacher step against a fake teacher -------------------------------------------------
def test_teacher_stores_versions_raw_answers_and_a_status_per_question(tmp_path):
    ws = make_ws(tmp_path, SYNTHETIC)
    Handler = make_handler()
    with LoopbackServer(Handler) as server:
        result = run_teacher(ws, teacher(server), "fake")
    frame = result.value.set_index("sample_id")
    assert frame.loc[0, "q_status"] == OK and frame.loc[0, "a_status"] == OK
    assert frame.loc[0, "qa_status"] == OK
    assert frame.loc[0, "q_instruction"] == "Explain in detail, with two examples: Name a " \
                                            "prime number."
    assert frame.loc[0, "a_output"] == \
        'To answer "Name a prime number.": 7 is prime. It also says why.'

    # QA* = the better answer to the new instruction
    assert frame.loc[0, "qa_output"] == (
        'To answer "Explain in detail, with two examples: Name a prime number.": Here is a '
        'detailed answer. 7 is prime. In short, that is the answer. It also says why.')
    assert "[New Instruction]" in frame.loc[0, "q_raw"]  # raw text kept
    assert (frame.loc[1, "q_status"], frame.loc[1, "a_status"], frame.loc[1, "qa_status"]) == \
        (NO_MARKERS, NO_MARKERS, "no_q_version")
    assert frame.loc[1, "q_raw"] == "I would rather not follow any format today."
    assert pd.isna(frame.loc[1, "q_instruction"])
    assert frame.loc[2, "q_status"] == NO_ANSWER and frame.loc[2, "qa_status"] == \
        "no_q_version"
    assert frame.loc[3, "a_output"] == "Bonjour. Endpoints and all."
    assert frame.loc[4, "q_status"] == "request_error" and "HTTP 400" in frame.loc[4, "q_error"]
    # 6 samples x 2 questions + one QA* question per parsed Q* (rows 0, 3, 5)
    assert len(Handler.requests) == 12 + 3
    assert ws.meta(versions_name("fake"))["prompt_version"] == "reflect-v1"
    lines = responses_path(ws, "fake").read_text().splitlines()
    assert {json.loads(line)["question"] for line in lines} == {"q", "a", "qa"}


def test_teacher_resumes_after_a_cancel_without_asking_twice(tmp_path):
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."}
            for i in range(8)]
    ws = make_ws(tmp_path, rows)
    Handler = make_handler()
    def cancel_in_second_chunk(done, total, note=""):
        if done >= 4:
            raise Cancelled()

    with LoopbackServer(Handler) as server:
        with pytest.raises(Cancelled):
            run_teacher(ws, teacher(server), "t", progress=cancel_in_second_chunk,
                        chunk_size=4)
        asked_before = len(Handler.requests)
        assert 12 <= asked_before < 24  # the first chunk (4 x 3 questions) was asked
        result = run_teacher(ws, teacher(server), "t", chunk_size=4)
        asked = [json.dumps(r["messages"]) for r in Handler.requests]
    assert len(result.value) == 8 and (result.value["q_status"] == OK).all()
    assert len(asked) == len(set(asked)) == 24  # no question was asked twice
    again = make_ws(tmp_path, rows, "fresh")
    with LoopbackServer(make_handler()) as server:
        fresh = run_teacher(again, teacher(server), "t", chunk_size=4).value
    pd.testing.assert_frame_equal(result.value, fresh)


def test_a_larger_request_extends_the_versions_and_asks_only_for_new_rows(tmp_path):
    ws = make_ws(tmp_path, SYNTHETIC)
    Handler = make_handler()
    with LoopbackServer(Handler) as server:
        first = run_teacher(ws, teacher(server), "fake", sample_ids=[0, 5])
        assert first.value["sample_id"].tolist() == [0, 5] and len(Handler.requests) == 6
        assert run_teacher(ws, teacher(server), "fake", sample_ids=[0, 5]).cached
        more = run_teacher(ws, teacher(server), "fake", sample_ids=[0, 1, 5],
                           retry_errors=False)
    assert more.value["sample_id"].tolist() == [0, 1, 5]
    assert len(Handler.requests) == 6 + 2  # row 1: two questions, no Q* so no third


def test_failed_requests_are_asked_again_on_the_next_run(tmp_path):
    ws = make_ws(tmp_path, SYNTHETIC)

    class Healing(TeacherHandler):
        """Fails the FAIL row with HTTP 400 until ``healed``, then answers it."""
        requests: list = []
        healed = False

        def do_POST(self):
            body = read_json(self)
            type(self).requests.append(body)
            messages = json.loads(json.dumps(body["messages"]))
            if type(self).healed:
                for m in messages:
                    m["content"] = m["content"].replace("FAIL", "Fixed")
            status, text = teacher_answer(messages)
            send_json(self, status, chat_completion(text) if status == 200 else b"{}")

    with LoopbackServer(Healing) as server:
        first = run_teacher(ws, teacher(server), "fake").value
        assert (first["q_status"] == "request_error").sum() == 1
        assert (first["a_status"] == "request_error").sum() == 1
        asked = len(Healing.requests)
        Healing.healed = True
        second = run_teacher(ws, teacher(server), "fake").value.set_index("sample_id")
    assert second.loc[4, "q_status"] == OK and second.loc[4, "a_status"] == OK
    assert second.loc[4, "qa_status"] == OK
    # only the failed row's questions went out again (its two, then its new QA* question)
    assert len(Healing.requests) - asked == 3
    assert second.drop(index=4).equals(first.set_index("sample_id").drop(index=4))


def test_reflect_cli_bad_input_is_one_line(tmp_path, capsys):
    ws = make_ws(tmp_path, SYNTHETIC)
    assert main(["reflect", "--workspace", str(ws.root), "--teacher", "openai"]) == 2
    assert "--model is required with --teacher openai" in capsys.readouterr().err
    assert main(["reflect", "--workspace", str(ws.root), "--teacher", "local",
                 "--name", "../x"]) == 2
    assert main(["export", "--workspace", str(ws.root), "--all", "--out",
                 str(tmp_path / "o.jsonl"), "--reflected"]) == 2
    assert "teacher run" in capsys.readouterr().err


# ----- end to end with the student (loads SmolLM2) ---------------------------------------------
@pytest.fixture(scope="module")
def reflected_ws(tmp_path_factory):
    """6 real Alpaca rows (plus two the teacher fails on) reflected by the fake teacher and
    scored by the student, through the CLI."""
    tmp = tmp_path_factory.mktemp("reflect")
    rows = first_rows(DATA, REAL_ROWS) + [SYNTHETIC[1], SYNTHETIC[2]]
    ws = make_ws(tmp, rows)
    Handler = make_handler()
    with LoopbackServer(Handler) as server:
        code = main(["reflect", "--workspace", str(ws.root), "--teacher", "openai",
                     "--base-url", server.base_url, "--model", "fake-teacher",
                     "--api-key-env", "", "--name", "fake", "--chunk-size", "8",
                     "--max-length", "256"])
    assert code == 0
    return ws


@pytest.mark.lm
def test_student_scores_every_version_and_the_rule_is_stored(reflected_ws):
    ws = reflected_ws
    scores = ws.read_score(student_score_name("fake")).set_index("sample_id")
    versions = pd.read_parquet(ws.path(versions_name("fake"))).set_index("sample_id")
    assert len(scores) == len(versions) == REAL_ROWS + 2
    for v in VERSIONS:
        present = versions.index if v == "ori" else versions.index[versions[f"{v}_status"] == OK]
        assert scores.loc[present, f"{v}_ifd_ppl"].notna().all()
        assert scores.loc[present, f"{v}_rifd_ppl"].notna().all()
    malformed = REAL_ROWS
    assert scores.loc[malformed, "q_missing"] == NO_MARKERS
    assert np.isnan(scores.loc[malformed, "q_ifd_ppl"])
    # the ori scores are the IFD scorer's own numbers on the original rows
    from core.scores.ifd import ifd_scores
    from core.lm import load_causal_lm

    samples = ws.samples().set_index("sample_id")
    direct = ifd_scores(load_causal_lm(None), samples["instruction"].tolist()[:3],
                        samples["input"].tolist()[:3], samples["output"].tolist()[:3],
                        max_length=256)
    np.testing.assert_allclose(scores["ori_ifd_ppl"].to_numpy()[:3], direct["ifd_ppl"],
                               rtol=1e-5)
    choice = pd.read_parquet(ws.path("reflect/fake/choice.parquet"))
    expected = choose_versions(scores.reset_index())
    pd.testing.assert_frame_equal(choice, expected)
    assert choice["reason"].str.len().gt(20).all()


@pytest.mark.lm
def test_student_rescores_only_rows_whose_versions_changed(reflected_ws, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(reflected_ws.root, root)
    ws = Workspace.open(root)
    from core.reflect.student import run_student

    before = ws.read_score(student_score_name("fake"))
    assert run_student(ws, "fake", max_length=256).cached
    # a changed version of one row (as a later teacher run would write) is scored again
    path = ws.path(versions_name("fake"))
    frame = pd.read_parquet(path)
    k = int(np.flatnonzero(frame["a_status"] == OK)[0])
    frame.loc[k, "a_output"] = "A completely different and much shorter answer."
    frame.to_parquet(path)
    after = run_student(ws, "fake", max_length=256).value
    changed = ~np.isclose(after["a_ifd_ppl"], before["a_ifd_ppl"], rtol=0, atol=0,
                          equal_nan=True)
    assert changed[k] and changed.sum() == 1
    # the other rows come from the stored result, untouched; the changed row's other
    # versions are scored again (equal up to batching)
    others = after.index != k
    assert after[others].equals(before[others])
    numeric = [c for c in after if c.endswith(("_ifd_ppl", "_rifd_ppl")) and
               not c.startswith("a_")]
    np.testing.assert_allclose(after.loc[k, numeric].to_numpy(float),
                               before.loc[k, numeric].to_numpy(float), rtol=1e-4)


@pytest.mark.lm
def test_export_reflected_writes_the_chosen_versions_with_provenance(reflected_ws, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(reflected_ws.root, root)
    ws = Workspace.open(root)
    choice = pd.read_parquet(ws.path("reflect/fake/choice.parquet")).set_index("sample_id")
    versions = pd.read_parquet(ws.path(versions_name("fake"))).set_index("sample_id")
    kept = choice["chosen"].dropna()
    if len(kept) < 2:  # make sure there is something to export and to reject
        pytest.fail(f"the fake teacher's rewrites kept only {len(kept)} versions")
    out = tmp_path / "recycled.jsonl"
    assert main(["export", "--workspace", str(root), "--all", "--out", str(out),
                 "--reflected", "fake"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reflection"]["sample_id"] for r in lines] == sorted(kept.index.tolist())
    samples = ws.samples().set_index("sample_id")
    for record in lines:
        sid = record["reflection"]["sample_id"]
        version = kept.loc[sid]
        original = json.loads(samples.loc[sid, "record"])
        assert set(record) == set(original) | {"reflection"}  # the input's own schema
        assert {k: record[k] for k in original if k not in ("instruction", "input", "output")} \
            == {k: v for k, v in original.items() if k not in ("instruction", "input", "output")}
        assert record["reflection"]["version"] == VERSIONS[version]
        assert record["reflection"]["teacher"]["model"] == "fake-teacher"
        assert record["reflection"]["student"] == "SmolLM2-135M-Instruct"
        if version == "qa":
            assert (record["instruction"], record["input"], record["output"]) == \
                (versions.loc[sid, "q_instruction"], "", versions.loc[sid, "qa_output"])
        else:
            assert record["instruction"] == samples.loc[sid, "instruction"]
            assert record["output"] == versions.loc[sid, "a_output"]
    manifest = json.loads((tmp_path / "recycled.manifest.json").read_text())
    assert manifest["reflected"]["exported"] == len(lines)
    # a person's reject takes a sample out; keep leaves it in
    first, second = sorted(kept.index)[:2]
    decide(ws, "fake", first, keep=False)
    decide(ws, "fake", second, keep=True)
    assert decisions(ws, "fake") == {first: 0, second: 1}
    assert main(["export", "--workspace", str(root), "--all", "--out", str(out), "--force",
                 "--reflected"]) == 0
    again = [json.loads(line)["reflection"]["sample_id"] for line in
             out.read_text().splitlines()]
    assert first not in again and second in again and len(again) == len(lines) - 1
    from core.audit import rejected_ids

    assert rejected_ids(ws) == set()  # turning down a rewrite rejects no sample


@pytest.mark.lm
def test_local_smollm2_as_a_weak_teacher_on_three_rows(tmp_path):
    ws = make_ws(tmp_path, first_rows(DATA, 3))
    backend = LocalRater(None, max_new_tokens=24, threads=1)
    result = run_teacher(ws, backend, "local")
    frame = result.value
    assert len(frame) == 3
    assert frame["q_raw"].str.len().gt(0).all() and frame["a_raw"].str.len().gt(0).all()
    allowed = {OK, NO_MARKERS, NO_INSTRUCTION, NO_ANSWER, EMPTY_ANSWER, "no_q_version"}
    for key in ("q", "a", "qa"):
        assert set(frame[f"{key}_status"]) <= allowed
    from core.reflect.rule import run_rule
    from core.reflect.student import run_student

    scores = run_student(ws, "local", model=backend.lm).value
    assert scores["ori_ifd_ppl"].notna().all()
    assert len(run_rule(ws, "local").value) == 3
    # answers are cached: a rerun generates nothing
    assert run_teacher(ws, backend, "local").cached

