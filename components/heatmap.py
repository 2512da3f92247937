"""An annotated heatmap whose cells can be clicked in Streamlit (the DS2 transition matrix).

Plotly heatmaps do not report single-cell clicks through Streamlit's selection events, so the
figure lays an invisible scatter point on every cell centre: clicking a cell selects that
point, and ``clicked_cell`` turns Streamlit's selection state back into (row, column).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

CELL_TRACE = "cells"


def annotated_heatmap(matrix, row_labels: Sequence[str], col_labels: Sequence[str], *,
                      title: str = "", x_title: str = "", y_title: str = "",
                      value_format: str = ".2f", counts=None, highlight: tuple[int, int] | None
                      = None, colorscale: str = "Blues", zmin: float | None = 0.0,
                      zmax: float | None = 1.0, height: int = 360) -> go.Figure:
    """Heatmap of ``matrix[row, col]`` with each value written in its cell.

    ``counts`` (same shape) is added to each cell's text and hover (e.g. flagged samples in
    that cell); ``highlight`` outlines one cell (the active filter). Row 0 is drawn at the top.
    """
    z = np.asarray(matrix, dtype=float)
    n_rows, n_cols = z.shape
    rows, cols = [str(r) for r in row_labels], [str(c) for c in col_labels]
    text = [[format(z[i, j], value_format) if np.isfinite(z[i, j]) else "–"
             for j in range(n_cols)] for i in range(n_rows)]
    if counts is not None:
        counts = np.asarray(counts)
        text = [[f"{text[i][j]}<br>n={int(counts[i, j]):,}" for j in range(n_cols)]
                for i in range(n_rows)]
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=rows, text=text, texttemplate="%{text}", textfont={"size": 13},
        colorscale=colorscale, zmin=zmin, zmax=zmax, showscale=True, hoverinfo="skip",
        colorbar={"thickness": 10}))
    # Invisible points on the cell centres carry the clicks (see the module notes).
    ii, jj = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    hover = [f"{y_title or 'row'} {rows[i]}, {x_title or 'column'} {cols[j]}: "
             f"{text[i][j].replace('<br>', ', ')}" for i, j in zip(ii.ravel(), jj.ravel())]
    fig.add_trace(go.Scatter(
        x=[cols[j] for j in jj.ravel()], y=[rows[i] for i in ii.ravel()], mode="markers",
        name=CELL_TRACE, customdata=np.stack([ii.ravel(), jj.ravel()], axis=1),
        marker={"size": max(18, int(220 / max(n_rows, n_cols))), "symbol": "square",
                "color": "rgba(0,0,0,0)"},
        hovertext=hover, hoverinfo="text", showlegend=False))
    if highlight is not None:
        i, j = highlight
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                      xref="x", yref="y", line={"color": "#d62728", "width": 3})
    fig.update_layout(
        title={"text": title, "font": {"size": 14}} if title else None, height=height,
        margin={"l": 10, "r": 10, "t": 36 if title else 10, "b": 10},
        xaxis={"title": x_title, "type": "category", "fixedrange": True,
               "range": [-0.5, n_cols - 0.5]},
        yaxis={"title": y_title, "type": "category", "fixedrange": True,
               "range": [n_rows - 0.5, -0.5]},
        dragmode=False, clickmode="event+select", plot_bgcolor="white")
    return fig


def clicked_cell(selection) -> tuple[int, int] | None:
    """(row, column) of the clicked cell from ``st.plotly_chart(..., on_select="rerun")``'s
    return value (or its ``selection`` dict), or None when nothing is selected."""
    if selection is None:
        return None
    sel = selection.get("selection", selection) if hasattr(selection, "get") else None
    if sel is None:
        sel = getattr(selection, "selection", None)
    points = (sel or {}).get("points", []) if hasattr(sel or {}, "get") else []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, dict):  # the browser sends a 2-element array as {"0": .., "1": ..}
            data = [data.get("0", data.get(0)), data.get("1", data.get(1))]
        if isinstance(data, (list, tuple)) and len(data) == 2 and None not in data:
            return int(data[0]), int(data[1])
    return None
