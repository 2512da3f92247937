"""Tags and bulk actions (core/tags.py): lines in the audit log, the fold with undo, bulk
reject / send to the audit queue, the recipe filters, the export field and the CLI."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.audit import (AuditLogWarning, append_decision, audit_path, audit_queue,
                        audit_state, read_log, rejected_ids, undo_last)
from core.cli import main
from core.errors import InputError
from core.export import export_all
from core.io import import_to_workspace
from core.select import Recipe, load_selection, run_selection, save_selection
from core.tags import (bulk_decide, bulk_history, fold_tags, tag_samples, tags_in_force,
                       undo_bulk)
from core.workspace import Workspace
from real_rows import first_rows
from test_browser_fixes import (MAP_TRACES, _settle, box_select, no_exception, on_map,
                                open_explore, pick_colour, selected_count, shot)
from test_browser_fixes import browser, server  # noqa: F401 - fixtures for the browser test
from ui_fixture import REPO, cached_fixture_workspace, map_spec, private_copy

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COL = "claude_ge_4_5"


@pytest.fixture()
def ws(tmp_path):
    rows = first_rows(DATA / "alpaca_random_9k.jsonl.gz", 12)
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    workspace, _ = import_to_workspace(src, tmp_path / "ws")
    return workspace


def in_force(ws) -> dict[int, list[str]]:
    table = tags_in_force(ws)
    return dict(zip(table["sample_id"].tolist(), table["tags"].tolist()))


def test_tag_untag_and_undo_fold_from_the_append_only_log(ws):
    tag_samples(ws, "math", [3, 1, 3, 2])
    tag_samples(ws, "keep-me", [2])
    tag_samples(ws, "math", [2], untag=True)
    assert in_force(ws) == {1: ["math"], 2: ["keep-me"], 3: ["math"]}
    lines = audit_path(ws).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3  # one line per bulk action, ids sorted and unique
    assert json.loads(lines[0])["sample_ids"] == [1, 2, 3]

    undone = undo_bulk(ws)  # the untag goes: 2 is math again
    assert undone["action"] == "untag"
    assert in_force(ws) == {1: ["math"], 2: ["keep-me", "math"], 3: ["math"]}
    assert undo_bulk(ws, tag="math")["action"] == "tag"  # skips keep-me, undoes the first tag
    assert in_force(ws) == {2: ["keep-me"]}
    assert undo_bulk(ws, tag="math") is None
    before = audit_path(ws).read_bytes()
    assert undo_bulk(ws, tag="nothing-here") is None
    assert audit_path(ws).read_bytes() == before  # nothing to undo writes nothing
    assert len(audit_path(ws).read_text().splitlines()) == 5  # nothing was rewritten


def test_fold_tags_against_a_plain_replay():
    entries = [{"action": "tag", "tag": "a", "sample_ids": [1, 2], "action_id": "x1"},
               {"action": "tag", "tag": "b", "sample_ids": [2], "action_id": "x2"},
               {"action": "untag", "tag": "a", "sample_ids": [1], "action_id": "x3"},
               {"action": "undo_bulk", "undoes": "x2", "action_id": "x4"},
               {"action": "untag", "tag": "b", "sample_ids": [5], "action_id": "x5"}]
    assert fold_tags(entries) == {"a": {2}}


def test_tag_lines_do_not_disturb_decisions_and_bulk_decisions_undo(ws):
    append_decision(ws, 4, COL, "set", old=1, suggested=0, new=0)
    tag_samples(ws, "math", [4, 5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", AuditLogWarning)  # tag lines are valid, not skipped
        assert [e["sample_id"] for e in read_log(ws)] == [4]
        bulk = bulk_decide(ws, "reject", [4, 5, 6], COL)
        assert rejected_ids(ws) == {4, 5, 6}
        assert bulk_history(ws)[-1]["action_id"] == bulk["action_id"]
        assert undo_bulk(ws)["action"] == "reject"
        assert rejected_ids(ws) == set()
        # the hand-set rating from before the bulk reject is in force again
        assert audit_state(ws).rating(4, COL) == 0
        assert in_force(ws) == {4: ["math"], 5: ["math"]}  # the undo left the tags alone


def test_send_to_queue_lists_unflagged_samples_in_the_audit_queue(ws):
    ds2 = pd.DataFrame({"sample_id": range(6), "flagged": [True, False, False, False,
                                                           False, False],
                        "rating_class": [1] * 6, "suggested": [0, 1, 1, 1, 1, 1],
                        "confidence": [0.9] + [0.0] * 5, "noisy_avg": [0.5] * 6})
    assert audit_queue(ds2, audit_state(ws), COL)["sample_id"].tolist() == [0]
    bulk_decide(ws, "queue", [3, 5], COL)
    queue = audit_queue(ds2, audit_state(ws), COL)
    assert queue["sample_id"].tolist() == [0, 3, 5]
    assert queue["status"].tolist() == ["open", "skip", "skip"]
    append_decision(ws, 3, COL, "accept", old=1, suggested=1)  # decided: listed as such
    queue = audit_queue(ds2, audit_state(ws), COL, include_decided=True)
    assert dict(zip(queue["sample_id"], queue["status"])) == {0: "open", 5: "skip",
                                                              3: "accept"}
    undo_last(ws, COL)
    undo_bulk(ws)
    assert audit_queue(ds2, audit_state(ws), COL)["sample_id"].tolist() == [0]
    bulk_decide(ws, "reject", [1, 2], COL)  # a bulk reject does not fill the queue
    assert audit_queue(ds2, audit_state(ws), COL, include_decided=True)[
        "sample_id"].tolist() == [0]


@pytest.mark.parametrize("name", ["", "../x", "a b", "tag\x1b[31m", "<b>x</b>", "x" * 101,
                                  "-lead", "a..b", 7])
def test_hostile_tag_names_are_refused_and_nothing_is_written(ws, name):
    with pytest.raises(InputError, match="tag name"):
        tag_samples(ws, name, [1])
    assert not audit_path(ws).exists()


def test_bad_ids_are_refused(ws):
    for ids in ([], [99], [-1], [True], ["3"]):
        with pytest.raises(InputError):
            tag_samples(ws, "ok", ids)
    assert not audit_path(ws).exists()


def test_a_hand_edited_tag_line_is_skipped_with_a_warning(ws):
    tag_samples(ws, "good", [1])
    with open(audit_path(ws), "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"action": "tag", "tag": "../evil", "sample_ids": [2],
                             "action_id": "b-x"}) + "\n")
    with pytest.warns(AuditLogWarning, match="line 2"):
        assert in_force(ws) == {1: ["good"]}


def test_recipe_filters_tagged_and_exclude_tagged(ws, tmp_path):
    tag_samples(ws, "math", [1, 4, 7])
    tagged = run_selection(ws, {"filters": [{"type": "tagged", "tag": "math"}],
                                "ranking": {"type": "none"}})
    assert tagged.sample_ids == [1, 4, 7]
    rest = run_selection(ws, {"filters": [{"type": "exclude_tagged", "tag": "math"}],
                              "ranking": {"type": "none"}})
    assert rest.sample_ids == [i for i in range(12) if i not in (1, 4, 7)]
    assert "audit.jsonl" in tagged.inputs  # the log's sha256 is recorded with the selection
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("filters:\n  - {type: exclude_tagged, tag: math}\nranking: {type: none}\n")
    assert run_selection(ws, recipe).sample_ids == rest.sample_ids
    with pytest.raises(InputError, match="tag name"):
        Recipe.from_dict({"filters": [{"type": "tagged", "tag": "../x"}],
                          "ranking": {"type": "none"}})


def test_export_with_tags_writes_a_tags_field_only_on_request(ws, tmp_path):
    tag_samples(ws, "math", [0, 2])
    tag_samples(ws, "hard", [2])
    export_all(ws, tmp_path / "plain.jsonl")
    plain = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert all("tags" not in row for row in plain)
    manifest = export_all(ws, tmp_path / "tagged.jsonl", with_tags=True)
    rows = [json.loads(line) for line in (tmp_path / "tagged.jsonl").read_text().splitlines()]
    assert [row["tags"] for row in rows[:3]] == [["math"], [], ["hard", "math"]]
    assert manifest["with_tags"] is True


def test_cli_tags_by_ids_selection_and_query_and_undoes(ws, capsys):
    root = str(ws.root)
    assert main(["tag", "--workspace", root, "--tag", "picked", "--ids", "1,2"]) == 0
    save_selection(ws, "first3", run_selection(ws, {"filters": [], "ranking": {"type": "none"},
                                                    "budget": {"n": 3}}))
    assert load_selection(ws, "first3")["sample_ids"] == [0, 1, 2]
    assert main(["tag", "--workspace", root, "--tag", "sel", "--selection", "first3"]) == 0
    word = ws.samples()["instruction"].iloc[5].split()[0]
    assert main(["tag", "--workspace", root, "--tag", "found", "--query", word]) == 0
    assert 5 in set(tags_in_force(ws).explode("tags").query("tags == 'found'")["sample_id"])
    assert in_force(ws)[0] == ["sel"]
    assert main(["tag", "--workspace", root, "--undo"]) == 0
    assert "found" not in {t for ts in in_force(ws).values() for t in ts}
    assert main(["tag", "--workspace", root, "--tag", "picked", "--untag", "--ids", "2"]) == 0
    assert in_force(ws)[2] == ["sel"]


@pytest.mark.parametrize("argv, words", [
    (["--tag", "../x", "--ids", "1"], "tag name"),
    (["--tag", "ok", "--ids", "1,x"], "--ids"),
    (["--tag", "ok", "--ids", "999"], "not in the workspace"),
    (["--tag", "ok"], "--ids, --selection or --query"),
    (["--ids", "1"], "--tag NAME is required"),
    (["--undo", "--ids", "1"], "--undo takes no ids"),
    (["--tag", "ok", "--selection", "nope"], "nope"),
    (["--tag", "ok", "--query", "zzzz-no-such-text-qq"], "no samples"),
])
def test_cli_errors_are_one_line_and_exit_2(ws, capsys, argv, words):
    assert main(["tag", "--workspace", str(ws.root), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not audit_path(ws).exists()


# ======================================================================================
# the Explore page's bulk-action bar (AppTest on a private copy of the UI fixture)
# ======================================================================================
def _explore(fixture_ws, tmp_path, monkeypatch, picked):
    root = private_copy(fixture_ws, tmp_path / "ui-ws").root
    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.session_state["workspace_root"] = str(root)
    at.session_state["explore_selected_ids"] = picked
    at.switch_page("pages/explore.py")
    at.run()
    assert not at.exception, at.exception
    return at, Workspace.open(root)


@pytest.fixture()
def ui_fixture_ws():
    return cached_fixture_workspace()


def test_bulk_bar_tags_the_selection_colours_by_it_and_undoes(ui_fixture_ws, tmp_path,
                                                               monkeypatch):
    picked = [3, 8, 40]
    at, ws = _explore(ui_fixture_ws, tmp_path, monkeypatch, picked)
    assert "tags.math" not in at.selectbox(key="explore_colour").options
    at.text_input(key="bulk_tag_name").set_value("math")
    at.button(key="bulk_tag").click().run()
    assert not at.exception, at.exception
    assert in_force(ws) == {sid: ["math"] for sid in picked}
    assert any("Tagged 3 samples as math" in s.value for s in at.success)
    # the tag is a colouring: a legend entry of exactly the tagged points
    at.selectbox(key="explore_colour").set_value("tags.math").run()
    traces = map_spec(at)["data"]

    def ids(trace):
        value = trace["customdata"]
        if isinstance(value, dict):
            value = np.frombuffer(base64.b64decode(value["bdata"]), value["dtype"])
        return {int(i) for i in value}

    assert [ids(t) for t in traces if t.get("name") == "1"] == [set(picked)]

    at.button(key="bulk_reject").click().run()
    assert rejected_ids(ws) == set(picked)
    at.button(key="bulk_undo").click().run()  # undoes the reject, not the tag
    assert rejected_ids(ws) == set() and in_force(ws) == {sid: ["math"] for sid in picked}
    at.button(key="bulk_undo").click().run()
    assert not at.exception, at.exception
    assert in_force(ws) == {}

    at.button(key="bulk_queue").click().run()  # the Audit page lists them, flagged or not
    at.switch_page("pages/audit.py").run()
    assert not at.exception, at.exception
    queue = at.dataframe[0].value
    assert set(picked) <= set(queue["sample_id"].tolist())


def test_bulk_bar_refuses_a_hostile_tag_name_in_plain_text(ui_fixture_ws, tmp_path,
                                                           monkeypatch):
    at, ws = _explore(ui_fixture_ws, tmp_path, monkeypatch, [3])
    at.text_input(key="bulk_tag_name").set_value("[x](javascript:alert(1))").run()
    at.button(key="bulk_tag").click().run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] and "bad tag name" in at.error[0].value
    assert "\\[x\\]" in at.error[0].value  # shown escaped, never as a link
    assert not audit_path(ws).exists()


# ======================================================================================
# in a real browser (the servers and helpers of test_browser_fixes.py)
# ======================================================================================
@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The workspaces folder ``server`` (test_browser_fixes.py) serves: one fixture copy."""
    folder = tmp_path_factory.mktemp("tag-home")
    private_copy(cached_fixture_workspace(), folder / "fixture")
    return folder


@pytest.mark.browser
def test_bulk_bar_in_a_browser_tags_a_box_selection_and_undoes(server, browser, home):
    root = home / "fixture"
    page, dialogs = open_explore(browser, server)
    try:
        box_select(page)
        count = selected_count(page)
        page.get_by_placeholder("tag name, e.g. math").fill("picked")
        page.get_by_role("button", name="Tag", exact=True).click()
        page.wait_for_selector(f"text=Tagged {count:,} samples as picked", timeout=30_000)
        _settle(page)
        tagged = in_force(Workspace.open(root))
        assert len(tagged) == count and set(map(tuple, tagged.values())) == {("picked",)}
        pick_colour(page, "tags.picked")
        assert "1" in on_map(page, MAP_TRACES)
        shot(page, "tags-bulk-bar", full_page=True)
        page.get_by_role("button", name="Undo last").click()
        page.wait_for_selector("text=/Undid: tag picked/", timeout=30_000)
        assert in_force(Workspace.open(root)) == {}
        no_exception(page)
        assert dialogs == []
    finally:
        page.close()
