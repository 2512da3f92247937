"""Cherrypick dashboard: `streamlit run app.py`.

This file is the shell: page setup, navigation between the four pages, and a sidebar with the
workspace picker (existing workspaces, the demo, or "import a file") and a short summary of the
current workspace. Pages live in ``pages/``, figure builders and helpers in ``components/``,
all the work in ``core/``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from components import state
from components.messages import show_caption

st.set_page_config(page_title="Cherrypick", page_icon=":cherries:", layout="wide")

HERE = Path(__file__).resolve().parent


def sidebar() -> None:
    """Workspace picker, demo builder and the current workspace's summary."""
    from components.workspace_choice import initial_workspace, show_in_address
    from core.demo import DEMOS, build_demo, demo_available, demo_path

    roots = state.workspace_roots()
    current = st.session_state.get(state.WORKSPACE_KEY)
    if current and Path(current) not in roots and Path(current, "manifest.json").is_file():
        roots.insert(0, Path(current))
    st.sidebar.header("Cherrypick")
    if roots:
        options = [str(p) for p in roots]
        if current not in options:  # a new tab or a reload: ?ws=, else the demo
            current = str(initial_workspace(roots))
            state.set_workspace(current)
        show_in_address(current)
        # a page may switch workspace (an import): keep the picker in step with it
        st.session_state["sidebar_ws"] = current
        st.sidebar.selectbox("Workspace", options, format_func=lambda p: Path(p).name,
                             key="sidebar_ws", on_change=lambda: state.set_workspace(
                                 st.session_state["sidebar_ws"]))
    else:
        st.sidebar.info("No workspace yet: import a file or build the demo.")

    if not (demo_path("alpaca") / "manifest.json").is_file():
        if demo_available("alpaca"):
            if st.sidebar.button(f"Build the demo: {DEMOS['alpaca']['title']}",
                                 help="Import, embed, neighbours and map 9,229 real Alpaca "
                                      "rows (a few minutes on 2 CPU cores); resumes if "
                                      "stopped."):
                with st.sidebar:
                    ws = state.run_step("Demo", "demo", build_demo, name="alpaca")
                if ws is not None:
                    state.set_workspace(ws.root)
                    st.rerun()
        else:
            st.sidebar.caption("Demo data not found (../shared/data); import your own file.")
    st.sidebar.page_link("pages/data.py", label="Import a file", icon=":material/upload_file:",
                         query_params={"import": "1"})  # opens the import form expanded

    ws = state.current_workspace()
    if ws is not None:
        summary(ws)


def summary(ws) -> None:
    info = ws.info()
    counts = info["counts"]
    box = st.sidebar.container(border=True)
    box.metric("Samples", f"{counts['samples']:,}")
    if counts.get("duplicates"):
        box.caption(f"{counts['duplicates']:,} exact duplicates")
    done = [name for name, meta in info["steps"].items() if meta]
    # score names come from rating columns (data): shown as plain text, never Markdown
    show_caption("Steps: " + (", ".join(done) if done else "none yet"), box)
    show_caption("Scores: " + (", ".join(info["scores"]) if info["scores"] else "none yet"), box)


pages = [
    st.Page("pages/data.py", title="Data", icon=":material/upload_file:"),
    st.Page("pages/explore.py", title="Explore", icon=":material/scatter_plot:",
            default=True),
    st.Page("pages/audit.py", title="Audit", icon=":material/fact_check:"),
    st.Page("pages/reflect.py", title="Reflect", icon=":material/auto_fix_high:"),
    st.Page("pages/select_export.py", title="Select & Export", icon=":material/download:"),
]
navigation = st.navigation(pages)
sidebar()
state.show_notice()
navigation.run()
