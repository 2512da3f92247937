"""Explore's group view: the near-duplicate group of the inspected sample (``core.dedup``)
and, when ``decontaminate`` flagged it, the eval item it overlaps (``core.decontam``).

Sample text is data: it is shown with ``st.text``/``st.code`` (never markdown or HTML), and
the eval file name, a data value too, likewise.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from core.decontam import DECONTAM_NAME
from core.dedup import DEDUP_NAME, group_members

from . import state
from .inspector import TEXT_BOX_HEIGHT

MAX_SHOWN = 20  # members whose full text is shown; the table lists them all


def group_rows(samples: pd.DataFrame, dedup: pd.DataFrame, sample_id: int) -> pd.DataFrame:
    """The members of ``sample_id``'s near-duplicate group (keeper first): id, keeper,
    which detectors linked it, and its text. Empty when it has no near-duplicate."""
    members = group_members(dedup, int(sample_id))
    if len(members) <= 1:
        return pd.DataFrame(columns=["sample_id", "keeper", "linked by", "instruction",
                                     "input", "output"])
    flags = dedup.set_index("sample_id").loc[members]
    texts = samples.set_index("sample_id").reindex(members)
    linked = [", ".join(d for d in ("exact", "semantic", "lexical") if bool(flags.at[i, d]))
              for i in members]
    return pd.DataFrame({"sample_id": members,
                         "keeper": flags["is_keeper"].astype(bool).to_numpy(),
                         "linked by": linked,
                         **{c: texts[c].fillna("").astype(str).to_numpy()
                            for c in ("instruction", "input", "output")}})


def eval_match(decontam: pd.DataFrame, sample_id: int) -> dict | None:
    """What ``decontaminate`` recorded for a flagged sample (None when it is clean)."""
    row = decontam.loc[decontam["sample_id"] == int(sample_id)]
    if row.empty or not bool(row["contaminated"].iloc[0]):
        return None
    r = row.iloc[0]
    out = {"n-gram share of the eval item": float(r["ngram_coverage"]),
           "shared n-grams": int(r["ngram_matches"])}
    if bool(r["by_ngram"]):
        out["eval file (n-grams)"] = str(r["eval_file"])
        out["eval row (n-grams)"] = int(r["eval_row"])
        out["matched n-grams"] = json.loads(r["matched_ngrams"] or "[]")
    if "nearest_eval_file" in r and bool(r["by_embedding"]):
        out["eval file (embedding)"] = str(r["nearest_eval_file"])
        out["eval row (embedding)"] = int(r["nearest_eval_row"])
        out["cosine"] = round(float(r["eval_cosine"]), 4)
    return out


def group_view(ws, sample_id: int | None) -> None:
    """Below the inspector: the inspected sample's near-duplicates and eval overlap."""
    if sample_id is None:
        return
    names = ws.score_names()
    if DECONTAM_NAME in names:
        match = eval_match(state.load_score(ws, DECONTAM_NAME), sample_id)
        if match is not None:
            st.text(f"sample #{int(sample_id)} overlaps the eval set")
            st.json(match, expanded=True)
    if DEDUP_NAME not in names:
        return
    rows = group_rows(state.load_samples(ws), state.load_score(ws, DEDUP_NAME), sample_id)
    if rows.empty:
        st.caption(f"Sample #{int(sample_id)} has no near-duplicates.")
        return
    st.subheader(f"Near-duplicate group of sample #{int(sample_id)} ({len(rows)} rows)")
    st.dataframe(rows[["sample_id", "keeper", "linked by"]].assign(
        instruction=[" ".join(t.split())[:80] for t in rows["instruction"]]),
        hide_index=True, key="group_table")
    for _, row in rows.head(MAX_SHOWN).iterrows():
        st.text(f"#{int(row['sample_id'])}" + (" · keeper" if row["keeper"] else "")
                + f" · linked by {row['linked by']}")
        text = row["instruction"] + ("\n" + row["input"] if row["input"] else "") \
            + "\n---\n" + row["output"]
        st.code(text, language=None, wrap_lines=True,
                height="content" if len(text) < 600 else TEXT_BOX_HEIGHT)
