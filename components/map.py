"""The 2-D map of samples as a plotly ``Scattergl`` figure.

:func:`map_figure` takes the Explore frame (``components.state.build_explore_frame``: one row
per sample with ``sample_id, x, y, preview`` and score columns) and options, and returns a
``go.Figure``; it only arranges arrays the frame already holds, so changing the colour never
recomputes the map. Every trace carries ``customdata = sample_id`` so a
selection maps back to samples whatever trace the points belong to.

Colouring: a numeric score gets a continuous scale with a colour bar; a boolean, a cluster or
a column with few distinct integer values gets one trace per value with a legend. Rows
without the score are drawn in grey underneath. Sample text appears only in hover labels,
HTML-escaped (plotly renders a subset of HTML there).
"""

from __future__ import annotations

import html
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .colouring import clip_range, colour_values

MISSING_COLOUR = "rgba(160,160,160,0.35)"
HIGHLIGHT_COLOUR = "#e4002b"
INSPECTED_COLOUR = "#000000"
MAX_CATEGORIES = 24
DENSE_MAP_POINTS = 50_000  # above this many points the markers are drawn at DENSE_POINT_SIZE
DENSE_POINT_SIZE = 2.0
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
           "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#9c9ede",
           "#cedb9c", "#e7ba52", "#e7969c")

# Friendly names for well-known score columns; anything else shows its column name.
KNOWN_LABELS = {
    "cluster": "cluster",
    "ifd.ifd": "IFD",
    "ifd.ifd_ppl": "IFD (perplexity ratio)",
    "rifd.rifd": "r-IFD",
    "rifd.rifd_ppl": "r-IFD (perplexity ratio)",
    "recost.recost": "RECOST",
}
# DS2 columns in the order a person wants them: the curated rating first.
DS2_FIELD_ORDER = ("curated", "rating_class", "flagged", "long_tail", "confidence",
                   "suggested", "noisy_avg")


def colour_label(column: str) -> str:
    """How a colour column is named in pickers, legends and hover labels."""
    if column in KNOWN_LABELS:
        return KNOWN_LABELS[column]
    if column.startswith("ds2_") and "." in column:
        rating, field = column[4:].split(".", 1)
        return f"DS2 {field} ({rating})"
    return column


def colour_columns(frame: pd.DataFrame) -> list[str]:
    """Columns of the Explore frame a map can be coloured by, in a sensible order."""
    fixed = {"sample_id", "source_row", "x", "y", "preview", "cluster_title", "instruction",
             "input", "output", "record", "duplicate_of",
             "map.cluster", "samples.duplicate_of"}  # recipe aliases added by components.pool
    numeric = [c for c in frame.columns if c not in fixed and
               (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))]
    scores = [c for c in numeric if "." in c]
    order = {c: i for i, c in enumerate(KNOWN_LABELS)}
    fields = {f: i for i, f in enumerate(DS2_FIELD_ORDER)}

    def rank(c: str) -> tuple:
        name, field = c.split(".", 1)
        return (order.get(c, len(order)), name, fields.get(field, len(fields)), field)

    scores.sort(key=rank)
    others = [c for c in numeric if "." not in c and c != "cluster"]
    has_cluster = "cluster" in frame and frame["cluster"].notna().any()
    return scores + others + (["cluster"] if has_cluster else [])


def is_categorical(values: pd.Series, column: str = "") -> bool:
    """Booleans, clusters and integer columns with few values get a legend, not a scale."""
    if column == "cluster" or column.endswith((".flagged", ".long_tail", ".rating_class",
                                                ".curated", ".suggested")):
        return values.dropna().nunique() <= 4 * MAX_CATEGORIES
    present = values.dropna()
    if pd.api.types.is_bool_dtype(values):
        return True
    if len(present) == 0:
        return False
    as_float = present.astype("float64")
    return bool(np.all(np.mod(as_float, 1) == 0)) and present.nunique() <= MAX_CATEGORIES


def _category_name(value) -> str:
    if pd.isna(value):
        return "–"
    as_float = float(value)
    return str(int(as_float)) if as_float.is_integer() else f"{as_float:g}"


def _hovertemplate(label: str, value: str, with_text: bool = True) -> str:
    """Hover label: sample id, the colour score, the escaped preview (the trace's text).
    Values come from plotly itself (marker colour or trace name), so the only per-point
    payload besides coordinates is the preview and the sample_id."""
    head = "#%{customdata}"
    if label:
        head += " · " + html.escape(label) + ": " + value
    return head + ("<br>%{text}" if with_text else "") + "<extra></extra>"


def point_size_for(points: int) -> float:
    """Marker size for a map of ``points`` points. Above :data:`DENSE_MAP_POINTS` the points
    overlap anyway, and a software-rendered browser redraws a 200k-point map after each
    selection in about half the time at 2 px as at 4 px (bench/README.md, Explore)."""
    return DENSE_POINT_SIZE if points > DENSE_MAP_POINTS else 4.0


def map_figure(frame: pd.DataFrame, colour: str | None = None, *,
               highlight: Iterable[int] | None = None,
               titles: dict[int, str] | None = None, show_titles: bool = True,
               point_size: float | None = None, height: int = 640,
               revision: str | None = None, hover_text: bool = True,
               selected: Iterable[int] | None = None,
               inspected: int | None = None) -> go.Figure:
    """Scattergl map of ``frame`` coloured by ``colour`` (a column of the frame or None).

    ``highlight``: sample_ids drawn again on top as red rings (text-search matches).
    ``titles``: cluster id → title, written at the median point of each cluster.
    ``revision``: plotly ``uirevision`` (keep it per workspace, so zoom survives a colour
    change). Rows without coordinates are left out.
    ``hover_text``: put each sample's preview in its hover label. It is most of the figure's
    size (about 6 MB at 50k points), so large maps leave it out and hover shows numbers.
    Coordinates and colours go out as float32 (plotly sends numpy arrays as binary).
    ``selected``: sample_ids kept selected (``selectedpoints`` of every trace), so a new
    colouring shows the same selection the inspector and histogram use.
    ``inspected``: the sample_id read in full below the map, drawn as a black ring on top.
    ``point_size``: marker size in pixels (default: :func:`point_size_for` the map).
    A continuous scale spans the 1–99 % quantiles; values beyond get the end colours.
    """
    frame = frame[frame["x"].notna() & frame["y"].notna()]
    point_size = point_size_for(len(frame)) if point_size is None else point_size
    fig = go.Figure()
    label = colour_label(colour) if colour in frame else ""
    marker_base = dict(size=point_size, opacity=0.85, line=dict(width=0))
    keep = (np.asarray(list(selected), dtype=np.int64) if selected is not None
            else np.empty(0, dtype=np.int64))

    def add(part: pd.DataFrame, name: str, marker: dict, showlegend: bool,
            value: str = "%{fullData.name}", selectable: bool = True) -> None:
        chosen = None
        if selectable and keep.size:
            chosen = np.flatnonzero(part["sample_id"].isin(keep).to_numpy()).astype(np.int32)
        fig.add_trace(go.Scattergl(
            selectedpoints=chosen, unselected=dict(marker=dict(opacity=0.2)),
            x=part["x"].to_numpy(np.float32), y=part["y"].to_numpy(np.float32),
            mode="markers", name=name, marker=marker,
            customdata=part["sample_id"].to_numpy(np.int32),
            text=part["preview"].to_numpy() if hover_text else None,
            hovertemplate=_hovertemplate(label, value, hover_text), showlegend=showlegend))

    if colour is None or colour not in frame:
        add(frame, "samples", dict(marker_base, color="#1f77b4"), False)
    else:
        values = colour_values(frame, colour)
        frame = frame.assign(**{colour: values})
        missing = values.isna().to_numpy()
        if missing.any():
            nothing = "not flagged" if colour.endswith(".suggested") else "no score"
            add(frame[missing], nothing, dict(marker_base, color=MISSING_COLOUR), True)
        present = frame[~missing]
        categorical = is_categorical(values, colour)
        if categorical:
            cats = sorted(present[colour].dropna().unique().tolist())
            for i, cat in enumerate(cats):
                mask = (present[colour] == cat).to_numpy()
                name = _category_name(cat)
                if colour == "cluster" and titles:
                    name = f"{name}: {html.escape(_short(titles.get(int(cat), ''), 40))}"
                add(present[mask], name, dict(marker_base, color=PALETTE[i % len(PALETTE)]),
                    True)
        else:
            span = clip_range(present[colour])
            limits = dict(cmin=span[0], cmax=span[1]) if span else {}
            add(present, label, dict(marker_base, color=present[colour].to_numpy(np.float32),
                                     colorscale="Viridis", showscale=True, **limits,
                                     colorbar=dict(title=dict(text=html.escape(label)),
                                                   thickness=14)),
                False, "%{marker.color:.4g}")

    if highlight is not None:
        wanted = np.asarray(list(highlight), dtype=np.int64)
        hit = frame[frame["sample_id"].isin(wanted)]
        if len(hit):
            add(hit, f"matches ({len(hit):,})",
                dict(size=point_size + 6, color="rgba(0,0,0,0)",
                     line=dict(width=1.5, color=HIGHLIGHT_COLOUR)), True, "search match",
                selectable=False)

    if inspected is not None:
        hit = frame[frame["sample_id"] == int(inspected)]
        if len(hit):
            add(hit, f"inspected #{int(inspected)}",
                dict(size=point_size + 12, color="rgba(0,0,0,0)", symbol="circle",
                     line=dict(width=3, color=INSPECTED_COLOUR)), True, "inspected",
                selectable=False)

    if show_titles and titles and "cluster" in frame and frame["cluster"].notna().any():
        centres = frame.groupby("cluster")[["x", "y"]].median()
        for cluster, row in centres.iterrows():
            title = titles.get(int(cluster))
            if not title:
                continue
            fig.add_annotation(x=row["x"], y=row["y"], text=html.escape(_short(title, 32)),
                               showarrow=False, font=dict(size=11, color="#222"),
                               bgcolor="rgba(255,255,255,0.6)", borderpad=1)

    continuous = any(getattr(t.marker, "showscale", False) for t in fig.data)
    # a colour bar sits on the right, so its legend (no score, matches) goes on top; a
    # categorical legend can be long (clusters) and gets the right-hand column
    legend = (dict(orientation="h", x=0, y=1.0, yanchor="bottom") if continuous else
              dict(orientation="v", x=1.0, xanchor="left", title=dict(text=html.escape(label))))
    fig.update_layout(
        height=height, margin=dict(l=0, r=0, t=30, b=0), dragmode="lasso",
        clickmode="event+select", uirevision=revision or "map", hovermode="closest",
        legend=dict(itemsizing="constant", **legend),
        xaxis=dict(visible=False), yaxis=dict(visible=False),
        plot_bgcolor="white")
    return fig


def _short(text: str, chars: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= chars else text[:chars - 1] + "…"


def selected_ids(points: Sequence[dict]) -> list[int]:
    """sample_ids of a plotly selection (``event.selection.points``), deduplicated, in order."""
    seen: dict[int, None] = {}
    for point in points:
        custom = point.get("customdata")
        if custom is None:
            continue
        value = custom[0] if isinstance(custom, (list, tuple)) else custom
        try:
            seen[int(value)] = None
        except (TypeError, ValueError):
            continue
    return list(seen)
