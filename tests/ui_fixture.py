"""A small real workspace for the UI tests: 300 Alpaca rows plus hostile rows.

The rows are real (``alpaca_random_9k.jsonl.gz``, first 300) with their real
``claude_ge_4_5`` rating; appended to them are rows whose text would do harm if a page
rendered it as HTML or markdown (script tags, event handlers, markdown links, Streamlit
directives), a very long line, right-to-left text and emoji. Everything else comes from the
engine: embeddings, neighbours, map, DS2 on ``claude_ge_4_5`` and IFD on 20 rows.

The built workspace is kept under ``test-output/fixture-ws/<key>``, where the key hashes
``FIXTURE_VERSION`` and the engine sources that produce it, so the AppTest and browser tests
share one build per run and a later run reuses it until the engine changes.

Use it from a test module with ``from ui_fixture import fixture_ws  # noqa: F401``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.workspace import Workspace  # noqa: E402
from real_rows import first_rows  # noqa: E402

FIXTURE_VERSION = "ui-1"
ALPACA_ROWS = 300
IFD_ROWS = 20
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
HOSTILE_ROWS = [
    {"instruction": f"{SCRIPT} What does this snippet do?", "input": "",
     "output": f"It is an XSS probe: {IMG} and <b>bold</b> should stay literal.",
     "claude_ge_4_5": 0},
    {"instruction": "# Heading\n**bold** _it_ [link](javascript:alert(1)) ![x](x.png)",
     "input": "| a | b |\n|---|---|\n| 1 | 2 |",
     "output": (":red[red] $x^2$ :material/home: "
                "<iframe srcdoc=\"<script>alert(2)</script>\">"),
     "claude_ge_4_5": 1},
    {"instruction": "Summarise this very long line.", "input": "",
     "output": "word " * 6000, "claude_ge_4_5": 0},
    {"instruction": "ما هي عاصمة فرنسا؟", "input": "",
     "output": "عاصمة فرنسا هي باريس. בירת צרפת היא פריז.", "claude_ge_4_5": 1},
    {"instruction": "Write a haiku with emoji 🍒🚀", "input": "👩‍👩‍👧‍👦",
     "output": "Cherry blossoms 🌸\nfamily 👩‍👩‍👧‍👦 at dawn\nrocket 🚀 to the moon",
     "claude_ge_4_5": 1},
    {"instruction": "Explain <a href='javascript:alert(3)' onclick=alert(4)>this link</a>",
     "input": "<svg onload=alert(5)>", "output": "</textarea><script>alert(6)</script>",
     "claude_ge_4_5": 0},
]


def _engine_hash() -> str:
    """Hash of every engine source file: a change anywhere in core/ rebuilds the fixture."""
    h = hashlib.sha256(FIXTURE_VERSION.encode())
    for part in sorted((REPO / "core").rglob("*.py")):
        h.update(str(part.relative_to(REPO)).encode())
        h.update(part.read_bytes())
    return h.hexdigest()[:12]


def _data_dir() -> Path:
    import os

    return Path(os.environ.get("CHERRYPICK_DATA", REPO.parent / "shared" / "data"))


DATA_DIR = _data_dir()  # read once: app tests point CHERRYPICK_DATA elsewhere


def _rows() -> list[dict]:
    return first_rows(DATA_DIR / "alpaca_random_9k.jsonl.gz", ALPACA_ROWS) + HOSTILE_ROWS


def build_fixture_workspace(root: str | Path, source: str | Path | None = None) -> Workspace:
    """Import the rows into ``root`` (via a JSONL file written at ``source``, by default next
    to ``root``) and run the engine steps the pages draw."""
    from core.embed import run_embed
    from core.io import import_to_workspace
    from core.knn import run_neighbors
    from core.maps import run_map
    from core.scores.ds2 import run_curate

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    source = Path(source) if source else root.parent / f"{root.name}-source.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()),
                      encoding="utf-8")
    ws, _ = import_to_workspace(source, root, overwrite=True)
    run_embed(ws)
    run_neighbors(ws, k=10)
    run_map(ws, seed=0)
    run_curate(ws, "claude_ge_4_5", rounds=10, steps=300, epochs=11)  # quick: UI only
    try:
        from core.scores.ifd import run_ifd
    except ModuleNotFoundError:
        run_ifd = None  # the IFD module is not built yet: the pages work without it
    if run_ifd is not None:
        run_ifd(ws, sample_ids=list(range(IFD_ROWS)), max_length=128)
    return ws


def hostile_ids(ws: Workspace) -> dict[str, int]:
    """sample_id of the hostile rows, by a short name."""
    samples = ws.samples(["sample_id", "instruction"])
    found = {}
    for name, needle in (("script", SCRIPT), ("markdown", "# Heading"),
                         ("long", "very long line"), ("rtl", "عاصمة"),
                         ("emoji", "haiku with emoji"), ("link", "javascript:alert(3)")):
        hit = samples[samples["instruction"].str.contains(needle, regex=False)]
        found[name] = int(hit["sample_id"].iloc[0])
    return found


def cached_fixture_workspace() -> Workspace:
    """The fixture under test-output/fixture-ws/alpaca-ui-<key>, built once per engine
    version. Built in a temporary folder and renamed into place under a file lock, so
    concurrent test runs never see (or delete) a half-built fixture."""
    import fcntl
    import os
    import time

    base = REPO / "test-output" / "fixture-ws"
    base.mkdir(parents=True, exist_ok=True)
    key = _engine_hash()
    root = base / f"alpaca-ui-{key}"
    with open(base / f".lock-{key}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "fixture-ready.json").is_file():
            return Workspace.open(root)
        for old in base.iterdir():  # other engine versions, untouched for a while
            if key not in old.name and time.time() - old.stat().st_mtime > 900:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        tmp = base / f".build-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        build_fixture_workspace(tmp, source=base / f"alpaca-ui-{key}-source.jsonl")
        (tmp / "fixture-ready.json").write_text(
            json.dumps({"version": FIXTURE_VERSION, "key": key}), encoding="utf-8")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    return Workspace.open(root)


LEFT_BY_TESTS = ("audit.jsonl", "selections", "exports")


def private_copy(ws: Workspace, root: str | Path) -> Workspace:
    """A copy of ``ws`` at ``root`` without the decisions, selections and exports other tests
    may have left in it: for tests whose pages write into their workspace."""
    shutil.copytree(ws.root, root, ignore=shutil.ignore_patterns(*LEFT_BY_TESTS))
    return Workspace.open(root)


@pytest.fixture(scope="session")
def fixture_ws() -> Workspace:
    """The shared UI fixture workspace (built on first use in a run)."""
    return cached_fixture_workspace()


def map_spec(at) -> dict:
    """The Explore map's figure (``data`` and ``layout``) as an AppTest run sent it to the
    browser: the ``figure`` bytes of the map component (components/map_widget.py)."""
    maps = [e for e in at.get("component_instance")
            if e.proto.component_name.endswith("cherrypick_map")]
    assert len(maps) == 1, f"{len(maps)} maps on the page"
    figure = [a.bytes for a in maps[0].proto.special_args if a.key == "figure"]
    return json.loads(figure[0].decode("utf-8"))
