"""The student step: IFD and r-IFD of the four versions of every reflected sample (§2a).

The student is the workspace's scoring model (the one ``score ifd`` used, read from the
sidecar of ``scores/ifd.parquet``; the default SmolLM2 with template ``none`` when there is
none). Every version present (ori, Q*, QA*, A*) of a chunk goes through one call of
``core.scores.ifd.ifd_scores`` and one of ``rifd_scores``, so the losses are batched like
every LM score. ``scores/reflect_<name>.parquet`` holds, per sample and version ``v`` in
``VERSIONS``, ``v_ifd``, ``v_ifd_ppl``, ``v_rifd``, ``v_rifd_ppl`` and ``v_missing`` (why a
score is missing: the version's teacher status, or the scorer's reason), plus
``texts_sha256``, the hash of the texts it scored. A later teacher run that changes a row's
versions (a failed request asked again) changes that hash, and the row is scored again; the
others come from the stored result.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..lm import DEFAULT_MODEL_NAME, DEFAULT_TOKEN_BUDGET, TEMPLATES
from ..progress import Progress
from ..raters.run import check_rater_name
from ..scores.ifd import (RIFD_SCORER_VERSION, ifd_scores, lm_params, load_scoring_lm,
                          rifd_scores)
from ..workspace import SAMPLES, Step, StepResult, Workspace
from .parse import OK
from .teacher import read_versions

# version key -> the name the paper uses
VERSIONS = {"ori": "ori", "q": "Q*", "qa": "QA*", "a": "A*"}
SCORE_FIELDS = ("ifd", "ifd_ppl", "rifd", "rifd_ppl")
STUDENT_PREFIX = "reflect_"


def student_score_name(name: str) -> str:
    """``reflect_<name>``: the score file of the student's scores of teacher run ``name``."""
    return STUDENT_PREFIX + check_rater_name(name)


def version_texts(sample: pd.Series, versions: pd.Series | None) -> dict:
    """``{version: (instruction, input, output) or status}`` of one sample: the text of each
    version present, else the teacher's status saying why it is absent."""
    out = {"ori": (sample["instruction"], sample["input"], sample["output"])}
    if versions is None:
        return {**out, "q": "not_reflected", "qa": "not_reflected", "a": "not_reflected"}
    out["q"] = ((versions["q_instruction"], "", versions["q_output"])
                if versions["q_status"] == OK else str(versions["q_status"]))
    out["qa"] = ((versions["q_instruction"], "", versions["qa_output"])
                 if versions["qa_status"] == OK else str(versions["qa_status"]))
    out["a"] = ((sample["instruction"], sample["input"], versions["a_output"])
                if versions["a_status"] == OK else str(versions["a_status"]))
    return out


def texts_sha256(texts: dict) -> str:
    blob = json.dumps({k: v for k, v in sorted(texts.items())}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def workspace_scoring_setup(ws: Workspace) -> dict:
    """Model, template, max_length and dtype of the workspace's IFD scores (its sidecar), or
    the defaults (SmolLM2, ``none``, 512, auto) when IFD was not scored."""
    meta = ws.score_meta("ifd") or {}
    params = meta.get("params") or {}
    model = meta.get("model_path")
    if meta.get("model", DEFAULT_MODEL_NAME) == DEFAULT_MODEL_NAME or not model:
        model = None
    template = params.get("template", "none")
    return {"model": model, "template": template if template in TEMPLATES else "none",
            "max_length": int(params.get("max_length", 512)),
            "dtype": params.get("dtype", "auto") if meta else "auto"}


def score_versions(lm, texts: list[dict], template: str, max_length: int,
                   token_budget: int = DEFAULT_TOKEN_BUDGET,
                   progress: Progress | None = None) -> pd.DataFrame:
    """IFD and r-IFD of every version in ``texts`` (one dict per sample, see
    ``version_texts``), in two batched calls; one row per sample."""
    present = [(i, v) for i, t in enumerate(texts) for v in VERSIONS if isinstance(t[v], tuple)]
    columns: dict[str, list] = {}
    for v in VERSIONS:
        for f in SCORE_FIELDS:
            columns[f"{v}_{f}"] = [np.nan] * len(texts)
        columns[f"{v}_missing"] = [t[v] if isinstance(t[v], str) else None for t in texts]
    if present:
        ins = [texts[i][v][0] for i, v in present]
        inp = [texts[i][v][1] for i, v in present]
        out = [texts[i][v][2] for i, v in present]

        def half(lo: float):
            if progress is None:
                return None
            return lambda done, total, note="": progress(lo + 0.5 * done / max(total, 1), 1.0,
                                                         note)

        ifd = ifd_scores(lm, ins, inp, out, template=template, max_length=max_length,
                         token_budget=token_budget, progress=half(0.0))
        rifd = rifd_scores(lm, ins, inp, out, max_length=max_length,
                           token_budget=token_budget, progress=half(0.5), template=template)
        for row, (i, v) in enumerate(present):
            for f in ("ifd", "ifd_ppl"):
                columns[f"{v}_{f}"][i] = float(ifd[f].iloc[row])
            for f in ("rifd", "rifd_ppl"):
                columns[f"{v}_{f}"][i] = float(rifd[f].iloc[row])
            reasons = [r for r in (ifd["missing_reason"].iloc[row],
                                   rifd["rifd_missing_reason"].iloc[row]) if pd.notna(r)]
            columns[f"{v}_missing"][i] = "; ".join(str(r) for r in reasons) or None
    frame = pd.DataFrame(columns)
    return frame.astype({f"{v}_missing": "str" for v in VERSIONS})


def run_student(ws: Workspace, name: str, sample_ids: Sequence[int] | None = None,
                model=None, template: str | None = None, max_length: int | None = None,
                dtype: str | None = None, progress: Progress | None = None,
                chunk_size: int = 64, token_budget: int = DEFAULT_TOKEN_BUDGET,
                force: bool = False, executor=None) -> StepResult:
    """Score the four versions of the samples teacher run ``name`` reflected (all of them,
    or those of ``sample_ids``) into ``scores/reflect_<name>.parquet``. ``model``,
    ``template``, ``max_length`` and ``dtype`` default to the workspace's IFD setup.
    ``executor`` computes the chunks (core/executors: local, or Ray)."""
    setup = workspace_scoring_setup(ws)
    template = template or setup["template"]
    if template not in TEMPLATES:
        raise InputError(f"unknown prompt template {template!r}; use one of "
                         f"{', '.join(TEMPLATES)}", field="template")
    max_length = int(max_length or setup["max_length"])
    lm = load_scoring_lm(model if model is not None else setup["model"],
                         dtype or setup["dtype"], executor)
    versions = read_versions(ws, name).set_index("sample_id", drop=False)
    samples = ws.samples(["sample_id", "instruction", "input", "output"])
    samples = samples.set_index("sample_id", drop=False).sort_index()
    ids = versions.index.to_numpy(np.int64)
    if sample_ids is not None:
        ids = np.intersect1d(ids, np.asarray(list(sample_ids), dtype=np.int64))
    texts: dict[int, dict] = {}
    hashes: dict[int, str] = {}

    def texts_of(sid: int) -> dict:
        if sid not in texts:
            texts[sid] = version_texts(samples.loc[sid], versions.loc[sid]
                                       if sid in versions.index else None)
            hashes[sid] = texts_sha256(texts[sid])
        return texts[sid]

    step = Step(f"scores/{student_score_name(name)}.parquet",
                lm_params(lm, template=template, max_length=max_length,
                          rifd_scorer_version=RIFD_SCORER_VERSION, teacher_run=name,
                          student="reflect-student-v1"),
                inputs={"samples": SAMPLES},
                meta={**lm.meta(), "teacher_run": name,
                      "versions": VERSIONS, "template": template,
                      "texts": "texts_sha256 = hash of the four versions' texts scored"})
    reuse = pd.DataFrame()
    if not force:
        stored = ws.stored_rows(step)
        if len(stored) and "texts_sha256" in stored:
            known = stored["sample_id"].isin(samples.index)
            stored = stored[known]
            current = stored["sample_id"].map(lambda s: (texts_of(int(s)), hashes[int(s)])[1])
            stale = current != stored["texts_sha256"]
            if stale.any():
                # Rebuild all stored rows plus those asked: rows whose texts are unchanged
                # come from the stored result, the others are scored again.
                reuse = stored[~stale].set_index("sample_id")
                ids = np.union1d(ids, stored["sample_id"].to_numpy(np.int64))
                force = True

    def compute(chunk_ids: np.ndarray, chunk_progress) -> pd.DataFrame:
        fresh = [int(s) for s in chunk_ids if int(s) not in reuse.index]
        frame = score_versions(lm, [texts_of(s) for s in fresh], template, max_length,
                               token_budget, chunk_progress)
        frame.insert(0, "sample_id", np.asarray(fresh, dtype=np.int64))
        frame["texts_sha256"] = [hashes[s] for s in fresh]
        kept = [int(s) for s in chunk_ids if int(s) in reuse.index]
        if kept:
            frame = pd.concat([frame, reuse.loc[kept].reset_index()[frame.columns]],
                              ignore_index=True)
        return frame.sort_values("sample_id").reset_index(drop=True)

    def summary(frame: pd.DataFrame) -> dict:
        return {"counts": {v: int(frame[f"{v}_ifd_ppl"].notna().sum()) for v in VERSIONS}}

    return ws.run_chunked(step, ids, compute, chunk_size=chunk_size, progress=progress,
                          force=force, summary=summary, executor=executor)
