"""One shared, read-only frame of every sample with its map position and scores, for the
Explore, Audit and Select & Export pages.

It is cached with ``st.cache_resource``, keyed on the files it is built from: every page
and rerun shares one copy (``st.cache_data`` would hand each rerun a fresh copy, about 0.2 s
at 50k rows, on every slider move and audit click), so callers never modify it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.workspace import KNN, Workspace

from . import state


@st.cache_resource(show_spinner="Loading scores…", max_entries=2)
def _pool(root: str, key: str) -> pd.DataFrame:
    ws = Workspace(root)
    frame = state.build_explore_frame(ws)
    frame["map.cluster"] = frame["cluster"]
    frame["samples.duplicate_of"] = ws.samples(["sample_id", "duplicate_of"]).set_index(
        "sample_id")["duplicate_of"].reindex(frame["sample_id"]).to_numpy()
    return frame


def pool(ws: Workspace) -> pd.DataFrame:
    """The Explore frame (``state.build_explore_frame``) plus ``map.cluster`` and
    ``samples.duplicate_of`` under the names selection recipes use. Read-only."""
    return _pool(str(ws.root), state.workspace_key(ws))


@st.cache_resource(show_spinner=False, max_entries=2)
def _knn(root: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    return Workspace(root).knn()


def knn(ws: Workspace) -> tuple[np.ndarray, np.ndarray] | None:
    """The kNN graph (read-only arrays), or None when there is none yet."""
    return _knn(str(ws.root), state.file_key(ws, KNN)) if ws.exists(KNN) else None


@st.cache_resource(show_spinner=False, max_entries=2)
def _embeddings(root: str, key: str) -> np.ndarray:
    return np.asarray(Workspace(root).embeddings(mmap=False))


def embeddings(ws: Workspace) -> np.ndarray:
    return _embeddings(str(ws.root), state.file_key(ws, "embeddings.npy"))
