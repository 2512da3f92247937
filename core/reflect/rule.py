"""The student's choice per sample: Reflection-Tuning's selection rule (docs/methods.md §2a).

Reference: tianyi-lab/Reflection_Tuning ``selection_code/get_select_data.py``, on the
perplexity ratios (ifd = ``ifd_ppl``, rifd = ``rifd_ppl``) of the four versions:

- if ifd(Q*) > ifd(ori) (the new instruction is harder):
  if rifd(QA*) < rifd(Q*) (the better answer makes it easier to guess), keep QA* when its
  ifd and rifd are both < 1 (the reference's ``count_1``); otherwise Q* alone would be the
  candidate (``count_2`` when Q*'s ratios are < 1), which the reference counts but never
  emits;
- otherwise: if rifd(A*) < rifd(ori), keep A* when its ifd and rifd are both < 1
  (``count_3``); otherwise the original would be the candidate (``count_4``), counted, never
  emitted.

A missing score compares as the reference's NaN does: every comparison with it is false (a
missing Q* sends the sample to the A* branch; a missing A* keeps nothing). ``case`` is the
reference's counter (1–4) or 0 when none counts the sample; ``reason`` says the verdict in
one sentence with the numbers it rests on.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..workspace import StepResult, Workspace, Step
from ..raters.run import check_rater_name
from .student import VERSIONS, student_score_name
from .teacher import REFLECT_DIR

RULE_VERSION = "get_select_data-v1"
KEPT = {1: "qa", 3: "a"}  # the reference's cases that emit a version


def choose_versions(scores: pd.DataFrame) -> pd.DataFrame:
    """``sample_id``, ``chosen`` (version key ``qa``/``a``, or None), ``case`` (0–4) and
    ``reason`` for every row of a student score frame (``{v}_ifd_ppl``, ``{v}_rifd_ppl``)."""
    def col(v: str, f: str) -> np.ndarray:
        return scores[f"{v}_{f}_ppl"].to_numpy(dtype=float)

    ori_i, ori_r = col("ori", "ifd"), col("ori", "rifd")
    q_i, q_r = col("q", "ifd"), col("q", "rifd")
    qa_i, qa_r = col("qa", "ifd"), col("qa", "rifd")
    a_i, a_r = col("a", "ifd"), col("a", "rifd")
    with np.errstate(invalid="ignore"):
        harder = q_i > ori_i                     # NaN compares false, as in Python
        qa_easier = qa_r < q_r
        a_easier = a_r < ori_r
        qa_ok = (qa_r < 1) & (qa_i < 1)
        q_ok = (q_r < 1) & (q_i < 1)
        a_ok = (a_r < 1) & (a_i < 1)
        ori_ok = (ori_r < 1) & (ori_i < 1)
    case = np.select([harder & qa_easier & qa_ok, harder & ~qa_easier & q_ok,
                      ~harder & a_easier & a_ok, ~harder & ~a_easier & ori_ok],
                     [1, 2, 3, 4], default=0)
    reasons = [_reason(k, *(x[k] for x in (ori_i, q_i, qa_i, qa_r, q_r, a_i, a_r, ori_r)),
                       harder[k], qa_easier[k], a_easier[k])
               for k in range(len(scores))]
    return pd.DataFrame({
        "sample_id": scores["sample_id"].to_numpy(np.int64),
        "chosen": pd.array([KEPT.get(int(c)) for c in case], dtype="string"),
        "case": case.astype(np.int64),
        "reason": pd.array(reasons, dtype="string")})


def _n(x: float) -> str:
    return "missing" if not math.isfinite(x) else f"{x:.3f}"


def _reason(k, ori_i, q_i, qa_i, qa_r, q_r, a_i, a_r, ori_r, harder, qa_easier,
            a_easier) -> str:
    del k
    if harder:
        head = f"Q*'s IFD {_n(q_i)} > the original's {_n(ori_i)} (a harder instruction)"
        if qa_easier:
            why = f"QA*'s r-IFD {_n(qa_r)} < Q*'s {_n(q_r)}"
            if qa_r < 1 and qa_i < 1:
                return f"Keep QA*: {head}, {why}, and QA*'s IFD and r-IFD are below 1."
            return (f"Keep nothing: {head} and {why}, but QA*'s IFD {_n(qa_i)} and r-IFD "
                    f"{_n(qa_r)} are not both below 1.")
        return (f"Keep nothing: {head}, but QA*'s r-IFD {_n(qa_r)} is not below Q*'s "
                f"{_n(q_r)}; the reference would only count Q* alone, never emit it.")
    head = (f"Q*'s IFD {_n(q_i)} is not above the original's {_n(ori_i)} (no harder "
            "instruction)")
    if a_easier:
        why = f"A*'s r-IFD {_n(a_r)} < the original's {_n(ori_r)}"
        if a_r < 1 and a_i < 1:
            return f"Keep A*: {head}, {why}, and A*'s IFD and r-IFD are below 1."
        return (f"Keep nothing: {head} and {why}, but A*'s IFD {_n(a_i)} and r-IFD "
                f"{_n(a_r)} are not both below 1.")
    return (f"Keep nothing: {head}, and A*'s r-IFD {_n(a_r)} is not below the original's "
            f"{_n(ori_r)}; the reference would only count the original, never emit it.")


def choice_name(name: str) -> str:
    """``reflect/<name>/choice.parquet``: the rule's verdict for teacher run ``name``."""
    return f"{REFLECT_DIR}/{check_rater_name(name)}/choice.parquet"


def run_rule(ws: Workspace, name: str, force: bool = False) -> StepResult:
    """Apply the rule to the student's scores of run ``name`` (recomputed when they change)."""
    score = student_score_name(name)
    step = Step(choice_name(name), {"rule": RULE_VERSION, "ratios": "ifd_ppl, rifd_ppl"},
                inputs={"student": f"scores/{score}.parquet"},
                meta={"teacher_run": name, "versions": VERSIONS,
                      "cases": {"1": "QA* kept", "2": "Q* alone (counted, not emitted)",
                                "3": "A* kept", "4": "ori (counted, not emitted)",
                                "0": "none"}})

    def summary(frame: pd.DataFrame) -> dict:
        return {"rows": int(len(frame)),
                "counts": {str(k): int(v) for k, v in frame["case"].value_counts().items()},
                "kept": int(frame["chosen"].notna().sum())}

    return ws.run_whole(step, lambda: choose_versions(ws.read_score(score)), force=force,
                        summary=summary)

