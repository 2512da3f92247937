"""The Explore map's selection round trip (components/explore_selection.py): a selection made
on the map is drawn again from the same figure (plotly already shows it, so a 200k-point map
has nothing to redraw), and a figure that changed for another reason carries the selection."""

from __future__ import annotations

import struct
import types

import pytest

from components import explore_selection as es


@pytest.fixture
def session(monkeypatch):
    state: dict = {}
    monkeypatch.setattr(es, "st", types.SimpleNamespace(session_state=state))
    return state


def lasso(session: dict, ids: list[int]) -> None:
    """What the map's frame leaves in the widget's state (the ids as little-endian int32
    bytes, components/map_frontend/map.js), then the callback."""
    session[es.map_key()] = struct.pack(f"<{len(ids)}i", *ids)
    es.remember_selection()


def test_a_map_selection_redraws_the_same_figure_and_a_new_colour_carries_it(session):
    by_ifd, by_ds2 = ("ws", "ifd"), ("ws", "ds2")
    assert es.selection_to_draw(by_ifd, []) == []
    lasso(session, [5, 6, 5])
    assert session[es.SELECTED] == [5, 6]
    assert es.selection_to_draw(by_ifd, [5, 6]) == []       # the figure as drawn before
    assert es.selection_to_draw(by_ifd, [5, 6]) == []       # and on any later rerun
    assert es.selection_to_draw(by_ds2, [5, 6]) == [5, 6]   # recoloured: carries it
    lasso(session, [7])
    assert es.selection_to_draw(by_ds2, [7]) == [5, 6]      # same figure again
    assert es.selection_to_draw(by_ifd, [7]) == [7]
    # a selection set without the map (the clear button, a test) is always drawn
    session[es.SELECTED] = [9]
    assert es.selection_to_draw(by_ifd, [9]) == [9]


def test_clearing_forgets_the_figure_the_selection_was_made_on(session):
    lasso(session, [1, 2])
    es.clear_selection()
    assert session[es.SELECTED] == [] and es.map_key() != es.MAP_KEY
    assert es.selection_to_draw(("ws", "ifd"), []) == []
    assert es.selection_to_draw(("ws", "ifd"), [4]) == [4]


def test_only_an_opened_sample_is_ringed(session):
    assert es.opened_sample([3, 8]) is None and es.inspected_sample([3, 8]) == 3
    session[es.INSPECTED] = 8
    assert es.opened_sample([3, 8]) == 8 == es.inspected_sample([3, 8])
    assert es.opened_sample([3]) is None and es.inspected_sample([3]) == 3


@pytest.mark.parametrize("value", [None, b"", b"\x01\x00\x00", "5,6", [5, 6]])
def test_anything_but_whole_int32_ids_is_no_selection(session, value):
    session[es.map_key()] = value
    es.remember_selection()
    assert session[es.SELECTED] == []


def test_ids_beyond_16_bits_and_repeats_come_back_in_order(session):
    lasso(session, [199_999, 3, 70_000, 3, 199_999])
    assert session[es.SELECTED] == [199_999, 3, 70_000]
