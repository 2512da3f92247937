"""The app stage: what a person waits for on the Explore map and the Select & Export slider,
in headless chromium against ``streamlit run app.py`` (tests/test_browser.py's server).

Measured per size, on one server, in one browser:
- Explore first paint, cold (first visit after the server started) and warm (the median of
  three later visits, each in a new browser context once the previous page's run is over):
  ``goto`` until plotly has drawn every point of the map;
- a lasso selection on the map until the inspector below lists the selected samples (the
  selection has gone to Python and back), median of a few lassos of different sizes;
- ArrowRight on Select & Export's "Keep (% of all rows)" until the Kept metric shows the new
  count and the app is idle (median).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import CACHE, POOL_ROWS, now, pool_workspace, proc_status  # puts tests/ on the path
import test_browser as tb  # noqa: E402 - the app server, the browser and their settings


def map_source():
    """The workspace whose real map the app stage tiles: the largest finished end-to-end
    stage workspace, else the demo stage's (the 9,229 real Alpaca rows, bench/demo_build.py)."""
    from core.workspace import Workspace

    maps = sorted((p for p in CACHE.glob("ws-e2e-*") if (p / "bench-ready.json").exists()),
                  key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if maps:
        return Workspace.open(maps[-1])
    demo = CACHE / "ws-demo-build"
    if (demo / "map.parquet").exists():
        return Workspace.open(demo)
    raise SystemExit("the app stage needs a real map: run the demo or e2e stage first")


def _tiled_pool(root: Path, n: int):
    """An imported workspace of ``n`` rows: the real 50k pool's rows repeated in order
    (a pool that large is not in shared/data), with synthetic scores."""
    from common import write_synthetic_scores
    from core.io import import_to_workspace

    pool = pool_workspace(POOL_ROWS).samples(["instruction", "input", "output"])
    src = CACHE / f"pool-tiled-{n}.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as out:
        for i in range(n):
            row = pool.iloc[i % len(pool)]
            out.write(json.dumps({"instruction": row["instruction"], "input": row["input"],
                                  "output": row["output"]}, ensure_ascii=False) + "\n")
    ws, _ = import_to_workspace([src], root, overwrite=True)
    src.unlink()
    write_synthetic_scores(ws)
    return ws


def app_workspace(n: int):
    """The workspace drawn at size ``n``: the end-to-end stage's when it is complete (real
    everything), else real pool rows (tiled above 50k) with synthetic scores and the real
    map of ``map_source`` tiled to ``n`` points with jitter."""
    import pandas as pd

    from core import atomic
    from core.workspace import Workspace

    real = CACHE / f"ws-e2e-{n}"
    if (real / "bench-ready.json").exists():
        return Workspace.open(real), "real pipeline (end-to-end stage workspace)"
    source = map_source()
    root = CACHE / f"ws-app-{n}"
    rows = "real pool rows" if n <= POOL_ROWS else \
        f"the {POOL_ROWS:,} real pool rows repeated"
    what = (f"{rows}, synthetic scores, the real {len(source):,}-row map of "
            f"{source.root.name} tiled")
    if (root / "bench-ready.json").exists():
        return Workspace.open(root), what
    print(f"[setup] building {root} (untimed)", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    if n <= POOL_ROWS:
        shutil.copytree(pool_workspace(n).root, root,
                        ignore=shutil.ignore_patterns("selections", "exports"))
        ws = Workspace.open(root)
    else:
        ws = _tiled_pool(root, n)
    src = source.map()
    rng = np.random.default_rng(0)
    pick = np.arange(n) % len(src)
    span = float(np.ptp(src["x"]) + np.ptp(src["y"])) / 2
    frame = pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64),
                          "x": src["x"].to_numpy()[pick] + rng.normal(0, span / 200, n),
                          "y": src["y"].to_numpy()[pick] + rng.normal(0, span / 200, n),
                          "cluster": src["cluster"].to_numpy()[pick]})
    frame[["x", "y"]] = frame[["x", "y"]].astype(np.float32)
    atomic.write_json(ws.path("clusters.json"), atomic.read_json(source.path("clusters.json")))
    atomic.write_parquet(ws.path("map.parquet"), frame)
    atomic.write_json(ws.path("map.json"), {
        "key": f"bench-tiled-{n}", "rows": n,
        "note": f"map tiled from {source.root.name} with jitter (bench/run_all.py)"})
    (root / "bench-ready.json").write_text(json.dumps({"rows": n, "created": now()}))
    return Workspace.open(root), what


PLOT_POINTS = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  if (!gd || !gd._fullData) return 0;
  return gd._fullData.reduce((s, tr) => s + (tr.x ? tr.x.length : 0), 0);
}"""

KEPT_METRIC = """() => {
  for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
    const label = m.querySelector('[data-testid="stMetricLabel"]');
    if (label && label.innerText.trim() === 'Kept')
      return m.querySelector('[data-testid="stMetricValue"]').innerText;
  }
  return null;
}"""

IDLE = "!document.querySelector('[data-testid=\"stStatusWidget\"]')"

# the inspector's caption: "1,234 samples · click a row to read it in full ..."
INSPECTOR_COUNT = """() => {
  for (const el of document.querySelectorAll('[data-testid="stCaptionContainer"]')) {
    const m = el.innerText.match(/^([\\d,]+) samples · click a row/);
    if (m) return parseInt(m[1].replace(/,/g, ''));
  }
  return null;
}"""


WARM_PAINTS = 3  # warm first paints per run (median): one paint varies by a second here


def _map_frame(page):
    """The frame Explore's map draws in, with the bench's patience."""
    return tb.map_frame(page, timeout_ms=600_000)


def _paint(browser, url: str, n: int) -> tuple:
    """A new page on Explore: seconds until every point is drawn, and the page."""
    page = browser.new_page(viewport={"width": 1440, "height": 1700})
    t0 = time.perf_counter()
    page.goto(url, wait_until="domcontentloaded")
    _map_frame(page).wait_for_function(f"() => ({PLOT_POINTS})() >= {n} && "
                                       "document.querySelector('.js-plotly-plot canvas')",
                                       timeout=600_000, polling=50)
    return time.perf_counter() - t0, page


def _lasso(page, fraction: float) -> tuple[float, int]:
    """Draw a lasso around the middle ``fraction`` of the map's width and height; seconds
    until the inspector lists the selection, and how many samples it lists."""
    box = _map_frame(page).locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    rx, ry = box["width"] * fraction / 2, box["height"] * fraction / 2
    angles = np.linspace(0, 2 * np.pi, 24)
    page.mouse.move(cx + rx, cy)
    page.mouse.down()
    for a in angles[1:]:
        page.mouse.move(cx + rx * np.cos(a), cy + ry * np.sin(a), steps=2)
    before = page.evaluate(INSPECTOR_COUNT)
    t0 = time.perf_counter()
    page.mouse.up()
    page.wait_for_function(f"(b) => {{ const c = ({INSPECTOR_COUNT})(); "
                           "return c !== null && c !== b; }",
                           arg=before, timeout=120_000, polling=50)
    seconds = time.perf_counter() - t0
    page.wait_for_function(f"() => {IDLE}", timeout=120_000)
    return seconds, page.evaluate(INSPECTOR_COUNT)


def stage_app(n: int, quick: bool) -> dict:
    """The stage's figures at ``n`` points (module docstring)."""
    from playwright.sync_api import sync_playwright

    ws, what = app_workspace(n)
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-", dir=CACHE))
    env = tb.app_env(ws.root, tmp, tmp / "no-data")
    res: dict = {"rows": n, "workspace": what}
    try:
        start = time.perf_counter()
        with tb.streamlit_server(env, tmp, start_timeout_s=300) as url:
            res["server_start_s"] = time.perf_counter() - start
            server_pid = _streamlit_pid()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(tb.CHROMIUM), headless=True,
                                            args=tb.CHROMIUM_ARGS)
                try:
                    _measure(browser, url, n, quick, res)
                finally:
                    browser.close()
            res["server_peak_rss_mib"] = proc_status("VmHWM", str(server_pid)) \
                if server_pid else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"app N={n:,} ({res['explore_points']:,} points drawn): Explore first paint cold "
          f"{res['explore_cold_s']:.1f}s, warm {res['explore_warm_s']:.1f}s; lasso→inspector "
          f"median {res['lasso_median_s']:.2f}s; slider→redraw median "
          f"{res['slider_redraw_median_s']:.2f}s", flush=True)
    res["series"] = {"explore first paint (cold)": res["explore_cold_s"],
                     "explore first paint (warm)": res["explore_warm_s"],
                     "lasso to inspector": res["lasso_median_s"],
                     "slider to redraw": res["slider_redraw_median_s"]}
    return res


def _measure(browser, url: str, n: int, quick: bool, res: dict) -> None:
    res["explore_cold_s"], page = _paint(browser, url, n)
    res["explore_points"] = _map_frame(page).evaluate(PLOT_POINTS)
    page.wait_for_function(f"() => {IDLE}", timeout=600_000)  # the server's run is over
    page.close()
    warm, paints = [], 1 if quick else WARM_PAINTS
    for i in range(paints):  # a new browser context each (no cache)
        seconds, page = _paint(browser, url, n)
        warm.append(seconds)
        page.wait_for_function(f"() => {IDLE}", timeout=600_000)
        if i < paints - 1:
            page.close()  # the last page stays open for the lassos
    res["explore_warm_paints_s"] = warm
    res["explore_warm_s"] = statistics.median(warm)
    page.wait_for_timeout(500)
    lassos, counts = [], []
    for fraction in ((0.3, 0.6) if quick else (0.2, 0.4, 0.6, 0.8)):
        seconds, count = _lasso(page, fraction)
        lassos.append(seconds)
        counts.append(count)
        page.wait_for_timeout(300)
    res["lasso_s"], res["lasso_selected"] = lassos, counts
    res["lasso_median_s"] = statistics.median(lassos)
    page.close()

    page = browser.new_page(viewport={"width": 1440, "height": 1700})
    t0 = time.perf_counter()
    page.goto(f"{url}/select_export", wait_until="domcontentloaded")
    tb._settle(page, timeout_ms=600_000)
    page.wait_for_selector('[data-testid="stMetricValue"]', timeout=600_000)
    res["select_first_s"] = time.perf_counter() - t0 - 0.8
    slider = page.locator('input[type="range"][aria-label="Keep (% of all rows)"]')
    redraws = []
    for _ in range(3 if quick else 5):
        before = page.evaluate(KEPT_METRIC)
        slider.focus()
        t0 = time.perf_counter()
        slider.press("ArrowRight")
        page.wait_for_function(
            f"(b) => {{ const v = ({KEPT_METRIC})(); return v !== null && v !== b && {IDLE}; }}",
            arg=before, timeout=600_000, polling=50)
        redraws.append(time.perf_counter() - t0)
        page.wait_for_timeout(300)
    res["slider_redraw_s"] = redraws
    res["slider_redraw_median_s"] = statistics.median(redraws)
    res["kept_after"] = page.evaluate(KEPT_METRIC)
    page.close()


def _streamlit_pid() -> int | None:
    """The streamlit server started by this process (a direct child)."""
    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            cmd = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((ln.split()[1] for ln in text.splitlines() if ln.startswith("PPid:")), "")
        if ppid == me and b"streamlit" in cmd:
            return int(status.parent.name)
    return None
