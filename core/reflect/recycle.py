"""Recycled pairs: the chosen version of each sample, in the input's own record schema.

``recycled_records`` turns the rule's choice (``rule.choose_versions`` on the student's
scores as they are) into records for
``core.export`` (``export --reflected``): the sample's original record with its instruction,
input and answer replaced by the chosen version's (Alpaca keys through the import's column
mapping; a ShareGPT or messages chat keeps its system turns and earlier turns and gets the
new last exchange), plus a ``reflection`` field saying where it came from (sample id,
version, teacher, student, prompt version, the four versions' scores). The record's other
fields stay the original's (a rating given to the original pair is copied as it was: the
``reflection`` field says the text is not the one it rated).

A person's decision in the Reflect view overrides the rule: decisions are audit-log lines
(``core.audit``) on the column ``reflection:<name>``, value 1 = use the reflected version,
0 = do not (``keep`` records 1, the rule's verdict; "reject" is a ``set`` to 0, so that
turning down a rewrite never drops the original sample from other selections as an audit
``reject`` would).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..audit import append_decision, audit_state, ratings_in_force
from ..errors import InputError
from ..io.normalise import guess_record_format
from ..workspace import Workspace
from .prompts import PROMPT_VERSION
from .rule import choose_versions
from .student import VERSIONS, student_score_name
from .teacher import read_versions, reflect_names

PROVENANCE_FIELD = "reflection"


def decision_column(name: str) -> str:
    """The audit-log column of the Reflect view's decisions on teacher run ``name``."""
    return f"reflection:{name}"


def decide(ws: Workspace, name: str, sample_id: int, keep: bool) -> dict:
    """Log a person's keep (1) or reject (0) of the reflected version of ``sample_id``."""
    column = decision_column(name)
    if keep:
        return append_decision(ws, sample_id, column, "keep", old=1)
    return append_decision(ws, sample_id, column, "set", old=1, new=0)


def decisions(ws: Workspace, name: str) -> dict[int, object]:
    """Decisions in force for run ``name``: sample id → 1 (keep) or 0 (reject)."""
    return ratings_in_force(audit_state(ws), decision_column(name))


def pick_run(ws: Workspace, name: str | None) -> str:
    """``name``, or the workspace's only teacher run when ``name`` is empty."""
    names = reflect_names(ws)
    if name:
        if name not in names:
            raise InputError(f"no teacher run {name!r} in this workspace (runs: "
                             f"{', '.join(names) or 'none'}); run `python -m core reflect`",
                             file=str(ws.root), field="reflected")
        return name
    if len(names) != 1:
        raise InputError("name the teacher run to export (--reflected NAME); this workspace "
                         f"has {', '.join(names) if names else 'none'}", file=str(ws.root),
                         field="reflected")
    return names[0]


def replace_fields(record: dict, record_format: str, mapping: dict, instruction: str,
                   input_text: str, output: str) -> dict:
    """``record`` with its instruction, input and answer replaced, in its own schema."""
    out = dict(record)
    if record_format in ("sharegpt", "messages"):
        key, role_key, text_key = (("conversations", "from", "value")
                                   if record_format == "sharegpt"
                                   else ("messages", "role", "content"))
        turns = list(record.get(key) or [])
        user, assistant = (("human", "gpt") if record_format == "sharegpt"
                           else ("user", "assistant"))
        head = [t for t in turns if isinstance(t, dict)
                and str(t.get(role_key, "")).lower() in ("system", "developer")]
        question = instruction + (f"\n\n{input_text}" if input_text else "")
        out[key] = head + [{role_key: user, text_key: question},
                           {role_key: assistant, text_key: output}]
        return out
    out[mapping.get("instruction", "instruction")] = instruction
    input_key = mapping.get("input", "input")
    if input_key in out or input_text:
        out[input_key] = input_text
    out[mapping.get("output", "output")] = output
    return out


def recycled_records(ws: Workspace, name: str, sample_ids: np.ndarray,
                     records: pd.Series) -> tuple[np.ndarray, pd.Series, list, dict]:
    """For the ``sample_ids`` (with their stored ``records`` JSON text) that have a chosen
    version not rejected by a person: their ids, the recycled records as JSON text, the
    provenance field values, and a summary for the export manifest."""
    versions = read_versions(ws, name).set_index("sample_id")
    if student_score_name(name) not in ws.score_names():
        raise InputError(f"teacher run {name!r} has no student scores yet; rerun `python -m "
                         "core reflect` (teacher answers come from its cache)",
                         file=str(ws.root), field="reflected")
    scores = ws.read_score(student_score_name(name))
    # the rule on the scores as they are now (the export only reads the workspace)
    choice = choose_versions(scores)
    scores = scores.set_index("sample_id")
    teacher = (ws.meta(f"reflect/{name}/versions.parquet") or {}).get("params", {})
    student = (ws.score_meta(student_score_name(name)) or {}).get("params", {})
    source = ws.manifest.get("source") or {}
    files = source.get("files") or [source]  # a pool of files shares its import options
    mapping = (files[0] if isinstance(files[0], dict) else {}).get("mapping") or {}
    chosen = choice.set_index("sample_id")["chosen"].dropna()
    overruled = {sid for sid, value in decisions(ws, name).items() if value == 0}
    keep = [int(s) for s in sample_ids if int(s) in chosen.index and int(s) not in overruled]
    texts, provenance = [], []
    samples = ws.samples(["sample_id", "instruction", "input"]).set_index("sample_id")
    for sid in keep:
        version = chosen.loc[sid]
        row = versions.loc[sid]
        if version == "qa":
            q, i, a = row["q_instruction"], "", row["qa_output"]
        else:
            q, i, a = samples.at[sid, "instruction"], samples.at[sid, "input"], row["a_output"]
        record = json.loads(records.loc[sid])
        if not isinstance(record, dict):
            raise InputError("record is not a JSON object; a reflected version cannot be "
                             "written in its schema", row=sid, field="record")
        record_format = guess_record_format(record, mapping) or "alpaca"
        texts.append(json.dumps(replace_fields(record, record_format, mapping, q,
                                               i if isinstance(i, str) else "", a),
                                ensure_ascii=False))
        provenance.append({
            "sample_id": sid, "version": VERSIONS[version],
            "teacher": {k: teacher.get(k) for k in ("backend", "model", "base_url")
                        if teacher.get(k) is not None},
            "student": student.get("model"), "template": student.get("template"),
            "prompt_version": teacher.get("prompt_version", PROMPT_VERSION),
            "scores": {VERSIONS[v]: {f: _finite(scores.at[sid, f"{v}_{f}"])
                                     for f in ("ifd_ppl", "rifd_ppl")} for v in VERSIONS}})
    summary = {"teacher_run": name, "chosen_in_selection": int(sum(
        int(s) in chosen.index for s in sample_ids)), "rejected_by_person": int(sum(
            int(s) in chosen.index and int(s) in overruled for s in sample_ids)),
        "exported": len(keep),
        "by_version": {VERSIONS[v]: int(sum(chosen.loc[s] == v for s in keep))
                       for v in ("qa", "a")},
        "field": PROVENANCE_FIELD}
    ids = np.asarray(keep, dtype=np.int64)
    return ids, pd.Series(texts, index=ids, dtype=object), provenance, summary


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None

