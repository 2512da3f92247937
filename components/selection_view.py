"""Figures for the Select & Export page: what a selection keeps, where, and what it disagrees on.

Plain numpy/pandas in, plotly figures out. Large pools are drawn from a fixed random subset
of points (``display_subset``) so a slider redraw stays fast; counts are always computed on
every row.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .map import colour_label

KEPT_COLOUR = "#1f77b4"
DROPPED_COLOUR = "rgba(150,150,150,0.45)"
THRESHOLD_COLOUR = "#d62728"
MAX_POINTS = 20_000


def display_subset(n: int, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Row positions to draw: all rows up to ``max_points``, else a fixed random subset
    (the same one on every redraw, so points do not jump)."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def bin_edges(values: np.ndarray, bins: int = 40) -> np.ndarray:
    """Equal-width edges over the finite values (one bin of width 1 when all are equal)."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.array([lo - 0.5, lo + 0.5])
    if np.all(np.mod(v, 1) == 0) and hi - lo <= 20:  # integer classes: one bar per class
        return np.arange(lo - 0.5, hi + 1.0, 1.0)
    return np.linspace(lo, hi, bins + 1)


def kept_histogram(values: np.ndarray, kept: np.ndarray, label: str, *,
                   lo: float | None = None, hi: float | None = None,
                   edges: np.ndarray | None = None, height: int = 200) -> go.Figure:
    """Histogram of one score with the kept rows coloured and the dropped rows grey, and the
    threshold bounds ``lo``/``hi`` drawn as red lines. Missing values are counted in the
    title."""
    values = np.asarray(values, dtype=np.float64)
    kept = np.asarray(kept, dtype=bool)
    finite = np.isfinite(values)
    edges = bin_edges(values) if edges is None else edges
    all_counts, _ = np.histogram(values[finite], bins=edges)
    kept_counts, _ = np.histogram(values[finite & kept], bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centres, y=kept_counts, width=width, name="kept",
                         marker_color=KEPT_COLOUR, hovertemplate="%{x:.3g}: %{y:,} kept"
                         "<extra></extra>"))
    fig.add_trace(go.Bar(x=centres, y=all_counts - kept_counts, width=width, name="dropped",
                         marker_color=DROPPED_COLOUR, hovertemplate="%{x:.3g}: %{y:,} "
                         "dropped<extra></extra>"))
    fig.update_layout(shapes=[_vline(b) for b in (lo, hi)
                              if b is not None and np.isfinite(b)])
    missing = int((~finite).sum())
    title = (f"{html.escape(label)}: {int((finite & kept).sum()):,} of {int(finite.sum()):,} "
             "kept" + (f" · {missing:,} without a score" if missing else ""))
    fig.update_layout(barmode="stack", bargap=0.02, height=height,
                      margin=dict(l=0, r=0, t=28, b=0), showlegend=False,
                      title=dict(text=title, font=dict(size=12)))
    return fig


def budget_map(frame: pd.DataFrame, kept: np.ndarray, titles: dict | None = None,
               max_points: int = MAX_POINTS, height: int = 480) -> go.Figure:
    """The embedding map with kept points bright and dropped points muted grey.

    ``frame`` has ``sample_id, x, y, cluster`` (the Explore frame); ``kept`` is aligned with
    it. Same look as ``components.map.map_figure``, but the traces carry numbers only (ids and
    coordinates travel as binary arrays; hover shows the sample id): map_figure's per-point
    hover text costs ~3 MB and ~1 s per redraw at 50k rows, too slow for a budget slider.
    """
    rows = display_subset(len(frame), max_points)
    x = frame["x"].to_numpy(np.float32)[rows]
    y = frame["y"].to_numpy(np.float32)[rows]
    ids = frame["sample_id"].to_numpy(np.int64)[rows]
    keep = np.asarray(kept, dtype=bool)[rows]
    ok = np.isfinite(x) & np.isfinite(y)
    fig = go.Figure()
    for name, mask, marker in (
            ("dropped", ~keep & ok, dict(size=3.5, color=DROPPED_COLOUR)),
            ("kept", keep & ok, dict(size=4.5, color=KEPT_COLOUR, opacity=0.95))):
        fig.add_trace(go.Scattergl(
            x=x[mask], y=y[mask], customdata=ids[mask], mode="markers", name=name,
            marker=dict(marker, line=dict(width=0)),
            hovertemplate=f"#%{{customdata}} · {name}<extra></extra>"))
    if titles and "cluster" in frame:
        part = pd.DataFrame({"x": x[ok], "y": y[ok],
                             "cluster": frame["cluster"].to_numpy()[rows][ok]})
        centres = part.dropna().groupby("cluster")[["x", "y"]].median()
        fig.update_layout(annotations=[
            dict(x=float(row["x"]), y=float(row["y"]), text=html.escape(_short(titles[int(c)], 32)),
                 showarrow=False, font=dict(size=11, color="#222"),
                 bgcolor="rgba(255,255,255,0.6)", borderpad=1)
            for c, row in centres.iterrows() if titles.get(int(c))])
    fig.update_layout(
        height=height, margin=dict(l=0, r=0, t=10, b=0), dragmode="pan",
        uirevision="budget-map", hovermode="closest", plot_bgcolor="white",
        legend=dict(orientation="h", y=1.0, x=0, yanchor="bottom", itemsizing="constant"),
        xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"))
    return fig


def cluster_retention(clusters: np.ndarray, kept: np.ndarray,
                      titles: dict | None = None) -> pd.DataFrame:
    """Per cluster: size, kept count and kept share (largest clusters first)."""
    c = pd.Series(clusters)
    ok = c.notna().to_numpy()
    frame = pd.DataFrame({"cluster": c[ok].astype(int).to_numpy(),
                          "kept": np.asarray(kept, dtype=bool)[ok]})
    out = frame.groupby("cluster").agg(size=("kept", "size"), kept=("kept", "sum"))
    out["share"] = out["kept"] / out["size"]
    out = out.reset_index()
    out["title"] = [(titles or {}).get(int(k), "") for k in out["cluster"]]
    return out.sort_values(["size", "cluster"], ascending=[False, True]).reset_index(drop=True)


def retention_figure(retention: pd.DataFrame, overall: float, height: int | None = None
                     ) -> go.Figure:
    """Horizontal bars: the kept share of every cluster, with the overall share as a line."""
    labels = [f"{int(c)}: {html.escape(_short(t, 34))}" if t else f"cluster {int(c)}"
              for c, t in zip(retention["cluster"], retention["title"])]
    fig = go.Figure(go.Bar(
        y=labels, x=retention["share"], orientation="h", marker_color=KEPT_COLOUR,
        text=[f"{int(k):,}/{int(n):,}" for k, n in zip(retention["kept"], retention["size"])],
        textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{x:.1%} kept (%{text})<extra></extra>"))
    fig.update_layout(shapes=[_vline(overall, width=1.5)], annotations=[dict(
        x=overall, y=1.0, xref="x", yref="paper", yanchor="bottom", showarrow=False,
        text=f"overall {overall:.1%}", font=dict(size=11, color=THRESHOLD_COLOUR))])
    fig.update_layout(height=height or max(220, 26 * len(labels) + 60),
                      margin=dict(l=0, r=40, t=30, b=0),
                      xaxis=dict(tickformat=".0%", range=[0, min(1.0, max(
                          [overall, *retention["share"].tolist(), 0.05]) * 1.2)]),
                      yaxis=dict(autorange="reversed", type="category"))
    return fig


def _vline(x: float, width: float = 2.0) -> dict:
    """A dashed red vertical line across the plot (a layout shape: far cheaper than
    ``add_vline``, which matters on every slider move)."""
    return dict(type="line", xref="x", yref="paper", x0=float(x), x1=float(x), y0=0, y1=1,
                line=dict(color=THRESHOLD_COLOUR, dash="dash", width=width))


def _short(text: str, chars: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= chars else text[:chars - 1] + "…"


# ----- score disagreement -----------------------------------------------------------------
def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each finite value scaled to [0, 1] (ties get their mean rank); NaN stays."""
    v = pd.Series(np.asarray(values, dtype=np.float64))
    ranks = v.rank(method="average", na_option="keep")
    n = int(v.notna().sum())
    return ((ranks - 1) / max(n - 1, 1)).to_numpy()


def default_split(values: np.ndarray) -> float:
    """Where to split a score into high and low: its median; for integer classes (ratings)
    half a class above the median (below it at the top class), so a class is never cut."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return 0.0
    median = float(np.median(v))
    if np.all(np.mod(v, 1) == 0):
        median = float(np.floor(median))
        return median + 0.5 if median + 0.5 < v.max() else median - 0.5
    return median


def quadrant_counts(x: np.ndarray, y: np.ndarray, x_cut: float, y_cut: float) -> dict:
    """Rows with both scores, split at the cuts: {"high x, high y": n, ...} (≥ cut = high)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    hx, hy = x[ok] >= x_cut, y[ok] >= y_cut
    return {"high x, high y": int((hx & hy).sum()), "high x, low y": int((hx & ~hy).sum()),
            "low x, high y": int((~hx & hy).sum()), "low x, low y": int((~hx & ~hy).sum())}


def disagreements(frame: pd.DataFrame, x_col: str, y_col: str, top: int = 50) -> pd.DataFrame:
    """Rows where the two scores disagree most: largest |percentile rank x − rank y|.

    Positive ``rank_gap`` = ranked higher by x than by y."""
    rx, ry = percentile_ranks(frame[x_col]), percentile_ranks(frame[y_col])
    gap = rx - ry
    out = pd.DataFrame({"sample_id": frame["sample_id"].to_numpy(),
                        x_col: frame[x_col].to_numpy(), y_col: frame[y_col].to_numpy(),
                        "rank_gap": gap})
    out = out[np.isfinite(gap)]
    order = np.lexsort((out["sample_id"].to_numpy(), -np.abs(out["rank_gap"].to_numpy())))
    return out.iloc[order[:top]].reset_index(drop=True)


def _jitter(values: np.ndarray, seed: int) -> np.ndarray:
    """Small vertical spread for integer-valued scores (ratings), display only."""
    finite = values[np.isfinite(values)]
    if len(finite) and np.all(np.mod(finite, 1) == 0) and len(np.unique(finite)) <= 12:
        rng = np.random.default_rng(seed)
        return values + rng.uniform(-0.18, 0.18, len(values))
    return values


def disagreement_scatter(frame: pd.DataFrame, x_col: str, y_col: str, x_cut: float,
                         y_cut: float, max_points: int = MAX_POINTS, height: int = 440
                         ) -> go.Figure:
    """Scatter of two scores with the quadrant cuts and each quadrant's count. Integer
    scores (ratings) get a small jitter so their stripes are readable; hover shows the id
    and the true values. Numbers only in the traces (fast at 50k rows)."""
    xv = frame[x_col].to_numpy(np.float64)
    yv = frame[y_col].to_numpy(np.float64)
    both = np.isfinite(xv) & np.isfinite(yv)
    pos = np.flatnonzero(both)[display_subset(int(both.sum()), max_points)]
    ids = frame["sample_id"].to_numpy(np.int64)[pos]
    custom = np.stack([ids, xv[pos], yv[pos]], axis=1).astype(np.float32)
    xl, yl = html.escape(colour_label(x_col)), html.escape(colour_label(y_col))
    fig = go.Figure(go.Scattergl(
        x=_jitter(xv[pos], 1).astype(np.float32), y=_jitter(yv[pos], 2).astype(np.float32),
        mode="markers", customdata=custom,
        marker=dict(size=4, color=KEPT_COLOUR, opacity=0.6), name="samples",
        hovertemplate="#%{customdata[0]} · " + xl + " %{customdata[1]:.4g} · " + yl
                      + " %{customdata[2]:.4g}<extra></extra>"))
    counts = quadrant_counts(xv, yv, x_cut, y_cut)
    corners = [(0.99, 0.99, "right", "top"), (0.99, 0.01, "right", "bottom"),
               (0.01, 0.99, "left", "top"), (0.01, 0.01, "left", "bottom")]
    fig.update_layout(
        shapes=[_vline(x_cut, width=1.5),
                dict(type="line", xref="paper", yref="y", x0=0, x1=1, y0=y_cut, y1=y_cut,
                     line=dict(color=THRESHOLD_COLOUR, dash="dash", width=1.5))],
        annotations=[dict(xref="paper", yref="paper", x=ax, y=ay, xanchor=xa, yanchor=ya,
                          text=f"{key}: {n:,}", showarrow=False,
                          bgcolor="rgba(255,255,255,0.8)", font=dict(size=12))
                     for (key, n), (ax, ay, xa, ya) in zip(counts.items(), corners)])
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=10, b=0), dragmode="lasso",
                      xaxis=dict(title=xl, **_class_ticks(xv[pos])),
                      yaxis=dict(title=yl, **_class_ticks(yv[pos])), showlegend=False,
                      plot_bgcolor="white", uirevision=f"{x_col}|{y_col}")
    return fig


def _class_ticks(values: np.ndarray) -> dict:
    """One tick per class for integer scores (the jitter would otherwise suggest decimals)."""
    classes = np.unique(values[np.isfinite(values)])
    if len(classes) and len(classes) <= 12 and np.all(np.mod(classes, 1) == 0):
        return {"tickvals": classes.tolist(), "ticktext": [str(int(c)) for c in classes]}
    return {}


def steps_table(steps: Sequence[dict]) -> pd.DataFrame:
    """The per-step counts of a selection (``Selection.steps``) as a table."""
    return pd.DataFrame([{"step": s["step"], "in": s["rows_in"], "out": s["rows_out"],
                          "dropped": ", ".join(f"{n:,} {r}" for r, n in s["dropped"].items())
                          or "–"} for s in steps])
