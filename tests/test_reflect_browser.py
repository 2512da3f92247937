"""The Reflect page: AppTest, and a real browser (`streamlit run app.py`, Playwright with
Debian's chromium) on a small reflected workspace (the fake teacher of tests/test_reflect.py,
synthetic student scores, no LM). No exception box, no script from sample text runs, the
Keep / Reject buttons write audit lines, and a screenshot goes to
/tmp/cherrypick-shots/reflect.png. Also what the page and the export show: the word-level
diff and a recycled record in each input schema."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.reflect.parse import OK
from core.reflect.diff import word_diff
from core.reflect.recycle import decisions, replace_fields
from core.reflect.student import student_score_name
from core.reflect.teacher import run_teacher, versions_name
from core.workspace import Workspace
from loopback import LoopbackServer
from real_rows import first_rows
from test_browser import CHROMIUM, CHROMIUM_ARGS, _settle, app_env, streamlit_server
from test_reflect import DATA, SYNTHETIC, make_handler, make_ws, teacher

SHOTS = Path("/tmp/cherrypick-shots")


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def synthetic_student(ws: Workspace, name: str) -> pd.DataFrame:
    """Student scores for the versions of run ``name`` that make the rule keep QA* on even
    sample ids and A* on odd ones (missing versions stay missing), written as a score file."""
    versions = pd.read_parquet(ws.path(versions_name(name)))
    frame = {"sample_id": versions["sample_id"].to_numpy(np.int64)}
    even = (versions["sample_id"] % 2 == 0).to_numpy()
    values = {"ori": (0.5, 0.9), "q": (np.where(even, 0.8, 0.4), 0.8),
              "qa": (0.7, 0.6), "a": (0.6, 0.7)}
    for v, (ifd, rifd) in values.items():
        ok = np.ones(len(versions), bool) if v == "ori" else \
            (versions[f"{v}_status"] == OK).to_numpy()
        for f, value in (("ifd", ifd), ("rifd", rifd)):
            col = np.where(ok, np.broadcast_to(value, len(versions)), np.nan)
            frame[f"{v}_{f}"] = col
            frame[f"{v}_{f}_ppl"] = col
        frame[f"{v}_missing"] = pd.array([None if k else str(s) for k, s in zip(
            ok, versions[f"{v}_status"] if v != "ori" else [""] * len(versions))],
            dtype="string")
    frame = pd.DataFrame(frame)
    ws.write_score(student_score_name(name), frame,
                   {"key": f"synthetic-{len(frame)}", "params": {"model": "synthetic"}})
    return frame


def reflected_app_ws(root: Path) -> Workspace:
    """Real rows, the UI fixture's hostile rows and a malformed one, reflected by the fake
    teacher, with synthetic student scores."""
    from ui_fixture import HOSTILE_ROWS

    root.mkdir(parents=True, exist_ok=True)
    rows = first_rows(DATA, 4) + HOSTILE_ROWS[:2] + [SYNTHETIC[1]]
    ws = make_ws(root, rows)
    with LoopbackServer(make_handler()) as server:
        run_teacher(ws, teacher(server), "fake")
    synthetic_student(ws, "fake")
    return ws


def open_reflect(ws: Workspace, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CHERRYPICK_WORKSPACE", str(ws.root))
    monkeypatch.setenv("CHERRYPICK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHERRYPICK_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"),
                           default_timeout=60)
    at.session_state["workspace_root"] = str(ws.root)
    at.switch_page("pages/reflect.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_reflect_page_shows_versions_verdict_diff_and_logs_decisions(tmp_path, monkeypatch):
    ws = reflected_app_ws(tmp_path / "app")
    at = open_reflect(ws, monkeypatch, tmp_path)
    # QA* on even ids 0, 2, 4; A* on odd 1, 3, 5; the malformed row 6 has neither
    assert [m.value for m in at.metric][:3] == ["7", "3", "3"]
    assert at.subheader[0].value == "Sample #0"
    from components.messages import plain

    reason = pd.read_parquet(ws.path("reflect/fake/choice.parquet"))["reason"].iloc[0]
    assert reason.startswith("Keep QA*") and at.info[0].value == plain(reason)
    codes = [c.value for c in at.code]
    assert any("[-" in c or "{+" in c for c in codes)  # a word-level diff
    table = at.dataframe[0].value
    assert table["version"].tolist() == ["ori", "Q*", "QA*", "A*"]
    assert table["IFD (ppl)"].tolist()[:3] == [0.5, 0.8, 0.7]
    # keep, then reject: two audit lines on the run's own column
    at.button(key="reflect_keep").click().run()
    at.button(key="reflect_reject").click().run()
    assert not at.exception
    lines = [json.loads(line) for line in ws.path("audit.jsonl").read_text().splitlines()]
    assert [(x["sample_id"], x["rating_column"], x["action"], x["new"]) for x in lines] == \
        [(0, "reflection:fake", "keep", 1), (0, "reflection:fake", "set", 0)]
    assert decisions(ws, "fake") == {0: 0}
    # hostile text is shown as it is, in code blocks, never rendered
    at.selectbox(key="reflect_sample").select(4).run()
    assert not at.exception
    assert any("<script>alert(1)</script>" in c.value for c in at.code)
    assert all("<script>" not in m.value for m in at.markdown)


def test_reflect_page_without_a_run_says_how_to_make_one(tmp_path, monkeypatch):
    ws = make_ws(tmp_path, SYNTHETIC)
    at = open_reflect(ws, monkeypatch, tmp_path)
    assert "No reflected versions" in at.info[0].value
    assert "python -m core reflect" in at.code[0].value


# ----- what the page and the export show -----------------------------------------------------
def test_word_diff_marks_removed_and_added_words_only():
    d = word_diff("the cat sat on the mat", "the dog sat on a mat")
    assert d.text == "the [-cat-]{+dog+} sat on [-the-]{+a+} mat"
    assert (d.removed, d.added, d.same) == (2, 2, 4)
    assert word_diff("same", "same").text == "same"
    assert word_diff(None, "new").text == "{+new+}"


def test_replace_fields_keeps_the_schema_of_each_format():
    alpaca = replace_fields({"instruction": "a", "input": "b", "output": "c", "id": 7},
                            "alpaca", {}, "Q", "", "A")
    assert alpaca == {"instruction": "Q", "input": "", "output": "A", "id": 7}
    mapped = replace_fields({"prompt": "a", "completion": "c"}, "alpaca",
                            {"instruction": "prompt", "output": "completion"}, "Q", "", "A")
    assert mapped == {"prompt": "Q", "completion": "A"}
    chat = replace_fields({"messages": [{"role": "system", "content": "be nice"},
                                        {"role": "user", "content": "a"},
                                        {"role": "assistant", "content": "c"}]},
                          "messages", {}, "Q", "in", "A")
    assert chat["messages"] == [{"role": "system", "content": "be nice"},
                                {"role": "user", "content": "Q\n\nin"},
                                {"role": "assistant", "content": "A"}]
    share = replace_fields({"conversations": [{"from": "human", "value": "a"},
                                              {"from": "gpt", "value": "c"}]},
                           "sharegpt", {}, "Q", "", "A")
    assert share["conversations"] == [{"from": "human", "value": "Q"},
                                      {"from": "gpt", "value": "A"}]


# ----- in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reflected(tmp_path_factory):
    return reflected_app_ws(tmp_path_factory.mktemp("reflect-browser"))


@pytest.fixture(scope="module")
def server(reflected, tmp_path_factory):
    env = app_env(reflected.root, tmp_path_factory.mktemp("home"),
                  tmp_path_factory.mktemp("no-data"))
    with streamlit_server(env, tmp_path_factory.mktemp("log"), start_timeout_s=90) as url:
        yield url


@pytest.mark.browser
def test_reflect_page_in_a_browser(server, reflected):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"chromium not found at {CHROMIUM}: run `make browser`"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1700})
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{server}/reflect", wait_until="domcontentloaded")
            _settle(page, timeout_ms=60_000)
            page.get_by_text("Word-level changes").wait_for(timeout=30_000)
            errors = page.locator('[data-testid="stException"]')
            assert errors.count() == 0, errors.first.inner_text()
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "reflect.png"), full_page=True)
            page.get_by_role("button", name="Keep reflected version").click()
            deadline = time.monotonic() + 30
            audit = reflected.path("audit.jsonl")
            while not audit.exists() and time.monotonic() < deadline:
                time.sleep(0.3)
            lines = [json.loads(x) for x in audit.read_text().splitlines()]
            assert [(x["sample_id"], x["rating_column"], x["action"]) for x in lines] == \
                [(0, "reflection:fake", "keep")]
            # the hostile rows' text: shown, never run
            page.get_by_text("#4 · QA*").count()
            assert dialogs == []
        finally:
            browser.close()
