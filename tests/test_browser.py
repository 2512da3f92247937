"""End to end in a real browser: `streamlit run app.py` on the fixture workspace, every page
opened with Playwright (Debian's chromium), no exception box, no script from sample text ever
runs (no dialog), the map is drawn on a WebGL canvas, and a screenshot per page goes to
test-output/screenshots/ for a person to look at.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ui_fixture import REPO, SCRIPT, fixture_ws  # noqa: F401

CHROMIUM = Path(os.environ.get("CHERRYPICK_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
PAGES = {"data": "data", "explore": "", "audit": "audit", "select_export": "select_export"}
SHOTS = REPO / "test-output" / "screenshots"

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(env: dict, log_dir: Path, start_timeout_s: float = 60):
    """``streamlit run app.py`` on a free loopback port with ``env``; yields its URL once
    healthy and always stops it (the log goes to ``log_dir`` and into a start failure)."""
    port = _free_port()
    log = open(log_dir / "streamlit.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(url + "/_stcore/health", timeout=2).text.strip() == "ok":
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail("streamlit did not start:\n" + log.read()[-3000:])
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def app_env(workspace: Path, home: Path, data: Path) -> dict:
    """The environment of an app server on ``workspace``: its own Cherrypick home, a data
    folder without the demo files (``data`` need not exist), no model hub."""
    return dict(os.environ, CHERRYPICK_WORKSPACE=str(workspace), CHERRYPICK_HOME=str(home),
                CHERRYPICK_DATA=str(data), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


@pytest.fixture(scope="module")
def server(fixture_ws, tmp_path_factory):
    """A Streamlit server on the fixture workspace, stopped in a finally."""
    env = app_env(fixture_ws.root, tmp_path_factory.mktemp("home"),
                  tmp_path_factory.mktemp("no-data"))
    with streamlit_server(env, tmp_path_factory.mktemp("log")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"chromium not found at {CHROMIUM}: run `make browser`"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser, url: str):
    """A fresh page that records every dialog (a fired alert() means sample text ran)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1700})
    dialogs: list[str] = []

    def on_dialog(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(url, wait_until="domcontentloaded")
    return page, dialogs


def _settle(page, timeout_ms: int = 30_000) -> None:
    """Wait until the app script has run: the sidebar summary (drawn by app.py after
    st.navigation) is there and the status widget no longer says "running"."""
    page.wait_for_selector('[data-testid="stSidebar"] [data-testid="stMetric"]',
                           timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout_ms)
    page.wait_for_timeout(800)


MAP_FRAME = 'iframe[title$="cherrypick_map"]'  # components/map_widget.py


def map_frame(page, timeout_ms: int = 60_000):
    """The frame the Explore map draws in, once plotly has drawn its canvas there."""
    page.wait_for_selector(MAP_FRAME, state="attached", timeout=timeout_ms)
    frame = page.locator(MAP_FRAME).first.element_handle().content_frame()
    frame.wait_for_selector(".js-plotly-plot canvas", state="attached", timeout=timeout_ms)
    return frame


@pytest.mark.parametrize("name", list(PAGES))
def test_page_renders_without_exception(server, browser, name):
    page, dialogs = _open(browser, f"{server}/{PAGES[name]}")
    try:
        _settle(page)
        if name == "explore":
            map_frame(page)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        errors = page.locator('[data-testid="stException"]')
        assert errors.count() == 0, errors.first.inner_text()
        assert dialogs == []
    finally:
        page.close()


POINT_POSITION = """(sampleId) => {
  // a sample's marker in the map frame's pixels, from plotly's own axis conversion
  const gd = document.querySelector('.js-plotly-plot');
  const fl = gd._fullLayout, box = gd.getBoundingClientRect();
  for (const tr of gd._fullData) {
    const i = Array.from(tr.customdata || []).indexOf(sampleId);
    if (i >= 0) return {x: box.left + fl._size.l + fl.xaxis.d2p(tr.x[i]),
                        y: box.top + fl._size.t + fl.yaxis.d2p(tr.y[i])};
  }
  return null;
}"""


def point_on_page(page, sample_id: int) -> dict | None:
    """Page pixel position of a sample's marker on the Explore map (it draws in a frame)."""
    where = map_frame(page).evaluate(POINT_POSITION, sample_id)
    if where is None:
        return None
    offset = page.locator(MAP_FRAME).first.bounding_box()
    return {"x": where["x"] + offset["x"], "y": where["y"] + offset["y"]}


def test_map_hover_shows_hostile_text_as_text(server, browser, fixture_ws):
    from ui_fixture import hostile_ids

    page, dialogs = _open(browser, server)
    try:
        _settle(page)
        frame = map_frame(page)
        page.wait_for_timeout(1000)
        where = point_on_page(page, hostile_ids(fixture_ws)["script"])
        assert where is not None
        page.mouse.move(where["x"], where["y"])
        frame.wait_for_function(
            "() => Array.from(document.querySelectorAll('.hoverlayer'))"
            ".some(g => g.textContent.includes('alert(1)'))", timeout=10_000)
        label = " ".join(frame.locator(".hoverlayer").all_text_contents())
        assert SCRIPT in label  # shown as characters, not parsed as an element
        assert frame.locator(".hoverlayer script").count() == 0
        page.screenshot(path=str(SHOTS / "explore-hover.png"),
                        clip={"x": max(where["x"] - 350, 0), "y": max(where["y"] - 150, 0),
                              "width": 900, "height": 300})
        assert dialogs == []
    finally:
        page.close()


def test_explore_search_shows_hostile_text_without_running_it(server, browser):
    page, dialogs = _open(browser, server)
    try:
        _settle(page)
        frame = map_frame(page)
        search = page.get_by_label("Search instruction, input and output")
        search.fill("alert(")
        search.press("Enter")
        _settle(page)
        page.wait_for_selector('[data-testid="stCode"]', timeout=30_000)
        code = " ".join(page.locator('[data-testid="stCode"]').all_inner_texts())
        assert SCRIPT in code
        page.screenshot(path=str(SHOTS / "explore-search.png"), full_page=True)
        # the sample's markup must not exist as elements anywhere on the page
        assert page.locator("img[src='x']").count() == 0
        assert page.evaluate("() => document.querySelectorAll('svg[onload]').length") == 0
        assert frame.locator("img[src='x']").count() == 0  # nor in the map's frame
        assert page.locator('[data-testid="stException"]').count() == 0
        assert dialogs == []
    finally:
        page.close()
