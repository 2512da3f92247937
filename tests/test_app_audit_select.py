"""The Audit and Select & Export pages (AppTest on a copy of the UI fixture workspace) and
their figure builders (components/heatmap.py, audit_view.py, selection_view.py).

Expected values come from the workspace files read here with plain pandas/numpy, never from
the code under test. Each app test works on its own copy of the fixture, so the audit log,
selections and exports it writes never leak into other tests.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from ui_fixture import REPO, fixture_ws, private_copy  # noqa: F401

from components.audit_view import transition_counts
from components.heatmap import annotated_heatmap, clicked_cell
from components.selection_view import (cluster_retention, default_split, disagreements,
                                       kept_histogram, quadrant_counts)
from core.workspace import Workspace

APP = str(REPO / "app.py")
RATING = "claude_ge_4_5"
DS2 = f"ds2_{RATING}"


@pytest.fixture
def ws(fixture_ws, tmp_path) -> Workspace:
    """A private copy of the fixture workspace (the pages write into it)."""
    return private_copy(fixture_ws, tmp_path / "ws")


def open_page(ws: Workspace, page: str, monkeypatch, tmp_path) -> AppTest:
    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(ws.root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["workspace_root"] = str(ws.root)
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def ds2_frame(ws: Workspace) -> pd.DataFrame:
    return pd.read_parquet(ws.path("scores", f"{DS2}.parquet"))


def log_lines(ws: Workspace) -> list[dict]:
    path = ws.path("audit.jsonl")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def current_sample(at: AppTest) -> int:
    heads = [h.value for h in at.subheader if h.value.startswith("Sample #")]
    assert len(heads) == 1, heads
    return int(heads[0].split("#")[1])


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, [m.label for m in at.metric]
    return found[0]


# ======================================================================================
# Audit page
# ======================================================================================
def test_audit_page_shows_the_most_confident_flag_first(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    ds2 = ds2_frame(ws)
    flagged = ds2[ds2["flagged"]].sort_values(["confidence", "sample_id"],
                                              ascending=[False, True])
    assert len(flagged) > 0, "the fixture must have flagged samples"
    first = flagged.iloc[0]
    assert current_sample(at) == int(first["sample_id"])
    labels = [b.label for b in at.button]
    assert f"Accept {int(first['suggested'])}" in labels
    assert f"Keep {int(first['rating_class'])}" in labels
    assert any(f"0 of {len(flagged):,} flagged samples audited" in p.proto.text
               for p in at.get("progress"))


def test_accept_appends_one_line_and_undo_restores_the_curated_rating(ws, monkeypatch,
                                                                        tmp_path):
    from core.export import curated_ratings

    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    ds2 = ds2_frame(ws).set_index("sample_id")
    sid = current_sample(at)
    suggested = int(ds2.loc[sid, "suggested"])
    raw = int(ds2.loc[sid, "rating_class"])
    at.button(key="audit_keep" if raw == suggested else "audit_accept").click().run()
    assert not at.exception, at.exception
    lines = log_lines(ws)
    assert len(lines) == 1
    assert lines[0]["sample_id"] == sid and lines[0]["rating_column"] == RATING
    assert lines[0]["old"] == raw and lines[0]["new"] == suggested
    assert set(lines[0]) == {"time", "sample_id", "rating_column", "old", "suggested", "new",
                             "action"}
    assert int(curated_ratings(ws, RATING)[sid]) == suggested
    assert current_sample(at) != sid  # the queue moved on

    at.button(key="audit_undo").click().run()
    assert not at.exception, at.exception
    lines = log_lines(ws)
    assert len(lines) == 2 and lines[1]["action"] == "undo" and lines[1]["sample_id"] == sid
    assert int(curated_ratings(ws, RATING)[sid]) == int(ds2.loc[sid, "curated"])
    assert current_sample(at) == sid  # the undone sample is shown again


def test_skip_and_set_are_logged_with_their_values(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    first = current_sample(at)
    at.button(key="audit_skip").click().run()
    second = current_sample(at)
    assert second != first
    other = at.selectbox(key="audit_set_value").options[0]
    at.selectbox(key="audit_set_value").set_value(int(other)).run()
    at.button(key="audit_set").click().run()
    assert not at.exception, at.exception
    lines = log_lines(ws)
    assert [(e["sample_id"], e["action"]) for e in lines] == [(first, "skip"), (second, "set")]
    assert lines[1]["new"] == int(other) and lines[0]["new"] is None


def test_transition_filter_limits_the_queue(ws, monkeypatch, tmp_path):
    ds2 = ds2_frame(ws)
    flagged = ds2[ds2["flagged"]]
    pairs = flagged.groupby(["rating_class", "suggested"]).size()
    rated, suggested = (int(v) for v in pairs.idxmax())
    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    at.selectbox(key="audit_transition").set_value((rated, suggested)).run()
    assert not at.exception, at.exception
    sid = current_sample(at)
    row = ds2.set_index("sample_id").loc[sid]
    assert (int(row["rating_class"]), int(row["suggested"])) == (rated, suggested)
    expected = flagged[(flagged["rating_class"] == rated) & (flagged["suggested"] == suggested)]
    assert any(f"of {len(expected):,} audited in this filter" in c.value for c in at.caption)


def test_audit_page_without_ds2_says_how_to_make_one(ws, monkeypatch, tmp_path):
    for suffix in ("parquet", "json"):
        ws.path("scores", f"{DS2}.{suffix}").unlink()
    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    assert any("No DS2 scores" in i.value for i in at.info)
    assert any("python -m core curate" in c.value for c in at.code)


def test_audit_shows_sample_text_as_plain_text(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/audit.py", monkeypatch, tmp_path)
    sid = current_sample(at)
    text = ws.samples(["sample_id", "instruction"]).set_index("sample_id").loc[sid,
                                                                                "instruction"]
    assert any(c.value == text for c in at.code)
    assert not any(text in m.value for m in at.markdown if text.strip())


# ======================================================================================
# Select & Export page
# ======================================================================================
def test_moving_the_budget_slider_changes_the_kept_count(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/select_export.py", monkeypatch, tmp_path)
    n = len(ws)
    # DS2 policy over fully rated rows: the budget is floor(ratio × all rows)
    assert metric(at, "Kept") == f"{int(n * 0.10):,}"
    assert any("Where they disagree most" in m.value for m in at.markdown)
    at.slider(key="sel_ratio").set_value(25.0).run()
    assert not at.exception, at.exception
    assert metric(at, "Kept") == f"{int(n * 0.25):,}"
    assert metric(at, "Dropped") == f"{n - int(n * 0.25):,}"


def test_threshold_only_policy_keeps_rows_inside_the_range(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/select_export.py", monkeypatch, tmp_path)
    at.radio(key="sel_policy").set_value("threshold").run()
    at.radio(key="sel_budget_mode").set_value("all").run()
    column = f"{DS2}.long_tail"
    at.multiselect(key="sel_thresholds").set_value([column]).run()
    values = ds2_frame(ws)["long_tail"].to_numpy(float)
    lo, hi = float(np.quantile(values, 0.25)), float(np.quantile(values, 0.75))
    slider = at.slider(key=f"sel_thr::{column}")
    slider.set_value((lo, hi)).run()
    assert not at.exception, at.exception
    low, high = at.slider(key=f"sel_thr::{column}").value
    expected = int(((values >= low) & (values <= high)).sum())
    assert metric(at, "Kept") == f"{expected:,}"


def test_save_and_export_write_selection_jsonl_and_manifest(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/select_export.py", monkeypatch, tmp_path)
    at.slider(key="sel_ratio").set_value(20.0).run()
    at.text_input(key="sel_name").set_value("top-fifth").run()
    at.button(key="sel_save").click().run()
    assert not at.exception, at.exception
    saved = json.loads(ws.path("selections", "top-fifth.json").read_text("utf-8"))
    # plain reference of DS2 dual sort: curated best first, long-tail high first, id
    ds2 = ds2_frame(ws)
    order = ds2.sort_values(["curated", "long_tail", "sample_id"],
                            ascending=[False, False, True])
    want = order[order["curated"] >= 0]["sample_id"].head(int(len(ws) * 0.20)).tolist()
    assert saved["sample_ids"] == want

    at.button(key="sel_export").click().run()
    assert not at.exception, at.exception
    out = ws.path("exports", "top-fifth.jsonl")
    lines = out.read_text("utf-8").splitlines()
    assert len(lines) == len(want)
    records = ws.samples(["sample_id", "record"]).set_index("sample_id")["record"]
    assert [json.loads(line) for line in lines] == [json.loads(records[i])
                                                   for i in sorted(want)]
    manifest = json.loads(ws.path("exports", "top-fifth.manifest.json").read_text("utf-8"))
    assert manifest["rows"] == len(want)
    assert manifest["selection"]["recipe"]["ranking"]["type"] == "ds2"
    assert any(b.label.startswith("Download top-fifth.jsonl")
               for b in at.get("download_button"))

    # a second export to the same name keeps the file unless "Replace" is ticked
    at.slider(key="sel_ratio").set_value(10.0).run()
    at.button(key="sel_export").click().run()
    assert any("already exists" in e.value for e in at.error)
    assert len(out.read_text("utf-8").splitlines()) == len(want)
    at.checkbox(key="sel_export_replace").check().run()
    at.button(key="sel_export").click().run()
    assert not at.error and not at.exception
    assert len(out.read_text("utf-8").splitlines()) == int(len(ws) * 0.10)


def test_compare_with_a_saved_selection_counts_added_and_removed(ws, monkeypatch, tmp_path):
    at = open_page(ws, "pages/select_export.py", monkeypatch, tmp_path)
    at.text_input(key="sel_name").set_value("ten").run()
    at.button(key="sel_save").click().run()
    at.slider(key="sel_ratio").set_value(15.0).run()
    at.toggle(key="sel_compare").set_value(True).run()
    assert not at.exception, at.exception
    n = len(ws)
    assert metric(at, "In both") == f"{int(n * 0.10):,}"
    assert metric(at, "Added now") == f"{int(n * 0.15) - int(n * 0.10):,}"
    assert metric(at, "Removed now") == "0"
    per_cluster = [d.value for d in at.dataframe if d.value.index.name == "cluster"]
    titles = ws.cluster_titles()
    assert per_cluster and all(row["title"] == titles[int(c)]
                               for c, row in per_cluster[0].iterrows())


# ======================================================================================
# figure builders
# ======================================================================================
def test_transition_counts_match_a_plain_count():
    ds2 = pd.DataFrame({"sample_id": range(7), "rating_class": [0, 1, 1, 2, 2, 0, 1],
                        "suggested": [1, 0, 0, 0, 2, 1, 2],
                        "flagged": [True, True, True, True, False, False, True]})
    counts = transition_counts(ds2, 3)
    ref = np.zeros((3, 3), int)
    for r, s, f in zip(ds2["rating_class"], ds2["suggested"], ds2["flagged"]):
        if f:
            ref[s, r] += 1      # [true = suggested, rated]
    assert counts.tolist() == ref.tolist()


def test_heatmap_cells_are_clickable_and_annotated():
    fig = annotated_heatmap([[0.9, 0.1], [0.3, 0.7]], [0, 1], [0, 1], counts=[[5, 2], [1, 0]])
    heat, cells = fig.data
    assert heat.type == "heatmap" and "0.10<br>n=2" in heat.text[0][1]
    assert len(cells.x) == 4
    # a click comes back as Streamlit's selection; the browser sends customdata as a dict
    point = {"customdata": {"0": 1, "1": 0}, "x": "0", "y": "1"}
    assert clicked_cell({"selection": {"points": [point]}}) == (1, 0)
    assert clicked_cell({"selection": {"points": [{"customdata": [0, 1]}]}}) == (0, 1)
    assert clicked_cell({"selection": {"points": []}}) is None
    assert clicked_cell(None) is None


def test_kept_histogram_splits_every_finite_value_into_kept_and_dropped():
    rng = np.random.default_rng(0)
    values = rng.normal(size=500)
    values[:7] = np.nan
    kept = rng.random(500) < 0.3
    fig = kept_histogram(values, kept, "score", lo=-1.0, hi=1.0)
    kept_bar, dropped_bar = fig.data
    assert int(np.sum(kept_bar.y)) == int((kept & np.isfinite(values)).sum())
    assert int(np.sum(kept_bar.y) + np.sum(dropped_bar.y)) == 493
    assert [s.x0 for s in fig.layout.shapes] == [-1.0, 1.0]
    assert "7 without a score" in fig.layout.title.text


def test_quadrants_disagreements_and_retention_match_plain_references():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=300), rng.normal(size=300)
    x[3] = np.nan
    counts = quadrant_counts(x, y, 0.2, -0.1)
    ok = np.isfinite(x)
    assert counts["high x, low y"] == int(((x[ok] >= 0.2) & (y[ok] < -0.1)).sum())
    assert sum(counts.values()) == 299

    frame = pd.DataFrame({"sample_id": np.arange(300), "a": x, "b": y})
    top = disagreements(frame, "a", "b", top=5)
    ra = pd.Series(x).rank() .sub(1).div(298)
    rb = pd.Series(y).rank().sub(1).div(299)
    gap = (ra - rb).abs()
    assert top["sample_id"].tolist() == gap.sort_values(ascending=False).index[:5].tolist()

    assert default_split(np.array([0, 0, 0, 1, np.nan])) == 0.5   # never cuts a class
    assert default_split(np.array([0, 1, 2, 2, 2])) == 1.5          # top class: below it
    assert default_split(np.array([0.1, 0.2, 0.9])) == 0.2

    clusters = np.array([0, 0, 1, 1, 1, np.nan])
    kept = np.array([True, False, True, True, False, True])
    ret = cluster_retention(clusters, kept, {0: "a", 1: "b"}).set_index("cluster")
    assert ret.loc[1, "kept"] == 2 and ret.loc[1, "size"] == 3
    assert ret.loc[0, "share"] == 0.5 and ret.loc[0, "title"] == "a"
