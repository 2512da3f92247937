"""The app stage: first paint of the Explore map and slider-to-redraw on Select & Export in
headless chromium, on a workspace of real pool rows."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import CACHE, now, pool_workspace, proc_status


def app_workspace(n: int):
    """The workspace the app stage draws: the end-to-end stage's workspace of ``n`` rows when
    it is complete (real everything), else the pool workspace of ``n`` rows with synthetic
    scores and a map tiled from the largest real end-to-end map (jittered)."""
    import pandas as pd

    from core import atomic
    from core.workspace import Workspace

    real = CACHE / f"ws-e2e-{n}"
    if (real / "bench-ready.json").exists():
        return Workspace.open(real), "real pipeline (end-to-end stage workspace)"
    maps = sorted((p for p in CACHE.glob("ws-e2e-*") if (p / "bench-ready.json").exists()),
                  key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if not maps:
        raise SystemExit("the app stage needs a real map: run the e2e stage first")
    source = Workspace.open(maps[-1])
    root = CACHE / f"ws-app-{n}"
    if not (root / "bench-ready.json").exists():
        pool = pool_workspace(n)
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(pool.root, root, ignore=shutil.ignore_patterns("selections", "exports"))
        ws = Workspace.open(root)
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
    return Workspace.open(root), f"{n:,} real rows, synthetic scores, map tiled from " \
                                 f"the real {len(source):,}-row map"


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


def stage_app(n: int, quick: bool) -> dict:
    """First paint of the Explore map and slider-to-redraw on Select & Export, in headless
    chromium, against `streamlit run app.py` started by tests/test_browser.py's fixture."""
    import statistics
    import types

    from playwright.sync_api import sync_playwright

    import test_browser as tb

    ws, what = app_workspace(n)
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-", dir=CACHE))
    factory = types.SimpleNamespace(
        mktemp=lambda name: Path(tempfile.mkdtemp(prefix=name + "-", dir=tmp)))
    server_gen = tb.server.__wrapped__(types.SimpleNamespace(root=ws.root), factory)
    res: dict = {"rows": n, "workspace": what}
    try:
        start = time.perf_counter()
        url = next(server_gen)
        res["server_start_s"] = time.perf_counter() - start
        server_pid = _streamlit_pid()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(tb.CHROMIUM), headless=True,
                                        args=tb.CHROMIUM_ARGS)
            try:
                for label in ("cold", "warm"):
                    page = browser.new_page(viewport={"width": 1440, "height": 1700})
                    t0 = time.perf_counter()
                    page.goto(url, wait_until="domcontentloaded")
                    page.wait_for_selector(".js-plotly-plot canvas", timeout=600_000)
                    res[f"explore_{label}_s"] = time.perf_counter() - t0
                    res["explore_points"] = page.evaluate(PLOT_POINTS)
                    tb._settle(page, timeout_ms=600_000)
                    res[f"explore_{label}_settled_s"] = time.perf_counter() - t0 - 0.8
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
                        f"(b) => {{ const v = ({KEPT_METRIC})(); return v !== null && v !== b "
                        "&& !document.querySelector('[data-testid=\"stStatusWidget\"]'); }",
                        arg=before, timeout=600_000)
                    redraws.append(time.perf_counter() - t0)
                    page.wait_for_timeout(300)
                res["slider_redraw_s"] = redraws
                res["slider_redraw_median_s"] = statistics.median(redraws)
                res["kept_after"] = page.evaluate(KEPT_METRIC)
                page.close()
            finally:
                browser.close()
        res["server_peak_rss_mib"] = proc_status("VmHWM", str(server_pid)) \
            if server_pid else None
    finally:
        try:
            next(server_gen)
        except StopIteration:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"app N={n:,} ({res['explore_points']:,} points drawn): Explore first paint cold "
          f"{res['explore_cold_s']:.1f}s, warm {res['explore_warm_s']:.1f}s; slider→redraw "
          f"median {res['slider_redraw_median_s']:.2f}s", flush=True)
    res["series"] = {"explore first paint (cold)": res["explore_cold_s"],
                     "explore first paint (warm)": res["explore_warm_s"],
                     "slider to redraw": res["slider_redraw_median_s"]}
    return res


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

