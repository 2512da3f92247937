"""Take the README's screenshots from a real workspace (not a test; run it by hand):

    .venv/bin/python tests/readme_screenshots.py workspaces/demo-alpaca docs/screenshots

Starts `streamlit run app.py` on a free loopback port with that workspace, opens each page in
headless chromium and saves one PNG per page.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_browser import (CHROMIUM, CHROMIUM_ARGS, PAGES, _free_port, _open, _settle,  # noqa: E402
                          map_frame)
from ui_fixture import REPO  # noqa: E402


def main(workspace: str, out: str) -> None:
    from playwright.sync_api import sync_playwright

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ, CHERRYPICK_WORKSPACE=str(Path(workspace).resolve()),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py",
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(url + "/_stcore/health", timeout=2).text.strip() == "ok":
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=CHROMIUM_ARGS)
            for name, path in PAGES.items():
                page, _ = _open(browser, f"{url}/{path}")
                _settle(page, timeout_ms=120_000)
                if name == "explore":
                    map_frame(page)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out_dir / f"{name}.png"), full_page=True)
                page.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main(*sys.argv[1:3])
