"""Issue 15, "Dashboard fixes", seen in a real browser: `streamlit run app.py` on private
copies of the fixture workspace (tests/ui_fixture.py), driven with Playwright and Debian's
chromium like tests/test_browser.py. Screenshots go to test-output/screenshots/fixes-*.png.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from test_browser import SHOTS, _open, browser, map_frame, streamlit_server  # noqa: F401
from test_browser import _settle as _settle_once
from ui_fixture import fixture_ws, private_copy  # noqa: F401

from core.workspace import Workspace

pytestmark = pytest.mark.browser
DS2 = "ds2_claude_ge_4_5"


@pytest.fixture(scope="module")
def home(fixture_ws, tmp_path_factory) -> Path:
    """A workspaces folder holding a copy of the fixture ("fixture") and a second copy
    named to sort first ("aaa-other"), so a reload landing on the first folder shows."""
    folder = tmp_path_factory.mktemp("home")
    for name in ("fixture", "aaa-other"):
        private_copy(fixture_ws, folder / name)
    return folder


@pytest.fixture(scope="module")
def server(home, tmp_path_factory):
    """A Streamlit server over ``home`` (no $CHERRYPICK_WORKSPACE), stopped in a finally."""
    env = {k: v for k, v in os.environ.items() if k != "CHERRYPICK_WORKSPACE"}
    env.update(CHERRYPICK_HOME=str(home), CHERRYPICK_DATA=str(tmp_path_factory.mktemp("nd")),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with streamlit_server(env, tmp_path_factory.mktemp("log")) as url:
        yield url


def _settle(page, timeout_ms: int = 120_000) -> None:
    """test_browser's wait, with room for a loaded machine (first loads build the pool)."""
    _settle_once(page, timeout_ms)


def shot(page, name: str, **kwargs) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"fixes-{name}.png"), **kwargs)


def no_exception(page) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


# ----- Explore -------------------------------------------------------------------------------
MAP_SELECTED = """() => {
  // sample_ids the map draws as selected, from plotly's own trace data
  const gd = document.querySelector('.js-plotly-plot');
  const out = [];
  for (const tr of gd._fullData) {
    if (!tr.selectedpoints) continue;
    const ids = Array.from(tr.customdata || []);
    for (const i of tr.selectedpoints) out.push(Number(ids[i]));
  }
  return out.sort((a, b) => a - b);
}"""
MAP_TRACES = "() => document.querySelector('.js-plotly-plot')._fullData.map(t => t.name)"


def open_explore(browser, server):
    page, dialogs = _open(browser, server + "/?ws=fixture")
    _settle(page)
    map_frame(page)
    page.wait_for_timeout(1500)
    return page, dialogs


def on_map(page, script: str):
    """Run ``script`` in the map's frame (components/map_widget.py)."""
    return map_frame(page).evaluate(script)


def box_select(page) -> None:
    """Drag a box over the middle of the map (the box tool of plotly's mode bar)."""
    frame = map_frame(page)
    plot = frame.locator(".js-plotly-plot").first
    plot.hover()
    frame.locator('.js-plotly-plot .modebar-btn[data-attr="dragmode"][data-val="select"]') \
        .first.click()
    box = plot.bounding_box()
    cx, cy = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5
    page.mouse.move(cx - 120, cy - 120)
    page.mouse.down()
    page.mouse.move(cx + 120, cy + 120, steps=10)
    page.mouse.up()
    page.wait_for_selector("text=/Clear selection/", timeout=30_000)
    _settle(page)


def pick_colour(page, label: str) -> None:
    page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').first.click()
    page.keyboard.type(label)
    page.keyboard.press("Enter")
    _settle(page)
    page.wait_for_timeout(1500)


def selected_count(page) -> int:
    text = page.get_by_role("button", name="Clear selection").inner_text()
    return int(text.split("(")[1].rstrip(")").replace(",", ""))


def test_map_keeps_its_selection_through_a_colour_change_and_clear_clears_all(server,
                                                                             browser):
    page, dialogs = open_explore(browser, server)
    try:
        box_select(page)
        count = selected_count(page)
        assert count > 0
        pick_colour(page, "DS2 flagged")
        kept = on_map(page, MAP_SELECTED)
        assert len(kept) == count  # the map still shows what the table and histogram use
        assert page.get_by_text(f"{count} selected").count() >= 1
        shot(page, "explore-recoloured-selection")
        page.get_by_role("button", name="Clear selection").click()
        _settle(page)
        page.wait_for_timeout(1000)
        assert on_map(page, MAP_SELECTED) == []
        assert page.get_by_text("Select points on the map").count() >= 1
        assert page.locator('[data-testid="stDataFrame"]').count() == 0
        no_exception(page)
        assert dialogs == []
    finally:
        page.close()


def test_clicking_a_table_cell_opens_the_row_and_rings_it_on_the_map(server, browser):
    page, dialogs = open_explore(browser, server)
    try:
        box_select(page)
        grid = page.locator('[data-testid="stDataFrame"]').first
        grid.scroll_into_view_if_needed()
        box = grid.bounding_box()
        table_ids = on_map(page, MAP_SELECTED)
        first = page.locator('[data-testid="stText"]', has_text="sample #").first.inner_text()
        # the third data row's instruction cell (header and rows are 35 px tall)
        page.mouse.click(box["x"] + 400, box["y"] + 35 * 3 + 17)
        _settle(page)
        page.wait_for_timeout(1500)
        now = page.locator('[data-testid="stText"]', has_text="sample #").first.inner_text()
        assert now != first, now
        opened = int(now.split("#")[1].split()[0])
        assert opened in table_ids
        assert f"inspected #{opened}" in on_map(page, MAP_TRACES)
        shot(page, "explore-opened-row", full_page=True)
        no_exception(page)
        assert dialogs == []
    finally:
        page.close()


def test_clicking_a_point_selects_it_alone(server, browser, home):
    from test_browser import point_on_page
    from ui_fixture import hostile_ids

    target = hostile_ids(Workspace.open(home / "fixture"))["markdown"]
    page, dialogs = open_explore(browser, server)
    try:
        where = point_on_page(page, target)
        page.mouse.click(where["x"], where["y"])
        page.wait_for_selector("text=/Clear selection/", timeout=30_000)
        _settle(page)
        assert selected_count(page) == 1
        assert on_map(page, MAP_SELECTED) == [target]
        text = page.locator('[data-testid="stText"]', has_text="sample #").first.inner_text()
        assert text.startswith(f"sample #{target}"), text
        no_exception(page)
        assert dialogs == []
    finally:
        page.close()


def test_histogram_of_a_selection_is_readable_on_its_own_axis(server, browser):
    page, dialogs = open_explore(browser, server)
    try:
        pick_colour(page, "DS2 confidence")
        box_select(page)
        axes = page.evaluate("""() => {
            const gd = document.querySelectorAll('.js-plotly-plot')[0];
            return {y2: !!gd._fullLayout.yaxis2,
                    traces: gd._fullData.map(t => [t.name, t.yaxis])}; }""")
        assert axes["y2"] and ["selected", "y2"] in axes["traces"]
        hist = page.locator(".js-plotly-plot").first  # the map draws in its own frame
        hist.scroll_into_view_if_needed()
        hist.screenshot(path=str(SHOTS / "fixes-explore-histogram.png"))
        no_exception(page)
        assert dialogs == []
    finally:
        page.close()


# ----- tabs and reloads ----------------------------------------------------------------------
def sidebar_workspace(page) -> str:
    """The workspace name the sidebar picker shows."""
    return page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input') \
        .first.input_value()


def test_a_reload_and_a_copied_address_keep_the_workspace(server, browser):
    page, dialogs = _open(browser, server + "/audit")
    try:
        _settle(page)
        # no ?ws= and no demo: the first folder (the only choice left), now in the address
        assert sidebar_workspace(page) == "aaa-other"
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name="fixture").click()
        _settle(page)
        page.wait_for_function("() => location.search.includes('ws=fixture')", timeout=10_000)
        page.reload(wait_until="domcontentloaded")
        _settle(page)
        assert sidebar_workspace(page) == "fixture"
        assert "/audit" in page.url
        second = browser.new_page(viewport={"width": 1440, "height": 1000})  # another tab
        second.goto(page.url, wait_until="domcontentloaded")
        _settle(second)
        assert sidebar_workspace(second) == "fixture"
        shot(second, "reload-keeps-workspace")
        second.close()
        no_exception(page)
        assert dialogs == []
    finally:
        page.close()


# ----- Audit, Select & Export, Data -----------------------------------------------------------
def test_audit_neighbour_text_and_latest_decision_are_readable(server, browser):
    page, dialogs = _open(browser, server + "/audit?ws=fixture")
    try:
        _settle(page)
        page.wait_for_selector("text=/neighbour #\\d+/", timeout=60_000)
        assert page.locator('[data-testid="stTooltipIcon"]').count() >= 1  # confidence help
        page.get_by_role("button", name=re.compile(r"^Accept \d")).click()
        _settle(page)
        # the grid is drawn on a canvas; its cells are also in the DOM for screen readers
        page.wait_for_selector("text=/\\d → \\d|\\(kept\\)/", state="attached",
                               timeout=60_000)
        shot(page, "audit-readable", full_page=True)
        no_exception(page)
        assert dialogs == []
    finally:
        page.close()


def test_share_of_rows_number_box_moves_the_slider(server, browser):
    page, dialogs = _open(browser, server + "/select_export?ws=fixture")
    try:
        _settle(page)
        box = page.get_by_label("%", exact=True)
        box.fill("12.5")
        box.press("Enter")
        _settle(page)
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('[data-testid=\"stSlider\"]'))"
            ".some(s => s.textContent.includes('12.5%'))", timeout=30_000)
        shot(page, "select-number-box")
        no_exception(page)
        assert dialogs == []
    finally:
        page.close()


def test_sidebar_import_link_opens_the_import_form(server, browser):
    page, dialogs = _open(browser, server + "/?ws=fixture")
    try:
        _settle(page)
        page.locator('[data-testid="stSidebar"]').get_by_text("Import a file").click()
        _settle(page)
        page.wait_for_selector('[data-testid="stFileUploader"]', state="visible",
                               timeout=30_000)
        assert "ws=fixture" in page.url  # the workspace stays in the address
        shot(page, "data-import-open")
        no_exception(page)
        assert dialogs == []
    finally:
        page.close()
