"""Readable Audit tables: the neighbour evidence with each neighbour's full text a click
away, and the latest decisions written as "old → new".

Sample text is data: the table shows it as plain cells and the full text goes through
``st.code`` (plain text, wrapped), never Markdown.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

EVIDENCE_KEY = "audit_evidence"


def _number(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(as_float)) if as_float.is_integer() else f"{as_float:g}"


def change_text(action: str, old, new) -> str:
    """One decision as a person reads it: ``2 → 4``, ``2 (kept)``, ``2 (skipped)``."""
    if action == "skip":
        return f"{_number(old)} (skipped)"
    if action == "reject":
        return f"{_number(old)} (sample rejected)"
    if new is None or _number(new) == _number(old):
        return f"{_number(old)} (kept)"
    return f"{_number(old)} → {_number(new)}"


def readable_history(history: pd.DataFrame) -> pd.DataFrame:
    """``components.audit_view.decision_history`` as time, sample, decision, rating change."""
    return pd.DataFrame({
        "time": history["time"].astype(str).str.slice(5, 16),  # MM-DD HH:MM
        "sample": history["sample_id"].astype(int).to_numpy(),
        "decision": history["action"].to_numpy(),
        "rating": [change_text(a, o, n) for a, o, n in
                   zip(history["action"], history["old"], history["new"])],
    })


def show_evidence(evidence: pd.DataFrame, frame: pd.DataFrame) -> None:
    """The neighbour table (``audit_view.evidence_table``); a click on a row, or any of its
    cells, shows that neighbour's full instruction and answer below it, wrapped."""
    st.caption("Click a neighbour to read its full text below.")
    event = st.dataframe(
        evidence, key=EVIDENCE_KEY, hide_index=True, height=300, on_select="rerun",
        selection_mode=("single-row", "single-cell"),
        column_config={"similarity": st.column_config.NumberColumn(format="%.3f"),
                       "instruction": st.column_config.TextColumn(width="large")})
    if evidence.empty:
        return
    from .explore_selection import clicked_position

    position = clicked_position(event)
    position = position if position is not None and position < len(evidence) else 0
    row = evidence.iloc[position]
    sid = int(row["neighbour"])
    texts = frame.set_index("sample_id").loc[sid]
    st.text(f"neighbour #{sid} · similarity {float(row['similarity']):.3f} · "
            f"rated {_number(row['rating'])}")
    for name in ("instruction", "input", "output"):
        value = texts.get(name)
        if name == "input" and not (isinstance(value, str) and value):
            continue
        st.code(value if isinstance(value, str) and value else "(empty)", language=None,
                wrap_lines=True, height="content" if len(str(value)) < 600 else 220)
