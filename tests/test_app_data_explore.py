"""The dashboard shell, the Data and Explore pages, and their figure builders.

Figure builders are checked against the workspace files read directly with pandas; the
pages run headless through Streamlit's AppTest on the shared fixture workspace (real Alpaca
rows plus hostile rows, see ui_fixture.py).
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from loopback import LoopbackServer, QuietHandler, chat_completion, read_json, send_json
from ui_fixture import REPO, SCRIPT, fixture_ws, hostile_ids, map_spec  # noqa: F401

from components.histogram import score_histogram
from components.messages import plain
from components.inspector import search_samples, selection_table
from components.map import colour_columns, map_figure, selected_ids
from components.state import build_explore_frame, hover_preview

APP = str(REPO / "app.py")
DS2 = "ds2_claude_ge_4_5"


@pytest.fixture(scope="module")
def frame(fixture_ws):
    return build_explore_frame(fixture_ws)


@pytest.fixture
def app(fixture_ws, monkeypatch, tmp_path):
    """The app pointed at the fixture workspace, with an empty workspaces folder."""
    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(fixture_ws.root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def _trace_ids(trace) -> set[int]:
    return {int(sid) for sid in trace.customdata}


def _figure(at, index: int = 0) -> list[dict]:
    """The traces a chart sent to the browser (0: the map, then the plotly charts), with x/y decoded to arrays (plotly
    sends numeric arrays as base64 ``{"dtype", "bdata"}``)."""
    traces = (map_spec(at) if index == 0 else
              json.loads(at.get("plotly_chart")[index - 1].proto.spec))["data"]
    for trace in traces:
        for axis in ("x", "y"):
            value = trace.get(axis)
            if isinstance(value, dict) and "bdata" in value:
                trace[axis] = np.frombuffer(base64.b64decode(value["bdata"]), value["dtype"])
    return traces


# ----- figure builders ------------------------------------------------------------------------
def test_explore_frame_joins_map_and_scores_by_sample_id(fixture_ws, frame):
    map_file = pd.read_parquet(fixture_ws.path("map.parquet")).set_index("sample_id")
    ds2 = pd.read_parquet(fixture_ws.path("scores", f"{DS2}.parquet")).set_index("sample_id")
    joined = frame.set_index("sample_id")
    for sid in (0, 17, 300, 305):
        assert joined.loc[sid, "x"] == pytest.approx(float(map_file.loc[sid, "x"]))
        assert joined.loc[sid, f"{DS2}.curated"] == float(ds2.loc[sid, "curated"])
    assert len(frame) == len(fixture_ws)


def test_continuous_colour_greys_rows_without_a_score(frame):
    column = f"{DS2}.confidence"
    values = frame[column].to_numpy(copy=True)
    hidden = frame["sample_id"].to_numpy() % 3 == 0  # pretend a third has no score
    values[hidden] = np.nan
    partial = frame.assign(**{column: values})
    fig = map_figure(partial, column)
    grey = [t for t in fig.data if t.name == "no score"]
    coloured = [t for t in fig.data if t.marker.showscale]
    assert len(grey) == 1 and len(coloured) == 1
    assert _trace_ids(grey[0]) == set(frame.loc[hidden, "sample_id"].tolist())
    expected = dict(zip(frame.loc[~hidden, "sample_id"], frame.loc[~hidden, column]))
    shown = dict(zip((int(i) for i in coloured[0].customdata), coloured[0].marker.color))
    assert shown == pytest.approx(expected)


def test_categorical_colour_has_one_legend_trace_per_value(fixture_ws, frame):
    ds2 = pd.read_parquet(fixture_ws.path("scores", f"{DS2}.parquet"))
    fig = map_figure(frame, f"{DS2}.flagged")
    by_name = {t.name: _trace_ids(t) for t in fig.data}
    for value in ds2["flagged"].unique():
        name = str(int(value))
        assert by_name[name] == set(ds2.loc[ds2["flagged"] == value, "sample_id"].tolist())


def test_hover_text_and_titles_are_escaped(fixture_ws, frame):
    ids = hostile_ids(fixture_ws)
    fig = map_figure(frame, f"{DS2}.curated", titles={0: "<b>x</b> " + SCRIPT})
    texts = {int(i): t for tr in fig.data for i, t in zip(tr.customdata, tr.text)}
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in texts[ids["script"]]
    assert all("<script>" not in t and "<img" not in t for t in texts.values())
    assert all("<script>" not in a.text for a in fig.layout.annotations)
    assert len(hover_preview("a" * 500, "b")) <= 120


def test_large_maps_leave_hover_text_out(frame):
    """Without hover text the figure carries numbers only: same points, a fraction of the
    bytes (the preview is most of a 50k-point figure)."""
    with_text = map_figure(frame, "ifd.ifd")
    numbers = map_figure(frame, "ifd.ifd", hover_text=False)
    assert all(t.text is None and "%{text}" not in t.hovertemplate for t in numbers.data)
    assert [_trace_ids(t) for t in numbers.data] == [_trace_ids(t) for t in with_text.data]
    assert len(numbers.to_json()) < 0.5 * len(with_text.to_json())


def test_highlight_trace_holds_exactly_the_matches(frame):
    wanted = [3, 5, 300]
    fig = map_figure(frame, None, highlight=wanted)
    rings = [t for t in fig.data if t.name.startswith("matches")]
    assert len(rings) == 1 and _trace_ids(rings[0]) == set(wanted)


def test_selected_ids_reads_customdata_once_each():
    points = [{"customdata": 7}, {"customdata": [3, "y"]}, {"customdata": 7},
              {"point_index": 1}]
    assert selected_ids(points) == [7, 3]


def test_search_matches_plain_python_reference(frame):
    def reference(pred):
        return {int(r.sample_id) for r in frame.itertuples()
                if any(pred(getattr(r, f) or "") for f in ("instruction", "input", "output"))}

    mask, err = search_samples(frame, "Poem")
    assert err is None
    assert set(frame.loc[mask, "sample_id"]) == reference(lambda s: "poem" in s.lower())
    mask, err = search_samples(frame, r"\b\d{4}\b", regex=True)
    assert set(frame.loc[mask, "sample_id"]) == reference(lambda s: re.search(r"\b\d{4}\b", s))
    mask, err = search_samples(frame, "(unclosed", regex=True)
    assert err and not mask.any()
    mask, _ = search_samples(frame, "<script>")  # a substring, not a pattern
    assert set(frame.loc[mask, "sample_id"]) == reference(lambda s: "<script>" in s.lower())


def test_histogram_counts_and_subset(frame):
    column = f"{DS2}.confidence"
    subset = frame["sample_id"].iloc[:40].tolist()
    fig = score_histogram(frame, column, subset)
    values = frame[column].dropna().tolist()
    lo, hi = np.quantile(values, [0.01, 0.99])
    bins = len(fig.data[0].y)

    def plain_counts(vs):  # each value into its bin by hand, beyond the range into the ends
        counts = [0] * bins
        for v in vs:
            counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
        return counts

    assert list(fig.data[0].y) == plain_counts(values)
    assert list(fig.data[1].y) == plain_counts(frame[column].iloc[:40].dropna().tolist())
    bars = score_histogram(frame, f"{DS2}.flagged")
    counts = frame[f"{DS2}.flagged"].value_counts()
    assert dict(zip(bars.data[0].x, bars.data[0].y)) == {
        str(int(k)): int(v) for k, v in counts.items()}


def test_selection_table_keeps_order_and_scores(frame):
    table = selection_table(frame, [305, 0], [f"{DS2}.curated"])
    assert table["sample_id"].tolist() == [305, 0]
    assert table.iloc[1, 3] == frame.loc[frame.sample_id == 0, f"{DS2}.curated"].iloc[0]


def test_a_dense_map_draws_smaller_points():
    """Above 50k points the markers are 2 px (half a software renderer's redraw time); the
    rings on top stay larger than the points."""
    from components.map import DENSE_MAP_POINTS, map_figure

    for n, size in ((DENSE_MAP_POINTS, 4.0), (DENSE_MAP_POINTS + 1, 2.0)):
        dense = pd.DataFrame({"sample_id": np.arange(n), "x": np.arange(n, dtype=float),
                              "y": np.zeros(n), "preview": ""})
        fig = map_figure(dense, None, highlight=[0], hover_text=False)
        assert fig.data[0].marker.size == size
        assert fig.data[-1].marker.size > size


def test_colour_columns_offer_every_numeric_score(frame):
    offered = set(colour_columns(frame))
    ds2_cols = {c for c in frame.columns if c.startswith(DS2 + ".")}
    assert ds2_cols <= offered and "cluster" in offered and "claude_ge_4_5" in offered
    assert not offered & {"x", "y", "sample_id", "preview"}


# ----- pages through AppTest -------------------------------------------------------------------
def test_explore_renders_map_and_histogram(app, fixture_ws):
    assert len(app.get("plotly_chart")) == 1  # the histogram (the map is map_spec's)
    traces = _figure(app)
    n_points = sum(len(t["x"]) for t in traces if not t.get("name", "").startswith("matches"))
    assert n_points == len(fixture_ws)
    assert "<script>" not in json.dumps(map_spec(app))
    assert "Samples" in [m.label for m in app.sidebar.get("metric")]


def test_colour_change_restyles_the_map(app):
    app.selectbox(key="explore_colour").set_value(f"{DS2}.flagged").run()
    assert not app.exception
    names = {t["name"] for t in _figure(app)}
    assert {"0", "1"} <= names
    app.selectbox(key="explore_colour").set_value("cluster").run()
    assert not app.exception
    assert len(_figure(app)) > 2


def test_injected_selection_shows_hostile_text_literally(app, fixture_ws):
    ids = hostile_ids(fixture_ws)
    app.session_state["explore_selected_ids"] = [ids["script"], ids["markdown"], 4]
    app.run()
    assert not app.exception
    code = [c.value for c in app.code]
    assert any(SCRIPT in v for v in code), code
    assert any("<img src=x onerror=alert(1)>" in v for v in code)
    raw_markup = [e.value for kind in ("markdown", "caption", "html", "title", "header",
                                       "subheader") for e in app.get(kind)
                  if isinstance(getattr(e, "value", None), str) and "<script" in e.value]
    assert raw_markup == []
    table = app.dataframe[0].value
    assert table["sample_id"].tolist() == [ids["script"], ids["markdown"], 4]


def test_search_highlights_and_invalid_regex_warns(app, frame):
    app.text_input(key="explore_search").input("haiku").run()
    expected = sum(any("haiku" in (text or "").lower() for text in (q, i, a))
                   for q, i, a in zip(frame["instruction"], frame["input"], frame["output"]))
    rings = [t for t in _figure(app) if t.get("name", "").startswith("matches")]
    assert len(rings) == 1 and len(rings[0]["x"]) == expected
    app.checkbox(key="explore_regex").check()
    app.text_input(key="explore_search").input("(haiku").run()
    assert not app.exception
    assert any("invalid regular expression" in w.value for w in app.warning)


def test_data_page_shows_finished_steps(app):
    app.switch_page("pages/data.py").run()
    assert not app.exception
    captions = [c.value for c in app.caption]
    assert sum(c.startswith("done ") for c in captions) >= 4  # embed, knn, map, ifd
    assert any("k=10" in c and "method=" in c for c in captions)
    assert any(c.startswith(plain(f"{DS2}: done")) for c in captions)  # shown as plain text
    app.button(key="run_knn").click().run()  # same parameters: the cached result
    assert not app.exception and not app.error


def test_data_page_reports_bad_rows_with_row_and_field(app, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "ok", "output": "fine"}) + "\n"
                   + json.dumps({"instruction": "no answer"}) + "\n"
                   + json.dumps({"instruction": "ok 2", "output": 3}) + "\n", encoding="utf-8")
    app.switch_page("pages/data.py").run()
    app.radio(key="data_source").set_value("Path on this machine").run()
    app.text_input(key="data_path").input(str(bad)).run()
    app.button(key="data_check").click().run()
    assert not app.exception
    assert len(app.error) == 1 and "row 1" in app.error[0].value
    assert "output" in app.error[0].value
    app.checkbox(key="data_skip_invalid").check().run()
    app.button(key="data_check").click().run()
    assert not app.exception and not app.error
    skipped = app.dataframe[0].value
    assert skipped["source_row"].tolist() == [1, 2]
    assert skipped["field"].tolist() == ["output", "output"]


def test_upload_creates_a_workspace_and_switches_to_it(app, tmp_path):
    import gzip

    from ui_fixture import HOSTILE_ROWS, _rows

    rows = _rows()[:40] + HOSTILE_ROWS[:2]
    payload = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
    app.switch_page("pages/data.py").run()
    app.file_uploader(key="data_upload").set_value(
        ("mini.jsonl.gz", payload, "application/gzip")).run()
    assert not app.exception
    assert app.text_input(key="data_ws_mini").value == "mini"
    app.button(key="data_import").click().run()
    assert not app.exception, app.exception
    root = tmp_path / "home" / "mini"
    imported = pd.read_parquet(root / "samples.parquet")
    assert imported["instruction"].tolist() == [r["instruction"] for r in rows]
    assert app.session_state["workspace_root"] == str(root.resolve())
    assert any(f"{len(rows):,} rows" in s.value for s in app.success)


def test_app_starts_without_data_or_workspaces(monkeypatch, tmp_path):
    monkeypatch.delenv("CHERRYPICK_WORKSPACE", raising=False)
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("import a file" in i.value.lower() for i in at.info)
    at.switch_page("pages/data.py").run()
    assert not at.exception
    assert at.get("file_uploader")


def test_step_progress_raises_cancelled_once_flagged():
    def script():
        import streamlit as st

        from components.state import StepProgress
        from core.errors import Cancelled

        progress = StepProgress("Demo step", "cancel::demo")
        progress(1, 10, "")
        st.session_state["cancel::demo"] = True
        try:
            progress(2, 10, "")
        except Cancelled:
            st.text("stopped at 2")

    at = AppTest.from_function(script, default_timeout=30).run()
    assert not at.exception
    assert [t.value for t in at.text] == ["stopped at 2"]


def test_sidebar_picker_lists_workspaces_and_switches(app, fixture_ws, tmp_path):
    import shutil

    other = tmp_path / "home" / "second"
    shutil.copytree(fixture_ws.root, other)
    fresh = AppTest.from_file(APP, default_timeout=60).run()  # sees the new folder
    picker = fresh.sidebar.selectbox(key="sidebar_ws")
    assert picker.value == str(fixture_ws.root.resolve())
    assert set(picker.options) == {fixture_ws.root.name, "second"}
    picker.select(str(other.resolve())).run()
    assert not fresh.exception
    assert fresh.session_state["workspace_root"] == str(other.resolve())


# ----- the app's rater → DS2 path is the CLI's ------------------------------------------------
class _HashRater(LoopbackServer):
    """A stdlib OpenAI-compatible server on 127.0.0.1 that rates a sample by a hash of the
    request: overall 1-10, and an answer DS2 cannot read (prose) for every ninth hash."""

    def __init__(self):
        import hashlib

        class Handler(QuietHandler):
            def do_POST(self):
                body = read_json(self)
                digest = int(hashlib.sha256(body["messages"][-1]["content"].encode())
                             .hexdigest()[:8], 16)
                content = ("A fine sample." if digest % 9 == 0 else
                           json.dumps({"Rarity": 5, "Complexity": 5, "Informativeness": 5,
                                       "Overall rating": 1 + digest % 10}))
                send_json(self, 200, chat_completion(content))

        super().__init__(Handler)


@pytest.mark.slow  # rates 200 rows twice and curates twice (~7 s)
def test_app_rater_to_ds2_equals_the_cli(fixture_ws, monkeypatch, tmp_path):
    """"Rate, then run DS2" on the Data page gives the same rating file and the same DS2
    scores as `rate --sample N --seed 0` then `curate --rater NAME` on the same workspace."""
    import shutil

    from core.cli import main
    from core.workspace import Workspace

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("CHERRYPICK_TEST_APP_RATER_KEY", "k")
    by_app, by_cli = (Workspace(shutil.copytree(fixture_ws.root, tmp_path / name))
                      for name in ("app", "cli"))
    size = 200
    with _HashRater() as api:
        monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(by_app.root))
        monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.switch_page("pages/data.py").run()
        at.radio(key="ds2_source").set_value("a rater").run()
        at.selectbox(key="ds2_backend").set_value("openai").run()
        at.text_input(key="ds2_rater").input("fake")
        at.number_input(key="ds2_n").set_value(size)
        at.text_input(key="ds2_url").input(api.base_url)
        at.text_input(key="ds2_model").input("fake-model")
        at.text_input(key="ds2_key_env").input("CHERRYPICK_TEST_APP_RATER_KEY").run()
        at.button(key="run_rate").click().run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]

        common = ["--workspace", str(by_cli.root)]
        assert main(["rate", *common, "--backend", "openai", "--name", "fake", "--base-url",
                     api.base_url, "--model", "fake-model", "--api-key-env",
                     "CHERRYPICK_TEST_APP_RATER_KEY", "--sample", str(size),
                     "--seed", "0"]) == 0
    assert main(["curate", *common, "--rater", "fake"]) == 0

    ratings = by_cli.read_score("rating_fake")
    assert len(ratings) == size < len(by_cli)                    # some samples unrated ...
    assert ratings["parse_error"].notna().any()                 # ... and some unreadable
    pd.testing.assert_frame_equal(by_app.read_score("rating_fake"), ratings)
    pd.testing.assert_frame_equal(by_app.read_score("ds2_rating_fake"),
                                  by_cli.read_score("ds2_rating_fake"))
    app_meta, cli_meta = (ws.score_meta("ds2_rating_fake") for ws in (by_app, by_cli))
    assert app_meta["params"] == cli_meta["params"]
    assert app_meta["key"] == cli_meta["key"]
