"""Which workspace a new browser session opens, and keeping that choice in the address.

Streamlit starts a fresh session for every new tab and every reload. The workspace in use is
written into the page address as ``?ws=<folder name>`` on every run, so a reload (or a copied
link) opens it again. Without one, a session opens ``$CHERRYPICK_WORKSPACE`` when set, else
the demo, else the first workspace found, never just the alphabetically first folder when a
better choice exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import streamlit as st

QUERY_KEY = "ws"


def initial_workspace(roots: Sequence[Path], wanted: str | None = None) -> Path | None:
    """The workspace a new session opens: the one named in ``?ws=`` (folder name or full
    path, among ``roots``), else ``$CHERRYPICK_WORKSPACE``, else a demo, else the first."""
    from core.demo import DEMOS, demo_path

    if not roots:
        return None
    roots = [Path(r) for r in roots]
    if wanted is None:
        wanted = st.query_params.get(QUERY_KEY)
    if wanted:
        for root in roots:
            if wanted in (root.name, str(root)):
                return root
    env = os.environ.get("CHERRYPICK_WORKSPACE")
    if env and Path(env).resolve() in roots:
        return Path(env).resolve()
    for name in DEMOS:
        demo = demo_path(name).resolve()
        if demo in roots:
            return demo
    return roots[0]


def show_in_address(root: str | os.PathLike | None) -> None:
    """Write the workspace's folder name into the address (``?ws=``) for reloads."""
    if root is None:
        return
    name = Path(root).name
    if st.query_params.get(QUERY_KEY) != name:
        st.query_params[QUERY_KEY] = name
