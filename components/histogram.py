"""Distribution of the map's colouring score, drawn under the map.

:func:`score_histogram` shows every scored sample, and the current subset (text-search
matches or the map selection) in red on its own axis (right), so eight selected rows are as
readable as 300 and the same filter is seen on the map and on the distribution. Categorical
columns (flags, clusters, classes) are drawn as bar counts side by side. The x axis spans the
1–99 % quantiles (``components.colouring.clip_range``): values beyond are counted in the
end bins, so one outlier does not squash the rest into a single bar. The bins are counted
here, so the figure holds 40 bars, not every value (200k values were 3 MB per rerun).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .colouring import clip_range, colour_values
from .map import HIGHLIGHT_COLOUR, _category_name, colour_label, is_categorical


def bin_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """``bins`` equal bins from ``lo`` to ``hi`` (one unit-wide bin when they are equal)."""
    return np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)


def bin_counts(values: pd.Series, edges: np.ndarray) -> np.ndarray:
    """Rows per bin; values beyond the edges are counted in the end bins."""
    clipped = np.clip(values.to_numpy(np.float64), edges[0], edges[-1])
    return np.histogram(clipped, bins=edges)[0]


def score_histogram(frame: pd.DataFrame, column: str, subset_ids=None, *, bins: int = 40,
                    subset_name: str = "filtered", height: int = 220) -> go.Figure:
    """Histogram of ``frame[column]`` (missing values left out, their count in the title),
    with the rows whose ``sample_id`` is in ``subset_ids`` overlaid."""
    values = colour_values(frame, column)
    present = values.dropna()
    label = colour_label(column)
    missing = int(values.isna().sum())
    subset = None
    if subset_ids is not None:
        subset = values[frame["sample_id"].isin(
            np.asarray(list(subset_ids), dtype=np.int64))].dropna()
    fig = go.Figure()
    if is_categorical(values, column):
        cats = sorted(present.unique().tolist())
        names = [_category_name(c) for c in cats]
        counts = present.value_counts()
        fig.add_trace(go.Bar(x=names, y=[int(counts.get(c, 0)) for c in cats], name="all",
                             marker_color="#1f77b4", offsetgroup="all"))
        if subset is not None:
            sub_counts = subset.value_counts()
            fig.add_trace(go.Bar(x=names, y=[int(sub_counts.get(c, 0)) for c in cats],
                                 name=subset_name, marker_color=HIGHLIGHT_COLOUR,
                                 offsetgroup="subset", yaxis="y2"))
        fig.update_layout(barmode="group", xaxis=dict(type="category"))
    elif len(present):
        lo, hi = clip_range(present)
        edges = bin_edges(lo, hi, bins)
        width = edges[1] - edges[0]
        centres = (edges[:-1] + edges[1:]) / 2
        fig.add_trace(go.Bar(x=centres, y=bin_counts(present, edges), width=width, name="all",
                             marker_color="#1f77b4", opacity=0.6))
        if subset is not None and len(subset):
            fig.add_trace(go.Bar(x=centres, y=bin_counts(subset, edges), width=width,
                                 name=subset_name, marker_color=HIGHLIGHT_COLOUR,
                                 opacity=0.85, yaxis="y2"))
        fig.update_layout(barmode="overlay", xaxis=dict(range=[edges[0], edges[-1]]))
    title = f"{html.escape(label)}: {len(present):,} scored"
    if missing:
        title += f", {missing:,} without a score"
    if subset is not None:
        title += f" · {len(subset):,} {html.escape(subset_name)}"
    if subset is not None:
        # the subset's own count axis on the right, in its colour, starting at zero like "all"
        fig.update_layout(yaxis=dict(title=dict(text="all", font=dict(color="#1f77b4")),
                                     rangemode="tozero"),
                          yaxis2=dict(overlaying="y", side="right", rangemode="tozero",
                                      tickmode="auto",  # whole counts, not synced to "all"
                                      showgrid=False,
                                      title=dict(text=html.escape(subset_name),
                                                 font=dict(color=HIGHLIGHT_COLOUR)),
                                      tickfont=dict(color=HIGHLIGHT_COLOUR)))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0),
                      title=dict(text=title, font=dict(size=13)), showlegend=subset is not None,
                      bargap=0.05, legend=dict(orientation="h", y=1.15, x=1, xanchor="right"))
    return fig
