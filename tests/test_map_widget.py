"""The Explore map component's Python side (components/map_widget.py): the folder Streamlit
serves it from, and the ids it sends back. What the frame does in a browser is checked in
test_browser.py and test_browser_fixes.py."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pandas as pd
import pytest

from components import map_widget as mw
from components.map import map_figure


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CHERRYPICK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_served_folder_holds_the_frontend_and_the_wheels_plotly(cache):
    folder = mw.served_folder()
    assert folder.parent == cache / "map-frontend"
    for name in ("index.html", "map.js"):
        assert (folder / name).read_bytes() == (mw.FRONTEND / name).read_bytes()
    assert (folder / "plotly.min.js").read_bytes() == mw.PLOTLY_JS.read_bytes()
    assert not (folder / "plotly.min.js").is_symlink()  # Streamlit refuses links out
    assert mw.served_folder() == folder
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging left


def test_a_changed_frontend_is_served_from_a_new_folder(cache, monkeypatch, tmp_path):
    first = mw.served_folder()
    changed = tmp_path / "frontend"
    shutil.copytree(mw.FRONTEND, changed)
    (changed / "map.js").write_text((changed / "map.js").read_text() + "\n// changed\n")
    monkeypatch.setattr(mw, "FRONTEND", changed)
    second = mw.served_folder()
    assert second != first
    assert (second / "map.js").read_text().endswith("// changed\n")
    assert not (first / "map.js").read_text().endswith("// changed\n")


def test_selection_ids_read_little_endian_int32_like_struct():
    ids = [0, 1, 65_535, 65_536, 199_999, 2**31 - 1, 1, 0]
    raw = struct.pack(f"<{len(ids)}i", *ids)
    plain = list(dict.fromkeys(struct.unpack(f"<{len(ids)}i", raw)))
    assert mw.selection_ids(raw) == plain == [0, 1, 65_535, 65_536, 199_999, 2**31 - 1]
    assert mw.selection_ids(bytearray(raw)) == plain
    assert mw.selection_ids(memoryview(raw)) == plain


def test_the_figure_goes_out_as_its_own_json_with_a_revision_of_its_bytes(monkeypatch):
    sent, builds = {}, []

    def component(**kwargs):
        sent.update(kwargs)
        return struct.pack("<2i", 7, 3)

    monkeypatch.setattr(mw, "_component", lambda: component)
    frame = pd.DataFrame({"sample_id": [7, 3, 9], "x": [0.0, 1.0, 2.0], "y": [1.0, 2.0, 3.0],
                          "preview": ["a", "b", "c"], "ifd.ifd": [0.5, 0.7, np.nan]})

    def build(selected=None):
        builds.append(selected)
        return map_figure(frame, "ifd.ifd", height=500, selected=selected)

    assert mw.map_widget(build, key="k") == [7, 3]
    assert sent["figure"] == build().to_json().encode("utf-8")
    assert sent["height"] == 500 and sent["key"] == "k"
    first = sent["revision"]
    # a rerun builds the same figure again: the same revision, so the frame draws nothing
    mw.map_widget(build, key="k")
    assert sent["revision"] == first
    mw.map_widget(lambda: build([9]), key="k")
    assert sent["revision"] != first


def test_a_figure_is_reused_while_its_key_stays_the_same(monkeypatch):
    sent, builds = [], []
    monkeypatch.setattr(mw, "_component", lambda: lambda **kw: sent.append(kw) or None)
    state: dict = {}
    import streamlit

    monkeypatch.setattr(streamlit, "session_state", state)
    frame = pd.DataFrame({"sample_id": [1, 2], "x": [0.0, 1.0], "y": [0.0, 1.0],
                          "preview": ["a", "b"]})

    def build(selected=()):
        builds.append(list(selected))
        return map_figure(frame, selected=list(selected))

    assert mw.map_widget(build, key="m", reuse=("sig", mw.ids_key([]))) == []
    mw.map_widget(build, key="m", reuse=("sig", mw.ids_key([])))
    assert len(builds) == 1 and sent[0]["figure"] == sent[1]["figure"]
    mw.map_widget(lambda: build([2]), key="m", reuse=("sig", mw.ids_key([2])))
    mw.map_widget(lambda: build([2]), key="m-1", reuse=("sig", mw.ids_key([2])))  # cleared
    assert builds == [[], [2], [2]]
    assert sent[2]["figure"] != sent[0]["figure"]
    assert mw.ids_key([1, 2]) != mw.ids_key([2, 1]) and mw.ids_key([]) == mw.ids_key(())
