"""The next step after DS2 on the Data page: how many ratings it flagged, and a link to the
Audit page where a person reviews them."""

from __future__ import annotations

import streamlit as st

from . import state
from .messages import plain


def ds2_next_step(ws) -> None:
    """One line per DS2 score: "N flagged on <rating> → open Audit" (a page link)."""
    from core.names import ds2_scores

    for score, column in ds2_scores(ws).items():
        ds2 = state.load_score(ws, score)
        flagged = int(ds2["flagged"].astype(bool).sum()) if "flagged" in ds2 else 0
        if flagged:
            label = f"{flagged:,} flagged on {column} → open Audit"
        else:
            label = f"DS2 flagged nothing on {column}: open Audit to see why"
        st.page_link("pages/audit.py", label=plain(label), icon=":material/fact_check:")
