"""Distribution of the map's colouring score, drawn under the map.

:func:`score_histogram` shows every scored sample, and the current subset (text-search
matches or the map selection) overlaid in red, so the same filter is seen on the map and on
the distribution. Categorical columns (flags, clusters, classes) are drawn as bar counts.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .map import HIGHLIGHT_COLOUR, _category_name, colour_label, is_categorical


def score_histogram(frame: pd.DataFrame, column: str, subset_ids=None, *, bins: int = 40,
                    subset_name: str = "filtered", height: int = 220) -> go.Figure:
    """Histogram of ``frame[column]`` (missing values left out, their count in the title),
    with the rows whose ``sample_id`` is in ``subset_ids`` overlaid."""
    values = frame[column]
    present = values.dropna()
    label = colour_label(column)
    missing = int(values.isna().sum())
    subset = None
    if subset_ids is not None:
        subset = frame.loc[frame["sample_id"].isin(np.asarray(list(subset_ids), dtype=np.int64)),
                           column].dropna()
    fig = go.Figure()
    if is_categorical(values, column):
        cats = sorted(present.unique().tolist())
        names = [_category_name(c) for c in cats]
        counts = present.value_counts()
        fig.add_trace(go.Bar(x=names, y=[int(counts.get(c, 0)) for c in cats], name="all",
                             marker_color="#1f77b4"))
        if subset is not None:
            sub_counts = subset.value_counts()
            fig.add_trace(go.Bar(x=names, y=[int(sub_counts.get(c, 0)) for c in cats],
                                 name=subset_name, marker_color=HIGHLIGHT_COLOUR))
        fig.update_layout(barmode="overlay", xaxis=dict(type="category"))
    elif len(present):
        lo, hi = float(present.min()), float(present.max())
        size = (hi - lo) / bins if hi > lo else 1.0
        xbins = dict(start=lo, end=hi + size * 1e-6, size=size)
        fig.add_trace(go.Histogram(x=present.to_numpy(), xbins=xbins, name="all",
                                   marker_color="#1f77b4", opacity=0.75))
        if subset is not None and len(subset):
            fig.add_trace(go.Histogram(x=subset.to_numpy(), xbins=xbins, name=subset_name,
                                       marker_color=HIGHLIGHT_COLOUR, opacity=0.85))
        fig.update_layout(barmode="overlay")
    title = f"{html.escape(label)}: {len(present):,} scored"
    if missing:
        title += f", {missing:,} without a score"
    if subset is not None:
        title += f" · {len(subset):,} {html.escape(subset_name)}"
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0),
                      title=dict(text=title, font=dict(size=13)), showlegend=subset is not None,
                      bargap=0.05, legend=dict(orientation="h", y=1.15, x=1, xanchor="right"))
    return fig
