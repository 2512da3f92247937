"""Reflect: Selective Reflection-Tuning's choice per sample, for a person to check.

For one teacher run (``python -m core reflect``), each sample's original pair and the
version the rule kept (or any other version) side by side, a word-level diff, the four
versions' IFD / r-IFD, the rule's verdict in one sentence, the teacher's raw answers, and
keep / reject buttons whose decisions go to the audit log (``core.reflect.recycle.decide``);
``export --reflected`` honours them. Every text is data: shown with ``st.code``/``st.text``
or through ``components.messages``, never as Markdown or HTML.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from components import state
from components.messages import plain, show_caption, show_error, show_info, show_warning
from core.errors import InputError
from core.reflect.diff import word_diff
from core.reflect.recycle import decide, decision_column, decisions
from core.reflect.rule import run_rule
from core.reflect.student import VERSIONS, student_score_name
from core.reflect.teacher import read_versions, reflect_names
from core.workspace import Workspace

RAW = {"q": ("Instruction reflection (Q*)", "q_raw"), "a": ("Response reflection (A*)", "a_raw"),
       "qa": ("Response reflection of Q* (QA*)", "qa_raw")}


def _decide(root: str, name: str, sid: int, keep: bool) -> None:
    try:
        decide(Workspace(root), name, sid, keep)
    except InputError as err:
        st.session_state["reflect_error"] = str(err)
        return
    st.session_state["reflect_note"] = (f"Sample #{sid}: reflected version "
                                        f"{'kept' if keep else 'rejected'}.")


def version_text(sample: pd.Series, row: pd.Series, version: str) -> tuple[str, str, str] | None:
    """(instruction, input, output) of one version, or None when the teacher gave none."""
    def text(value) -> str:
        return value if isinstance(value, str) else ""

    if version == "ori":
        return text(sample["instruction"]), text(sample["input"]), text(sample["output"])
    if row[f"{version}_status"] != "ok":
        return None
    if version == "q":
        return text(row["q_instruction"]), "", text(row["q_output"])
    if version == "qa":
        return text(row["q_instruction"]), "", text(row["qa_output"])
    return text(sample["instruction"]), text(sample["input"]), text(row["a_output"])


def _box(label: str, text: str, where) -> None:
    where.text(label)
    where.code(text or "(empty)", language=None, wrap_lines=True,
               height="content" if len(text or "") < 600 else 260)


def score_table(scores: pd.Series | None, versions: pd.Series) -> pd.DataFrame:
    """The four versions' perplexity ratios and the teacher's status, one row each."""
    rows = []
    for v, label in VERSIONS.items():
        status = "original" if v == "ori" else str(versions[f"{v}_status"])
        get = (lambda f: None if scores is None else scores.get(f"{v}_{f}"))
        rows.append({"version": label, "IFD (ppl)": get("ifd_ppl"),
                     "r-IFD (ppl)": get("rifd_ppl"), "teacher": status,
                     "why missing": None if scores is None else scores.get(f"{v}_missing")})
    return pd.DataFrame(rows)


def main() -> None:
    st.title("Reflect: teacher rewrites, student picks")
    ws = state.current_workspace()
    if ws is None:
        st.info("No workspace yet: import a file on the Data page or build the demo.")
        return
    names = reflect_names(ws)
    if not names:
        st.info("No reflected versions in this workspace yet. A teacher LLM rewrites each "
                "pair and the workspace's IFD model keeps the better version (Selective "
                "Reflection-Tuning). From a terminal:")
        st.code(f"python -m core reflect --workspace {ws.root} --teacher openai "
                "--model gpt-4o-mini --limit 100", language="bash")
        return
    name = st.selectbox("Teacher run", names, key="reflect_run") if len(names) > 1 \
        else names[0]
    for key, show in (("reflect_note", lambda m: st.toast(plain(m))),
                      ("reflect_error", show_error)):
        message = st.session_state.pop(key, None)
        if message:
            show(message)
    try:
        versions = read_versions(ws, name).set_index("sample_id", drop=False)
        have_scores = student_score_name(name) in ws.score_names()
        scores = ws.read_score(student_score_name(name)).set_index("sample_id") \
            if have_scores else None
        choice = run_rule(ws, name).value.set_index("sample_id") if have_scores else None
    except InputError as err:
        show_error(err)
        return
    meta = ws.meta(f"reflect/{name}/versions.parquet") or {}
    teacher = meta.get("params") or {}
    show_caption(f"Teacher {teacher.get('backend', '?')} {teacher.get('model', '?')} · prompt "
                 f"{teacher.get('prompt_version', '?')} · {len(versions):,} samples reflected")
    if choice is None:
        show_warning("The student has not scored these versions yet: rerun `python -m core "
                     "reflect` (teacher answers come from its cache).")
    in_force = decisions(ws, name)
    kept = choice["chosen"].dropna() if choice is not None else pd.Series(dtype="string")
    cols = st.columns(4)
    cols[0].metric("Reflected", f"{len(versions):,}")
    cols[1].metric("Kept QA*", f"{int((kept == 'qa').sum()):,}")
    cols[2].metric("Kept A*", f"{int((kept == 'a').sum()):,}")
    cols[3].metric("Decided by you", f"{len(in_force):,}")

    only_kept = st.toggle("Only samples the rule kept a version of", value=len(kept) > 0,
                          key="reflect_only_kept")
    ids = [int(s) for s in (kept.index if only_kept else versions.index)]
    if not ids:
        show_info("The rule kept no version of any reflected sample.")
        return

    def label(sid: int) -> str:
        v = kept.get(sid) if sid in kept.index else None
        return f"#{sid} · {VERSIONS[v] if v else 'nothing kept'}"

    sid = st.selectbox("Sample", ids, format_func=label, key="reflect_sample")
    samples = state.load_samples(ws).set_index("sample_id", drop=False)
    sample, row = samples.loc[sid], versions.loc[sid]
    chosen = kept.get(sid) if sid in kept.index else None
    st.subheader(f"Sample #{sid}")
    if choice is not None:
        show_info(choice.at[sid, "reason"])
    decision = in_force.get(sid)
    if decision is not None:
        show_caption(f"Your decision: {'keep' if decision == 1 else 'reject'} the reflected "
                     "version (audit log column " + decision_column(name) + ")")
    if chosen is not None:
        keep_col, reject_col, _ = st.columns([1, 1, 2])
        keep_col.button("Keep reflected version", key="reflect_keep", type="primary",
                        on_click=_decide, args=(str(ws.root), name, sid, True))
        reject_col.button("Reject reflected version", key="reflect_reject",
                          on_click=_decide, args=(str(ws.root), name, sid, False))
    st.dataframe(score_table(scores.loc[sid] if scores is not None and sid in scores.index
                             else None, row), hide_index=True)

    present = [v for v in ("qa", "a", "q") if version_text(sample, row, v) is not None]
    if not present:
        show_warning("The teacher gave no usable version of this sample (see its raw answers "
                     "below).")
    else:
        default = present.index(chosen) if chosen in present else 0
        other = st.radio("Compare the original with", present, index=default,
                         format_func=lambda v: VERSIONS[v] + (" (kept)" if v == chosen else ""),
                         horizontal=True, key=f"reflect_compare_{sid}")
        ori = version_text(sample, row, "ori")
        new = version_text(sample, row, other)
        left, right = st.columns(2, gap="large")
        left.text("Original")
        right.text(VERSIONS[other] + (" — kept by the rule" if other == chosen else ""))
        for k, part in enumerate(("instruction", "input", "output")):
            if part == "input" and not (ori[k] or new[k]):
                continue
            _box(part, ori[k], left)
            _box(part, new[k], right)
        st.text("Word-level changes ([-removed-] {+added+})")
        for k, part in enumerate(("instruction", "input", "output")):
            if part == "input" and not (ori[k] or new[k]):
                continue
            diff = word_diff(ori[k], new[k])
            st.text(f"{part}: {diff.removed} words removed, {diff.added} added, "
                    f"{diff.same} unchanged")
            st.code(diff.text or "(empty)", language=None, wrap_lines=True,
                    height="content" if len(diff.text) < 1200 else 300)
    with st.expander("The teacher's raw answers"):
        for key, (title, column) in RAW.items():
            st.text(f"{title}: {row[f'{key}_status']}")
            raw = row[column]
            st.code(raw if isinstance(raw, str) and raw else "(none)", language=None,
                    wrap_lines=True, height="content" if len(str(raw)) < 1200 else 300)


state.ensure_shell()
main()
