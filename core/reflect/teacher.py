"""The teacher step: instruction and response reflection of chosen samples (§2a).

``run_teacher`` asks a backend of ``core.raters`` (``OpenAIRater`` or ``LocalRater``, the
same objects ``rate`` uses) three questions per sample, through the same response cache
(``core.raters.cache.ask_cached``; ``reflect/<name>/responses.jsonl``), so a killed or
cancelled run resumes without asking twice:

1. instruction reflection of the original pair → Q* = (new instruction, new answer);
2. response reflection of the original pair → A* = (instruction, better answer);
3. response reflection of Q* → QA* = (new instruction, its better answer); asked only when
   Q* exists.

The versions are written to ``reflect/<name>/versions.parquet`` through
``Workspace.run_chunked``, one row per sample with each version's text, the teacher's raw
answers and a status per question (``parse.STATUSES``, ``request_error`` or, for QA*,
``no_q_version``). Rows whose request failed are asked again on the next run (answers
already received come from the cache), as ``rate`` does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..progress import Progress
from ..raters.cache import ResponseCache, ask_cached
from ..raters.run import check_rater_name
from ..workspace import SAMPLES, Step, StepResult, Workspace, now_iso
from .parse import OK, parse_instruction_reflection, parse_response_reflection
from .prompts import PROMPT_VERSION, instruction_reflection, prompt_sha256, response_reflection

REFLECT_DIR = "reflect"
RESPONSES = "responses.jsonl"
REQUEST_ERROR = "request_error"
NO_Q_VERSION = "no_q_version"
# One letter per question: q = instruction reflection, a = response reflection of the
# original, qa = response reflection of Q*.
QUESTIONS = ("q", "a", "qa")
TEXT_COLUMNS = ("q_instruction", "q_output", "a_output", "qa_output")
COLUMNS = ("sample_id", *TEXT_COLUMNS, *(f"{k}_status" for k in QUESTIONS),
           *(f"{k}_raw" for k in QUESTIONS), *(f"{k}_error" for k in QUESTIONS))


def versions_name(name: str) -> str:
    """``reflect/<name>/versions.parquet``: the teacher's versions of run ``name``."""
    return f"{REFLECT_DIR}/{check_rater_name(name)}/versions.parquet"


def responses_path(ws: Workspace, name: str) -> Path:
    return ws.path(REFLECT_DIR, check_rater_name(name), RESPONSES)


def reflect_names(ws: Workspace) -> list[str]:
    """Teacher runs of ``ws`` that have written versions."""
    folder = ws.path(REFLECT_DIR)
    if not folder.is_dir():
        return []
    return sorted(p.parent.name for p in folder.glob("*/versions.parquet"))


def _versions_row(sid: int, answers: dict[str, tuple]) -> dict:
    """One row of the versions file from the (text, error) answers of the questions asked."""
    row = {"sample_id": int(sid), **{c: None for c in COLUMNS[1:]}}
    text, error = answers["q"]
    row["q_raw"], row["q_error"] = text, error
    if error is not None:
        row["q_status"] = REQUEST_ERROR
    else:
        parsed = parse_instruction_reflection(text)
        row["q_status"] = parsed.status
        if parsed.status == OK:
            row["q_instruction"], row["q_output"] = parsed.instruction, parsed.answer
    for key, column in (("a", "a_output"), ("qa", "qa_output")):
        if key not in answers:
            row[f"{key}_status"] = NO_Q_VERSION
            continue
        text, error = answers[key]
        row[f"{key}_raw"], row[f"{key}_error"] = text, error
        if error is not None:
            row[f"{key}_status"] = REQUEST_ERROR
            continue
        parsed = parse_response_reflection(text)
        row[f"{key}_status"] = parsed.status
        if parsed.status == OK:
            row[column] = parsed.answer
    return row


def check_sample_ids(ws: Workspace, samples: pd.DataFrame, sample_ids) -> np.ndarray:
    """``sample_ids`` sorted and unique (every sample when None), each one of ``samples``."""
    have = samples.index.to_numpy(np.int64)
    if sample_ids is None:
        return have
    wanted = np.asarray(sorted({int(i) for i in sample_ids}), dtype=np.int64)
    missing = np.setdiff1d(wanted, have)
    if len(missing):
        raise InputError(f"{len(missing)} sample ids are not in the workspace (first: "
                         f"{int(missing[0])})", file=str(ws.root), field="sample_id")
    return wanted


def run_teacher(ws: Workspace, backend, name: str, sample_ids: Sequence[int] | None = None,
                progress: Progress | None = None, chunk_size: int = 32,
                retry_errors: bool = True, force: bool = False) -> StepResult:
    """Reflect samples of ``ws`` with the teacher ``backend`` into ``versions_name(name)``.

    ``sample_ids=None`` reflects every sample; a later call with more ids extends the file.
    The sidecar records the backend (no secrets), the prompt version and hash, and counts.
    """
    if chunk_size < 1:
        raise InputError("chunk size must be at least 1", field="chunk_size")
    samples = ws.samples(["sample_id", "instruction", "input", "output"])
    samples = samples.set_index("sample_id", drop=False).sort_index()
    wanted = check_sample_ids(ws, samples, sample_ids)
    identity = backend.identity()
    step = Step(versions_name(name),
                {"prompt_version": PROMPT_VERSION, "prompt_sha256": prompt_sha256(),
                 **identity},
                inputs={"samples": SAMPLES},
                meta={"teacher": name, "backend": backend.describe(),
                      "prompt_version": PROMPT_VERSION,
                      "responses": str(Path(REFLECT_DIR, name, RESPONSES)),
                      "versions": {"Q*": "q_instruction + q_output (input empty, as the "
                                         "reference)", "QA*": "q_instruction + qa_output",
                                   "A*": "original instruction and input + a_output"}})
    if not force and retry_errors:
        stored = ws.stored_rows(step, [f"{k}_status" for k in QUESTIONS])
        failed = np.zeros(len(stored), dtype=bool)
        for key in QUESTIONS:
            if f"{key}_status" in stored:
                failed |= (stored[f"{key}_status"] == REQUEST_ERROR).to_numpy()
        if failed.any():
            # Rebuild everything stored plus what is asked: answers come from the cache,
            # only the failed requests go out again.
            wanted = np.union1d(wanted, stored["sample_id"].to_numpy(np.int64))
            force = True

    cache = ResponseCache(responses_path(ws, name))
    stats = {"requests": 0, "cached": 0, "attempts": 0, "request_errors": 0}

    def compute(chunk_ids: np.ndarray, chunk_progress) -> pd.DataFrame:
        rows = samples.loc[chunk_ids]
        n = len(chunk_ids)
        originals = list(zip(rows["instruction"], rows["input"], rows["output"]))
        # First round: both questions about the original pair (2n requests at once).
        first = [instruction_reflection(*o) for o in originals] + \
                [response_reflection(*o) for o in originals]

        def record(question: str, k: int) -> dict:
            return {"sample_id": int(chunk_ids[k]), "question": question,
                    "prompt_version": PROMPT_VERSION}

        planned = 3 * n

        def first_progress(done, total, note=""):
            chunk_progress(done, planned, note)

        answers = ask_cached(backend, first, cache,
                             lambda k: record("q" if k < n else "a", k % n),
                             first_progress, stats)
        per_sample = [{"q": answers[k], "a": answers[n + k]} for k in range(n)]
        # Second round: the better answer to each new instruction that parsed.
        parsed = [parse_instruction_reflection(a[0]) if a[1] is None else None
                  for a in answers[:n]]
        with_q = [k for k in range(n) if parsed[k] is not None and parsed[k].status == OK]
        second = [response_reflection(parsed[k].instruction, "", parsed[k].answer)
                  for k in with_q]
        if second:
            more = ask_cached(backend, second, cache, lambda j: record("qa", with_q[j]),
                              lambda d, t, note="": chunk_progress(2 * n + d * n / t,
                                                                   planned, note), stats)
            for j, k in enumerate(with_q):
                per_sample[k]["qa"] = more[j]
        out = pd.DataFrame([_versions_row(sid, per_sample[k])
                            for k, sid in enumerate(chunk_ids)], columns=list(COLUMNS))
        return out.astype({c: "str" for c in COLUMNS[1:]})

    start = time.perf_counter()

    def summary(frame: pd.DataFrame) -> dict:
        counts = {f"{k}_status": {str(s): int(c) for s, c in
                                  frame[f"{k}_status"].value_counts().items()}
                  for k in QUESTIONS}
        return {"counts": {"rows": int(len(frame)), **counts},
                "last_run": {**stats, "duration_s": round(time.perf_counter() - start, 3),
                             "finished": now_iso()}}

    return ws.run_chunked(step, wanted, compute, chunk_size=chunk_size, progress=progress,
                          force=force, summary=summary)


def read_versions(ws: Workspace, name: str) -> pd.DataFrame:
    """The versions file of run ``name`` (an ``InputError`` saying how to make it if absent)."""
    rel = versions_name(name)
    frame = ws.read_cached(ws.path(rel), pd.read_parquet)  # a damaged file is deleted
    if frame is None:
        raise InputError(f"no reflected versions from teacher run {name!r} yet; run "
                         f"`python -m core reflect --workspace {ws.root} --name {name} ...` "
                         "(cached teacher answers are reused)", file=str(ws.path(rel)))
    return frame
