"""Select & Export defaults that follow what the person chose.

- :func:`follow_default`: a text box (the selection name) whose default tracks the policy
  and count until the person types their own name.
- :func:`synced_percent`: a share-of-rows slider with a number box beside it, both on one
  value, so 0.5 % steps are easy to hit with the keyboard.
- :func:`useful_cap`: a per-cluster cap that binds: the average number of kept rows per
  cluster, so at least the largest clusters are cut.
"""

from __future__ import annotations

import math

import streamlit as st


def follow_default(key: str, default: str) -> None:
    """Set ``st.session_state[key]`` to ``default`` unless the person typed their own value
    (the value differs from the default this helper set last). Call before the widget."""
    auto = f"{key}::auto"
    current = st.session_state.get(key)
    if current is None or current == st.session_state.get(auto):
        st.session_state[key] = default
    st.session_state[auto] = default


def synced_percent(label: str, key: str, low: float, high: float, value: float,
                   step: float) -> float:
    """A slider and a number box for one percentage; returns it."""
    box = f"{key}::box"
    if key not in st.session_state:
        st.session_state[key] = value
    if st.session_state.get(box) != st.session_state[key]:
        st.session_state[box] = st.session_state[key]

    def from_box() -> None:
        st.session_state[key] = st.session_state[box]

    left, right = st.columns([4, 1], vertical_alignment="bottom")
    left.slider(label, low, high, step=step, key=key, format="%.1f%%")
    right.number_input("%", low, high, step=step, key=box, format="%.1f", on_change=from_box,
                       help="Type a share; the slider follows")
    return float(st.session_state[key])


def useful_cap(kept_rows: int, clusters: int) -> int:
    """Default "at most per cluster": the average kept rows per cluster (at least 1)."""
    if clusters <= 0:
        return max(1, kept_rows)
    return max(1, math.ceil(kept_rows / clusters))


def may_replace(exists: bool, replace: bool, checkbox: str, what: str) -> bool:
    """False (with an error naming the checkbox to tick) when ``what`` exists and the
    person has not ticked ``checkbox``; the file is kept."""
    if exists and not replace:
        from .messages import show_error

        show_error(f"{what} already exists and was kept. Tick '{checkbox}' to replace it, "
                   "or choose another name.")
        return False
    return True
