"""The Explore page's selection and inspected sample, kept in one place in session state.

The map, the histogram and the inspector all read :data:`SELECTED` (the sample_ids picked
on the map), so a new colouring keeps the selection everywhere (the map redraws it from
``selectedpoints``) and clearing it clears it everywhere. Clearing also gives the map
widget a new key: plotly's own box or lasso outline goes with it.

:data:`INSPECTED` is the sample opened from the table (a click on any cell, not only the
row's checkbox); the map rings it. Until a row is opened the first selected sample is read
in full, unringed.

A selection made on the map is already drawn by plotly, so the rerun it causes draws the map
from the same figure as before (:func:`selection_to_draw`): the map's frame then has nothing
to redraw (``components.map_widget`` skips a figure it has drawn). Only a figure that
changed for another reason (colour, search, titles, the ring) carries the selection as
``selectedpoints``.
"""

from __future__ import annotations

from typing import Any, Sequence

import streamlit as st

from .map_widget import selection_ids

SELECTED = "explore_selected_ids"  # sample_ids picked on the map (tests set it directly)
INSPECTED = "explore_inspected_id"
MAP_KEY = "explore_map"
_GENERATION = "explore_map_generation"
_DRAWN = "explore_map_drawn"  # (signature, selection) of the figure last drawn
_PICKED_ON = "explore_map_picked_on"  # signature of the figure the selection was made on
TABLE_SELECTION_MODES = ("single-row", "single-cell")


def map_key() -> str:
    """Key of the map widget; a new one after :func:`clear_selection`."""
    generation = st.session_state.get(_GENERATION, 0)
    return MAP_KEY if not generation else f"{MAP_KEY}-{generation}"


def remember_selection() -> None:
    """``on_change`` of the map: the ids it sent become the page's selection."""
    st.session_state[SELECTED] = selection_ids(st.session_state.get(map_key()))
    drawn = st.session_state.get(_DRAWN)
    st.session_state[_PICKED_ON] = drawn[0] if drawn else None


def selection_to_draw(signature: tuple, chosen: list[int]) -> list[int]:
    """The selection the map figure should carry. ``signature``: everything else the figure
    is built from. When the selection was made on the figure last drawn and that figure is
    drawn again, it is the same figure as then (plotly shows the new selection itself);
    otherwise the current selection."""
    drawn = st.session_state.get(_DRAWN)
    if drawn is not None and drawn[0] == signature == st.session_state.get(_PICKED_ON):
        selected = drawn[1]
    else:
        selected = chosen
        st.session_state[_PICKED_ON] = None
    st.session_state[_DRAWN] = (signature, selected)
    return selected


def clear_selection() -> None:
    """Forget the selection for the map, the histogram and the inspector at once."""
    st.session_state[SELECTED] = []
    st.session_state.pop(INSPECTED, None)
    st.session_state.pop(_PICKED_ON, None)
    st.session_state[_GENERATION] = st.session_state.get(_GENERATION, 0) + 1


def current_selection(known: set[int]) -> list[int]:
    """The selected sample_ids that still exist in the workspace, in order."""
    return [i for i in st.session_state.get(SELECTED, []) if i in known]


def inspected_sample(ids: Sequence[int]) -> int | None:
    """The sample being read: the one opened when it is still listed, else the first."""
    if not ids:
        return None
    opened = opened_sample(ids)
    return int(ids[0]) if opened is None else opened


def opened_sample(ids: Sequence[int]) -> int | None:
    """The sample opened from the table when it is still listed (the map rings it)."""
    current = st.session_state.get(INSPECTED)
    return current if current is not None and current in set(ids) else None


def clicked_position(event: Any) -> int | None:
    """Row position a click picked in the table: a selected row or any selected cell."""
    if event is None:
        return None
    selection = event.selection
    rows = list(selection.get("rows", []) or [])
    if rows:
        return int(rows[0])
    cells = list(selection.get("cells", []) or [])
    if cells:
        return int(cells[0][0])
    return None


def open_sample(sample_id: int) -> None:
    """Make ``sample_id`` the inspected one; rerun the whole page when it changed, so the
    map's ring moves to it (the inspector itself runs as a fragment)."""
    if st.session_state.get(INSPECTED) != sample_id:
        st.session_state[INSPECTED] = sample_id
        st.rerun()
