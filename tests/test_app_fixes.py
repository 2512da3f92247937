"""Issue 15, "Dashboard fixes": each fix checked headless through Streamlit's AppTest on the
shared fixture workspace (real Alpaca rows plus hostile rows, see ui_fixture.py). What a
person sees in a real browser is checked in test_browser_fixes.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from ui_fixture import REPO, fixture_ws, map_spec, private_copy  # noqa: F401

from components.colouring import clip_range
from components.histogram import score_histogram
from components.state import build_explore_frame
from core.workspace import Workspace

APP = str(REPO / "app.py")
DS2 = "ds2_claude_ge_4_5"


@pytest.fixture
def ws(fixture_ws, tmp_path) -> Workspace:
    """A private copy of the fixture workspace (the pages write into it)."""
    return private_copy(fixture_ws, tmp_path / "ws")


def open_page(ws: Workspace, page: str, monkeypatch, tmp_path, **state) -> AppTest:
    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(ws.root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["workspace_root"] = str(ws.root)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def figure(at: AppTest, index: int = 0) -> dict:
    """A figure as sent to the browser: 0 is Explore's map, then the page's plotly charts."""
    if index == 0:
        return map_spec(at)
    return json.loads(at.get("plotly_chart")[index - 1].proto.spec)


def traces(at: AppTest, index: int = 0) -> list[dict]:
    return figure(at, index)["data"]


def layout(at: AppTest, index: int = 0) -> dict:
    return figure(at, index)["layout"]


def selected_on_map(at: AppTest) -> set[int]:
    """sample_ids the map draws as selected (``selectedpoints`` of each trace)."""
    out: set[int] = set()
    for trace in traces(at):
        points = trace.get("selectedpoints")
        if points is None:
            continue
        ids = _decode(trace["customdata"])
        out |= {int(ids[i]) for i in _decode(points)}
    return out


def _decode(value):
    import base64

    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), value["dtype"])
    return np.asarray(value)


def trace_ids(trace: dict) -> set[int]:
    return {int(i) for i in _decode(trace["customdata"])}


# ======================================================================================
# Explore
# ======================================================================================
def test_recolouring_keeps_the_selection_on_the_map_and_clear_clears_everything(
        ws, monkeypatch, tmp_path):
    picked = [3, 8, 40, 41, 120]
    at = open_page(ws, "pages/explore.py", monkeypatch, tmp_path,
                   explore_selected_ids=picked)
    assert selected_on_map(at) == set(picked)
    at.selectbox(key="explore_colour").set_value(f"{DS2}.flagged").run()
    assert not at.exception
    assert selected_on_map(at) == set(picked)  # the map agrees with the inspector
    assert at.dataframe[0].value["sample_id"].tolist() == picked
    assert f"{len(picked)} selected" in layout(at, 1)["title"]["text"]
    at.button(key="explore_clear").click().run()
    assert not at.exception
    assert selected_on_map(at) == set()
    assert not at.dataframe  # no inspector table
    assert "selected" not in layout(at, 1)["title"]["text"]
    assert at.session_state["explore_selected_ids"] == []


def test_a_clicked_cell_opens_its_row_and_rings_it(ws, monkeypatch, tmp_path):
    picked = [3, 8, 40]
    at = open_page(ws, "pages/explore.py", monkeypatch, tmp_path,
                   explore_selected_ids=picked)
    assert any(t.value.startswith("sample #3") for t in at.text)  # the first is read, unringed
    assert not [t for t in traces(at) if t.get("name", "").startswith("inspected")]
    # a click on a cell (the instruction of the third row), not on the row's checkbox
    at.session_state["inspector_table"] = {
        "selection": {"rows": [], "columns": [], "cells": [(2, "instruction")]}}
    at.run()
    assert not at.exception
    assert any(t.value.startswith("sample #40") for t in at.text), [t.value for t in at.text]
    rings = [t for t in traces(at) if t.get("name", "").startswith("inspected")]
    assert len(rings) == 1 and trace_ids(rings[0]) == {40}


def test_colour_scale_and_histogram_span_the_1_to_99_percent_quantiles(ws):
    frame = build_explore_frame(ws)
    column = f"{DS2}.noisy_avg"
    values = frame[column].copy()
    values.iloc[0] = values.max() * 1000  # one wild outlier
    frame[column] = values
    lo, hi = np.quantile(values.dropna(), [0.01, 0.99])
    assert clip_range(values) == pytest.approx((lo, hi))

    from components.map import map_figure

    fig = map_figure(frame, column)
    scale = [t for t in fig.data if getattr(t.marker, "showscale", False)][0]
    assert (scale.marker.cmin, scale.marker.cmax) == pytest.approx((lo, hi))
    hist = score_histogram(frame, column)
    assert hist.layout.xaxis.range[0] == pytest.approx(lo)
    assert hist.layout.xaxis.range[1] == pytest.approx(hi, rel=1e-5)
    counts = list(hist.data[0].y)
    assert sum(counts) == values.notna().sum()  # outliers still counted, in the end bins
    width = (hi - lo) / len(counts)
    assert counts[-1] == int((values >= hi - width).sum())  # the outlier is in the last bin


def test_selected_part_of_a_histogram_has_its_own_axis(ws):
    frame = build_explore_frame(ws)
    subset = frame["sample_id"].iloc[:6].tolist()
    for column in (f"{DS2}.confidence", f"{DS2}.flagged"):
        fig = score_histogram(frame, column, subset, subset_name="selected")
        assert fig.data[0].yaxis in (None, "y")
        assert fig.data[1].yaxis == "y2"
        assert fig.layout.yaxis2.overlaying == "y"
        # plotly syncs an overlaying axis's ticks to the other one by default, which put
        # counts such as 17.6 on the selected axis
        assert fig.layout.yaxis2.tickmode == "auto"


def test_internal_columns_are_offered_only_when_asked(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/explore.py", monkeypatch, tmp_path)
    options = at.selectbox(key="explore_colour").options
    labels = set(options)
    assert "IFD" in labels and "DS2 curated (claude_ge_4_5)" in labels
    assert not {"ifd.loss_conditioned", "ifd.answer_tokens", "ifd.truncated",
                "DS2 noisy_avg (claude_ge_4_5)"} & labels
    at.checkbox(key="explore_internal").check().run()
    assert not at.exception
    assert {"ifd.loss_conditioned", "ifd.truncated"} <= set(
        at.selectbox(key="explore_colour").options)


def test_ds2_suggested_colouring_paints_only_flagged_rows(ws, monkeypatch, tmp_path):
    ds2 = pd.read_parquet(ws.path("scores", f"{DS2}.parquet"))
    flagged = set(ds2.loc[ds2["flagged"].astype(bool), "sample_id"].tolist())
    at = open_page(ws, "pages/explore.py", monkeypatch, tmp_path)
    at.selectbox(key="explore_colour").set_value(f"{DS2}.suggested").run()
    assert not at.exception
    drawn = traces(at)
    grey = [t for t in drawn if t["name"] == "not flagged"]
    painted = set().union(*(trace_ids(t) for t in drawn if t["name"] != "not flagged"))
    assert painted == flagged
    assert trace_ids(grey[0]) == set(ds2["sample_id"]) - flagged
    hist = score_histogram(build_explore_frame(ws), f"{DS2}.suggested")
    assert sum(hist.data[0].y) == len(flagged)


# ======================================================================================
# Tabs and reloads
# ======================================================================================
def _home_with(fixture_ws, tmp_path, names: list[str]):
    home = tmp_path / "home"
    for name in names:
        shutil.copytree(fixture_ws.root, home / name,
                        ignore=shutil.ignore_patterns("audit.jsonl", "selections", "exports"))
    return home


def _fresh_session(monkeypatch, home, tmp_path, ws_param: str | None = None) -> AppTest:
    """A new browser session (a new tab or a reload), optionally with ``?ws=``."""
    monkeypatch.delenv("CHERRYPICK_WORKSPACE", raising=False)
    monkeypatch.setenv("CHERRYPICK_HOME", str(home))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(APP, default_timeout=60)
    if ws_param is not None:
        at.query_params["ws"] = ws_param
    at.run()
    assert not at.exception, at.exception
    return at


def test_a_reload_opens_the_workspace_named_in_the_address(fixture_ws, monkeypatch, tmp_path):
    home = _home_with(fixture_ws, tmp_path, ["aaa-first", "mine"])
    at = _fresh_session(monkeypatch, home, tmp_path, ws_param="mine")
    assert at.session_state["workspace_root"] == str((home / "mine").resolve())
    assert at.sidebar.selectbox(key="sidebar_ws").value == str((home / "mine").resolve())
    # (switching with the picker then reloading is checked in test_browser_fixes.py)


def test_a_new_tab_opens_the_demo_not_the_first_folder(fixture_ws, monkeypatch, tmp_path):
    from core.demo import DEMOS

    home = _home_with(fixture_ws, tmp_path, ["aaa-first", DEMOS["alpaca"]["folder"]])
    at = _fresh_session(monkeypatch, home, tmp_path)
    assert at.session_state["workspace_root"] == str(
        (home / DEMOS["alpaca"]["folder"]).resolve())
    assert at.query_params["ws"] == DEMOS["alpaca"]["folder"]  # kept for a reload


# ======================================================================================
# Audit
# ======================================================================================
def _shown_sample(at: AppTest) -> int:
    heads = [h.value for h in at.subheader if h.value.startswith("Sample #")]
    assert len(heads) == 1, heads
    return int(heads[0].split("#")[1])


def test_audit_without_ds2_links_to_the_data_page(ws, monkeypatch, tmp_path):
    for suffix in ("parquet", "json"):
        ws.path("scores", f"{DS2}.{suffix}").unlink()
    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    links = [json.loads(json.dumps({"page": e.proto.page, "label": e.proto.label}))
             for e in at.get("page_link")]
    assert any(link["page"].endswith("data") or "data" in link["page"]
               for link in links if "Data page" in link["label"]), links


def test_audit_confidence_says_what_it_means(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    confidence = [m for m in at.metric if m.label == "Confidence"]
    assert confidence and "neighbours" in confidence[0].proto.help


def test_a_clicked_neighbour_shows_its_full_text(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    evidence = [d.value for d in at.dataframe if "neighbour" in d.value.columns][0]
    at.session_state["audit_evidence"] = {
        "selection": {"rows": [], "columns": [], "cells": [(2, "instruction")]}}
    at.run()
    assert not at.exception
    neighbour = int(evidence["neighbour"].iloc[2])
    assert any(t.value.startswith(f"neighbour #{neighbour} ") for t in at.text)
    full = ws.samples().set_index("sample_id").loc[neighbour, "instruction"]
    assert full in [c.value for c in at.code]  # whole text, not the table's one-line preview


def test_latest_decisions_read_old_to_new(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    ds2 = pd.read_parquet(ws.path("scores", f"{DS2}.parquet")).set_index("sample_id")
    sid = _shown_sample(at)
    raw, suggested = int(ds2.loc[sid, "rating_class"]), int(ds2.loc[sid, "suggested"])
    at.button(key="audit_accept").click().run()
    assert not at.exception
    history = [d.value for d in at.dataframe if "decision" in d.value.columns][0]
    assert history["sample"].tolist()[0] == sid
    expected = f"{raw} → {suggested}" if raw != suggested else f"{raw} (kept)"
    assert history["rating"].tolist()[0] == expected


# ======================================================================================
# Select & Export
# ======================================================================================
def _metric(at: AppTest, label: str) -> str:
    return [m.value for m in at.metric if m.label == label][0]


def test_default_name_follows_the_count_until_typed(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/select_export.py", monkeypatch, tmp_path)
    first = at.text_input(key="sel_name").value
    assert first.endswith(f"-{int(len(ws) * 0.10)}")
    at.slider(key="sel_ratio").set_value(20.0).run()
    assert at.text_input(key="sel_name").value == first.rsplit("-", 1)[0] + \
        f"-{int(len(ws) * 0.20)}"
    at.text_input(key="sel_name").set_value("mine").run()
    at.slider(key="sel_ratio").set_value(30.0).run()
    assert at.text_input(key="sel_name").value == "mine"  # a typed name is kept


def test_saving_over_a_selection_asks_and_names_the_checkbox(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/select_export.py", monkeypatch, tmp_path)
    at.text_input(key="sel_name").set_value("keep-me").run()
    at.button(key="sel_save").click().run()
    before = ws.path("selections", "keep-me.json").read_bytes()
    at.slider(key="sel_ratio").set_value(30.0).run()
    at.button(key="sel_save").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("Replace selection keep" in e for e in errors), errors
    assert not any("--force" in e for e in errors)
    assert ws.path("selections", "keep-me.json").read_bytes() == before


def test_export_exists_message_names_the_checkbox_not_a_flag(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/select_export.py", monkeypatch, tmp_path)
    at.text_input(key="sel_name").set_value("out").run()
    at.button(key="sel_export").click().run()
    at.button(key="sel_export").click().run()
    errors = [e.value for e in at.error]
    assert errors and all("--force" not in e for e in errors)
    assert any("Replace exports/out" in e for e in errors), errors


def test_cap_per_cluster_starts_at_a_value_that_cuts(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/select_export.py", monkeypatch, tmp_path)
    at.slider(key="sel_ratio").set_value(50.0).run()
    charts_without = [c.proto.spec for c in at.get("plotly_chart")]
    at.radio(key="sel_cover").set_value("cap").run()
    assert not at.exception
    cap = at.number_input(key="sel_cap").value
    clusters = pd.read_parquet(ws.path("map.parquet"))["cluster"].nunique()
    assert cap == -(-int(len(ws) * 0.5) // clusters)
    # the default cap changes which rows are kept (the budget is refilled elsewhere)
    assert [c.proto.spec for c in at.get("plotly_chart")] != charts_without


def test_share_of_rows_has_a_number_box_in_half_percent_steps(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/select_export.py", monkeypatch, tmp_path)
    box = at.number_input(key="sel_ratio::box")
    assert box.value == 10.0 and box.step == 0.5
    box.set_value(12.5).run()
    assert not at.exception
    assert at.slider(key="sel_ratio").value == 12.5
    assert _metric(at, "Kept") == f"{int(len(ws) * 0.125):,}"


# ======================================================================================
# Data
# ======================================================================================
def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


GOOD = [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(5)]
BAD = [{"instruction": "ok", "output": "fine"}, {"instruction": "no answer"}]


def _data_page(ws, monkeypatch, tmp_path) -> AppTest:
    return open_page(ws, "pages/data.py", monkeypatch, tmp_path)


def _successes(at: AppTest) -> list[str]:
    return [s.value for s in at.success if "rows (" in s.value.replace("\\", "")]


def test_a_new_upload_clears_the_previous_check_result(ws, monkeypatch, tmp_path):
    at = _data_page(ws, monkeypatch, tmp_path)
    at.file_uploader(key="data_upload").set_value(("first.jsonl", _jsonl(GOOD), "text/plain"))
    at.run()
    at.button(key="data_check").click().run()
    assert len(_successes(at)) == 1
    at.file_uploader(key="data_upload").set_value(
        ("second.jsonl", _jsonl(GOOD[:2]), "text/plain"))
    at.run()
    assert not at.exception
    assert _successes(at) == []  # the result of first.jsonl is gone


def test_a_failed_import_leaves_no_stale_success(ws, monkeypatch, tmp_path):
    at = _data_page(ws, monkeypatch, tmp_path)
    at.file_uploader(key="data_upload").set_value(("mini.jsonl", _jsonl(GOOD), "text/plain"))
    at.run()
    at.button(key="data_check").click().run()
    assert len(_successes(at)) == 1
    (tmp_path / "home" / "mini").mkdir(parents=True)  # the name is taken: import must fail
    (tmp_path / "home" / "mini" / "keep.txt").write_text("x")
    at.button(key="data_import").click().run()
    assert not at.exception
    assert at.error and _successes(at) == []


def test_an_upload_error_names_the_uploaded_file_and_one_row(ws, monkeypatch, tmp_path):
    at = _data_page(ws, monkeypatch, tmp_path)
    at.file_uploader(key="data_upload").set_value(("bad rows.jsonl", _jsonl(BAD), "text/plain"))
    at.run()
    at.button(key="data_check").click().run()
    assert not at.exception
    message = at.error[0].value
    assert "bad rows.jsonl" in message.replace("\\", "") and "_uploads" not in message
    import re

    assert re.findall(r"\brow \d+", message) == ["row 1"]  # one row number


def test_sidebar_import_link_opens_the_form_expanded(ws, monkeypatch, tmp_path):
    open_page(ws, "pages/explore.py", monkeypatch, tmp_path)  # sets the environment
    at = AppTest.from_file(APP, default_timeout=60).run()  # the shell, with its sidebar
    link = [e for e in at.get("page_link") if e.proto.label == "Import a file"][0]
    assert link.proto.page == "data" and link.proto.query_string == "import=1"
    plain_visit = _data_page(ws, monkeypatch, tmp_path)
    assert not plain_visit.expander[0].proto.expanded
    linked = AppTest.from_file(APP, default_timeout=60)
    linked.session_state["workspace_root"] = str(ws.root)
    linked.query_params["import"] = "1"
    linked.switch_page("pages/data.py")
    linked.run()
    assert not linked.exception
    assert linked.expander[0].proto.expanded


def test_after_ds2_the_data_page_links_to_audit_with_the_flag_count(ws, monkeypatch,
                                                                    tmp_path):
    ds2 = pd.read_parquet(ws.path("scores", f"{DS2}.parquet"))
    flagged = int(ds2["flagged"].astype(bool).sum())
    at = _data_page(ws, monkeypatch, tmp_path)
    links = [(e.proto.page, e.proto.label.replace("\\", "")) for e in at.get("page_link")]
    assert ("audit", f"{flagged:,} flagged on claude_ge_4_5 → open Audit") in links, links
