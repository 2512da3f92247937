"""Looking at samples: text search, the table of selected rows, one sample's full text.

Sample text is data, never markup: :func:`show_sample` renders it with ``st.code`` (plain
text in a scrollable box), so ``<script>``, HTML and markdown show literally.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd
import streamlit as st

from .map import colour_label

SEARCH_FIELDS = ("instruction", "input", "output")
TABLE_PREVIEW_CHARS = 80
TEXT_BOX_HEIGHT = 220


def search_samples(frame: pd.DataFrame, query: str, regex: bool = False,
                   fields: Sequence[str] = SEARCH_FIELDS,
                   case_sensitive: bool = False) -> tuple[np.ndarray, str | None]:
    """Boolean mask of rows whose ``fields`` contain ``query`` (substring, or a regular
    expression when ``regex``), and an error sentence when the expression is invalid (the
    mask is then all False)."""
    mask = np.zeros(len(frame), dtype=bool)
    if not query:
        return mask, None
    flags = 0 if case_sensitive else re.IGNORECASE
    if regex:
        try:
            pattern = re.compile(query, flags)
        except re.error as err:
            return mask, f"invalid regular expression: {err}"
    else:
        pattern = re.compile(re.escape(query), flags)
    for name in fields:
        if name in frame:
            mask |= frame[name].fillna("").astype(str).str.contains(pattern, regex=True)\
                .to_numpy(dtype=bool)
    return mask, None


def selection_table(frame: pd.DataFrame, ids: Sequence[int],
                    score_columns: Sequence[str]) -> pd.DataFrame:
    """The selected rows with a one-line preview of their text and their scores, in the
    order given (for ``st.dataframe``; the dataframe widget shows text, never HTML)."""
    rows = frame.set_index("sample_id").reindex(list(ids))
    rows = rows[rows.index.notna()]
    out = pd.DataFrame({"sample_id": rows.index.astype(np.int64)})
    out["instruction"] = [_one_line(v) for v in rows["instruction"]]
    out["output"] = [_one_line(v) for v in rows["output"]]
    for col in score_columns:
        if col in rows:
            out[colour_label(col)] = rows[col].to_numpy()
    if "cluster_title" in rows:
        out["cluster"] = rows["cluster_title"].to_numpy()
    return out.reset_index(drop=True)


def _one_line(text) -> str:
    text = " ".join(str(text if isinstance(text, str) else "").split())
    return text if len(text) <= TABLE_PREVIEW_CHARS else text[:TABLE_PREVIEW_CHARS - 1] + "…"


def show_sample(row: pd.Series, score_columns: Sequence[str] = ()) -> None:
    """Full text of one sample as plain text (scrollable boxes), then its scores."""
    # st.text, not st.caption: a cluster title is made of sample words (markdown is data)
    st.text(f"sample #{int(row['sample_id'])}"
               + (f" · {row['cluster_title']}" if isinstance(row.get("cluster_title"), str)
                  else ""))
    for name in SEARCH_FIELDS:
        value = row.get(name)
        text = value if isinstance(value, str) else ""
        if name == "input" and not text:
            continue
        st.text(name)
        st.code(text or "(empty)", language=None, wrap_lines=True, height="content"
                if len(text) < 600 else TEXT_BOX_HEIGHT)
    scores = {colour_label(c): row[c] for c in score_columns if c in row and pd.notna(row[c])}
    if scores:
        st.dataframe(pd.DataFrame({"score": list(scores), "value": list(scores.values())}),
                     hide_index=True)
