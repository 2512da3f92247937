"""Figures and tables for the Audit page (DS2 mis-ratings). Plain plotly and pandas.

Class histograms (raw, DS2 curated, and curated with the person's decisions), per-class flag
rates against DS2's expected noise rates, the flagged-transition counts behind the heatmap,
the neighbour evidence table and the small map with the current sample ringed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .map import HIGHLIGHT_COLOUR, map_figure

RAW_COLOUR = "#9e9e9e"
CURATED_COLOUR = "#1f77b4"
DECIDED_COLOUR = "#2ca02c"
NEIGHBOUR_COLOUR = "#111111"
PREVIEW_CHARS = 90


def transition_counts(ds2: pd.DataFrame, num_classes: int) -> np.ndarray:
    """counts[true, rated]: flagged samples rated ``rated`` whose suggestion is ``true``
    (laid out like T, so a cell of T and its count sit together)."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    flagged = ds2[ds2["flagged"].astype(bool) & (ds2["rating_class"] >= 0) &
                  (ds2["suggested"] >= 0)]
    np.add.at(counts, (flagged["suggested"].to_numpy(int), flagged["rating_class"].to_numpy(int)),
              1)
    return counts


def class_histograms(raw: Sequence[int], curated: Sequence[int],
                     decided: Sequence[int] | None = None,
                     labels: Sequence[str] | None = None, height: int = 260) -> go.Figure:
    """Samples per class: raw ratings, DS2 curated, and curated with audit decisions."""
    k = len(raw)
    names = list(labels) if labels is not None else [str(c) for c in range(k)]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=list(raw), name="raw", marker_color=RAW_COLOUR))
    fig.add_trace(go.Bar(x=names, y=list(curated), name="DS2 curated",
                         marker_color=CURATED_COLOUR))
    if decided is not None:
        fig.add_trace(go.Bar(x=names, y=list(decided), name="curated + audit",
                             marker_color=DECIDED_COLOUR))
    fig.update_layout(barmode="group", height=height, margin=dict(l=0, r=0, t=30, b=0),
                      xaxis=dict(type="category", title="class"),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    return fig


def flag_rates(histogram_raw: Sequence[int], flagged_per_class: Sequence[int],
               noise_rates: Sequence[float | None]) -> pd.DataFrame:
    """Per class: rated count, flagged count, flagged share and DS2's expected noise rate."""
    raw = np.asarray(histogram_raw, dtype=float)
    flagged = np.asarray(flagged_per_class, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(raw > 0, flagged / raw, np.nan)
    expected = [np.nan if r is None else float(r) for r in noise_rates]
    return pd.DataFrame({"class": np.arange(len(raw)), "rated": raw.astype(int),
                         "flagged": flagged.astype(int), "flag_rate": share,
                         "expected_noise": expected})


def flag_rate_figure(rates: pd.DataFrame, labels: Sequence[str] | None = None,
                     height: int = 260) -> go.Figure:
    """Flagged share per class as bars, DS2's expected noise rate ρ as markers."""
    names = list(labels) if labels is not None else [str(c) for c in rates["class"]]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=rates["flag_rate"], name="flagged share",
                         marker_color="#ff7f0e",
                         text=[f"{f:,} of {r:,}" for f, r in zip(rates["flagged"],
                                                                   rates["rated"])],
                         textposition="outside", cliponaxis=False))
    fig.add_trace(go.Scatter(x=names, y=rates["expected_noise"], mode="markers",
                             name="expected noise ρ",
                             marker=dict(symbol="line-ew", size=28, color="#333",
                                         line=dict(width=3, color="#333"))))
    top = np.nanmax(np.r_[rates["flag_rate"].to_numpy(float),
                          rates["expected_noise"].to_numpy(float), 0.1])
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0),
                      xaxis=dict(type="category", title="raw class"),
                      yaxis=dict(tickformat=".0%", range=[0, min(1.0, top * 1.25) or 1.0]),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    return fig


def one_line(text, chars: int = PREVIEW_CHARS) -> str:
    """Whitespace collapsed, cut to ``chars``: for tables (the dataframe shows plain text)."""
    text = " ".join(str(text if isinstance(text, str) else "").split())
    return text if len(text) <= chars else text[:chars - 1] + "…"


def evidence_table(neighbours: pd.DataFrame, samples: pd.DataFrame,
                   decisions: dict | None = None) -> pd.DataFrame:
    """The neighbour evidence (``core.scores.simifeat.neighbour_evidence``) with each
    neighbour's text preview; ``decisions`` (sample_id → rating) adds the audited rating where
    there is one."""
    text = samples.set_index("sample_id")["instruction"]
    out = pd.DataFrame({
        "neighbour": neighbours["neighbour_id"].astype(int).to_numpy(),
        "similarity": neighbours["similarity"].round(3).to_numpy(),
        "rating": neighbours["rating"].to_numpy(),
        "instruction": [one_line(text.get(int(i), "")) for i in neighbours["neighbour_id"]],
    })
    if decisions:
        out.insert(3, "audited", pd.array([decisions.get(int(i)) for i in out["neighbour"]],
                                          dtype="Int64"))
    return out


def audit_map_figure(frame: pd.DataFrame, sample_id: int, neighbour_ids: Sequence[int],
                     colour: str | None = None, height: int = 300) -> go.Figure:
    """The embedding map, small: every sample (coloured by ``colour``), the neighbours as
    black rings and the current sample as a large red ring."""
    fig = map_figure(frame, colour, show_titles=False,
                     point_size=4.0, height=height, revision="audit-map")
    near = frame[frame["sample_id"].isin(np.asarray(list(neighbour_ids), dtype=np.int64))]
    near = near[near["x"].notna()]
    if len(near):
        custom = np.empty((len(near), 2), dtype=object)
        custom[:, 0] = near["sample_id"].to_numpy()
        custom[:, 1] = "neighbour"
        fig.add_trace(go.Scattergl(
            x=near["x"].to_numpy(), y=near["y"].to_numpy(), mode="markers",
            name="neighbours", customdata=custom, text=near["preview"].to_numpy(),
            hovertemplate="#%{customdata[0]} · neighbour<br>%{text}<extra></extra>",
            marker=dict(size=9, color="rgba(0,0,0,0)",
                        line=dict(width=1.5, color=NEIGHBOUR_COLOUR))))
    me = frame[frame["sample_id"] == int(sample_id)]
    if len(me) and me["x"].notna().all():
        fig.add_trace(go.Scattergl(
            x=me["x"].to_numpy(), y=me["y"].to_numpy(), mode="markers", name="this sample",
            hoverinfo="skip",
            marker=dict(size=18, color="rgba(0,0,0,0)",
                        line=dict(width=3, color=HIGHLIGHT_COLOUR))))
    fig.update_layout(showlegend=True, dragmode="pan",
                      legend=dict(orientation="h", y=-0.02, x=0, yanchor="top"))
    return fig


def decision_history(log: pd.DataFrame, limit: int = 20) -> pd.DataFrame:
    """The newest decisions first, for a small table."""
    if log.empty:
        return log
    out = log.iloc[::-1].head(limit).copy()
    out["time"] = out["time"].astype(str).str.replace("T", " ").str.slice(0, 19)
    return out[["time", "sample_id", "action", "old", "suggested", "new"]].reset_index(drop=True)

