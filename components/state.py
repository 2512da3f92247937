"""Session and caching helpers shared by every page.

- The current workspace lives in ``st.session_state[WORKSPACE_KEY]`` (its folder as a string);
  ``$CHERRYPICK_WORKSPACE`` picks the first one (tests and scripted launches).
- Workspace files are loaded through ``st.cache_data`` keyed by :func:`file_key` (the
  sidecar's cache key plus the file's mtime and size), so a page rerun never rereads or
  recomputes anything that did not change on disk, and a step that rewrites a file is seen
  at once.
- :func:`run_step` runs one engine step with ``st.progress`` and a Cancel button; errors the
  person must fix are shown with ``st.error``.

Pages call ``core`` and these helpers; no scoring happens here.
"""

from __future__ import annotations

import html
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import streamlit as st

from components.messages import show_error
from core.errors import Cancelled, InputError
from core.io import RESERVED
from core.select import numeric_score_columns, score_table
from core.workspace import CLUSTERS, MANIFEST, MAP, SAMPLES, Workspace

WORKSPACE_KEY = "workspace_root"
ENV_WORKSPACE = "CHERRYPICK_WORKSPACE"
PREVIEW_CHARS = 120
TEXT_COLUMNS = ("instruction", "input", "output")
NOTICE = "step_notice"


# ----- the shell ----------------------------------------------------------------------------
def ensure_shell() -> None:
    """Make sure this page runs inside app.py's ``st.navigation`` shell. Call it first.

    Streamlit keeps its old multipage mode for an app that has a ``pages/`` folder until
    some script run calls ``st.navigation``: if the first visit after a server start is a deep
    link (``/data``), it runs ``pages/data.py`` alone, without app.py (no wide layout, no
    sidebar, the folder's file names as navigation). Switching that mode off and rerunning
    sends the same URL through app.py. (Naming the folder anything but ``pages`` would make
    this a no-op.) Streamlit's AppTest starts every run in the old mode, and a rerun there
    would drop a clicked button, so under AppTest the page runs as it is.
    """
    from streamlit.runtime.pages_manager import PagesManager

    under_apptest = "streamlit.testing.v1" in sys.modules  # never imported by a server
    if PagesManager.uses_pages_directory and not under_apptest:
        PagesManager.uses_pages_directory = False
        st.rerun()


# ----- which workspace ------------------------------------------------------------------
def workspace_roots() -> list[Path]:
    """Workspaces to offer: every folder with a manifest under the workspaces folder, the
    demo folder, and ``$CHERRYPICK_WORKSPACE`` (first when set)."""
    from core.demo import DEMOS, demo_path, workspaces_dir

    found: list[Path] = []
    env = os.environ.get(ENV_WORKSPACE)
    if env and Path(env, MANIFEST).is_file():
        found.append(Path(env).resolve())
    folder = workspaces_dir()
    if folder.is_dir():
        found.extend(p.resolve() for p in sorted(folder.iterdir())
                     if p.is_dir() and (p / MANIFEST).is_file())
    for name in DEMOS:
        if (demo_path(name) / MANIFEST).is_file():
            found.append(demo_path(name).resolve())
    unique: list[Path] = []
    for p in found:
        if p not in unique:
            unique.append(p)
    return unique


def current_workspace() -> Workspace | None:
    """The workspace the person picked (or ``$CHERRYPICK_WORKSPACE``), None when there is
    none yet."""
    root = st.session_state.get(WORKSPACE_KEY)
    if root is None:
        from components.workspace_choice import initial_workspace

        first = initial_workspace(workspace_roots())
        if first is None:
            return None
        root = str(first)
        st.session_state[WORKSPACE_KEY] = root
    if not Path(root, MANIFEST).is_file():
        return None
    try:
        return Workspace.open(root)  # refuses a damaged manifest or a newer workspace format
    except InputError as err:
        show_error(err)
        return None


def set_workspace(root: str | os.PathLike) -> None:
    st.session_state[WORKSPACE_KEY] = str(Path(root).resolve())


# ----- fingerprints and cached loads --------------------------------------------------------
def file_key(ws: Workspace, name: str) -> str:
    """Cache key of one workspace file: its sidecar key (what produced it) plus mtime and
    size (a resumed step keeps its key but grows the file). Empty when the file is absent."""
    try:
        stat = ws.path(name).stat()
    except FileNotFoundError:
        return ""
    meta = None if name.endswith(".json") else ws.meta(name)
    key = meta.get("key", "") if isinstance(meta, dict) else ""
    return f"{key}:{stat.st_mtime_ns}:{stat.st_size}"


def workspace_key(ws: Workspace) -> str:
    """One key over every file the Explore frame is built from."""
    parts = [file_key(ws, SAMPLES), file_key(ws, MAP), file_key(ws, CLUSTERS)]
    parts += [f"{name}={file_key(ws, f'scores/{name}.parquet')}"
              for name in ws.score_names()]
    return "|".join(parts)


@st.cache_data(show_spinner=False, max_entries=8)
def _samples(root: str, key: str) -> pd.DataFrame:
    return Workspace(root).samples()


def load_samples(ws: Workspace) -> pd.DataFrame:
    """samples.parquet, cached on its fingerprint (do not modify the returned frame)."""
    return _samples(str(ws.root), file_key(ws, SAMPLES))


@st.cache_data(show_spinner=False, max_entries=32)
def _score(root: str, name: str, key: str) -> pd.DataFrame:
    return Workspace(root).read_score(name)


def load_score(ws: Workspace, name: str) -> pd.DataFrame:
    return _score(str(ws.root), name, file_key(ws, f"scores/{name}.parquet"))


def numeric_sample_columns(samples: pd.DataFrame) -> list[str]:
    """Source fields that are numbers or booleans (ratings such as ``claude_ge_4_5``)."""
    out = []
    for name in samples.columns:
        if name in RESERVED or name.startswith("src_"):
            continue
        col = samples[name]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            out.append(name)
    return out


def build_explore_frame(ws: Workspace) -> pd.DataFrame:
    """One row per sample: ids, texts, an escaped hover ``preview``, map coordinates and
    cluster (NaN when there is no map yet), numeric source fields (ratings), and every numeric
    or boolean score column as ``<score file>.<column>`` (``core.select.score_table``, which
    checks the files). Plain pandas; no Streamlit."""
    samples = ws.samples()
    frame = samples[["sample_id", *TEXT_COLUMNS]].copy()
    for name in numeric_sample_columns(samples):
        frame[name] = _as_float(samples[name])
    frame["preview"] = [hover_preview(q, a) for q, a in
                        zip(samples["instruction"].tolist(), samples["output"].tolist())]
    if ws.exists(MAP):
        coords = ws.map()[["sample_id", "x", "y", "cluster"]]
        frame = frame.merge(coords, on="sample_id", how="left")
        titles = ws.cluster_titles()
        frame["cluster_title"] = frame["cluster"].map(
            lambda c: titles.get(int(c), f"cluster {int(c)}") if pd.notna(c) else None)
    else:
        frame["x"] = np.nan
        frame["y"] = np.nan
        frame["cluster"] = np.nan
        frame["cluster_title"] = None
    columns = numeric_score_columns(ws)
    if columns:
        scores = score_table(ws, columns)
        for c in columns:
            scores[c] = _as_float(scores[c])
        frame = frame.merge(scores, on="sample_id", how="left")
    return frame.reset_index(drop=True)


def _as_float(col: pd.Series) -> pd.Series:
    """Numbers and booleans as float64 with NaN for missing (plotly and numpy friendly)."""
    if pd.api.types.is_bool_dtype(col):
        col = col.astype("Float64")
    return pd.to_numeric(col, errors="coerce").astype("float64")


def hover_preview(instruction: Any, output: Any, chars: int = PREVIEW_CHARS) -> str:
    """A short, HTML-escaped, single-line preview of a sample for a plotly hover label
    (plotly renders a subset of HTML in labels; sample text must never be markup)."""
    q = " ".join(str(instruction or "").split())
    a = " ".join(str(output or "").split())
    text = q if not a else f"{q} → {a}"
    if len(text) > chars:
        text = text[:chars - 1] + "…"
    return html.escape(text, quote=True)


# ----- running an engine step -----------------------------------------------------------
class StepProgress:
    """``progress(done, total, note)`` drawing ``st.progress`` with rate and time left;
    raises ``Cancelled`` once the step's cancel flag is set."""

    def __init__(self, label: str, cancel_flag: str):
        self.label = label
        self.cancel_flag = cancel_flag
        self.bar = st.progress(0.0, text=f"{label}: starting…")
        self.start = time.monotonic()
        self.first: tuple[float, int] | None = None

    def __call__(self, done: int, total: int, note: str = "") -> None:
        if st.session_state.get(self.cancel_flag):
            raise Cancelled(self.label)
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)  # resumed work is not counted in the rate
        frac = min(max(done / total, 0.0), 1.0) if total else 1.0
        text = f"{self.label}: {done:,}/{total:,}"
        t0, d0 = self.first
        if done > d0 and now > t0 and total:
            rate = (done - d0) / (now - t0)
            text += f" · {rate:,.1f}/s · about {format_seconds((total - done) / rate)} left"
        if note:
            text += f" · {note}"
        self.bar.progress(frac, text=text)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_step(label: str, key: str, fn: Callable[..., Any], /, **kwargs) -> Any | None:
    """Run ``fn(..., progress=cb, **kwargs)`` with a progress bar and a Cancel button.

    Returns the step's result, or None when it was cancelled or failed (the message is
    shown). Cancelling keeps finished chunks: running the step again resumes. Clicking
    Cancel (any widget, in fact) makes Streamlit stop this script run at the next progress
    update; the flag also stops a step whose callback is polled after the rerun request.
    """
    flag = f"cancel::{key}"
    st.session_state[flag] = False

    def cancel() -> None:
        st.session_state[flag] = True
        st.session_state[NOTICE] = (f"{label}: cancelled. Finished chunks are kept; run it "
                                    "again to resume.")

    st.button("Cancel", key=f"cancel-button::{key}", on_click=cancel)
    progress = StepProgress(label, flag)
    try:
        result = fn(progress=progress, **kwargs)
    except InputError as err:
        show_error(err)
        return None
    except Cancelled:
        st.warning(f"{label}: cancelled. Finished chunks are kept; run it again to resume.")
        return None
    progress.bar.progress(1.0, text=f"{label}: done")
    return result


def show_notice() -> None:
    """Show (once) what happened to a step stopped in an earlier run, e.g. a cancel."""
    notice = st.session_state.pop(NOTICE, None)
    if notice:
        st.warning(notice)


def step_done_message(label: str, meta: dict | None) -> str:
    """One line saying when a finished step ran and with which parameters."""
    if not meta:
        return f"{label}: not run yet" if label else "not run yet"
    params = meta.get("params") or {}
    shown = ", ".join(f"{k}={v}" for k, v in params.items()
                      if not isinstance(v, (dict, list)) and "sha256" not in k)
    rows = meta.get("rows")
    took = meta.get("duration_s")
    bits = [f"{label}: done {meta.get('created', '')}" if label else
            f"done {meta.get('created', '')}"]
    if rows is not None:
        bits.append(f"{rows:,} rows")
    if took is not None:
        bits.append(f"{format_seconds(float(took))}")
    if shown:
        bits.append(shown)
    return " · ".join(bits)
