"""docs/architecture.md's promise, kept: a newcomer adds a scorer by following "Adding a
scorer", and the workspace does the rest (cache, resume, stale inputs, recipes, layout)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import Cancelled
from core.workspace import SAMPLES, Step, Workspace

REPO = Path(__file__).resolve().parents[1]


def answer_chars(outputs: list[str]) -> np.ndarray:
    """The score itself: a plain function (here, the answer's length in characters)."""
    return np.array([len(a) for a in outputs], dtype=np.int64)


def run_answer_chars(ws: Workspace, progress=None, chunk_size: int = 4, calls=None):
    """The step, written as the doc says: declare a Step, hand it to the workspace."""
    samples = ws.samples(["sample_id", "output"]).set_index("sample_id", drop=False)

    def compute(ids: np.ndarray, chunk_progress) -> pd.DataFrame:
        if calls is not None:
            calls.extend(ids.tolist())
        chunk_progress(0, len(ids), "counting")
        return pd.DataFrame({"sample_id": ids,
                             "chars": answer_chars(samples.loc[ids, "output"].tolist())})

    step = Step("scores/answer_chars.parquet", {"unit": "characters"},
                inputs={"samples": SAMPLES})
    return ws.run_chunked(step, samples.index.to_numpy(), compute, chunk_size=chunk_size,
                          progress=progress)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    frame = pd.DataFrame({"sample_id": np.arange(10), "source_row": np.arange(10),
                          "instruction": [f"q{i}" for i in range(10)], "input": "",
                          "output": ["a" * (i + 1) for i in range(10)],
                          "record": ["{}"] * 10})
    return Workspace.create(tmp_path / "ws", frame, source={"path": "synthetic"})


def test_a_new_scorer_caches_resumes_and_is_selectable(ws):
    calls: list = []

    def cancel_after_one_chunk(done, total, note=""):
        if done >= 4:
            raise Cancelled()

    with pytest.raises(Cancelled):
        run_answer_chars(ws, progress=cancel_after_one_chunk, calls=calls)
    result = run_answer_chars(ws, calls=calls)
    assert sorted(calls) == list(range(10))  # the finished chunk was not redone
    assert result.value["chars"].tolist() == list(range(1, 11))
    assert run_answer_chars(ws, calls=calls).cached and len(calls) == 10
    assert ws.score_meta("answer_chars")["params"] == {"unit": "characters"}

    from core.select import make_recipe, run_selection

    picked = run_selection(ws, make_recipe("threshold", column="chars", min={"chars": 8}))
    assert picked.sample_ids == [9, 8, 7]


def test_a_new_scorer_recomputes_when_its_input_changes(ws):
    run_answer_chars(ws)
    frame = ws.samples()
    frame.loc[0, "output"] = "changed answer"
    frame.to_parquet(ws.path(SAMPLES), index=False)
    with pytest.warns(UserWarning, match="samples.parquet changed"):
        result = run_answer_chars(ws)
    assert not result.cached and result.value["chars"].iloc[0] == len("changed answer")


def test_no_module_outside_the_workspace_touches_chunks_or_sidecars():
    """The contract's other half: chunk folders and sidecar paths are the workspace's."""
    hits = subprocess.run(
        ["grep", "-rnE", r"\.parts['\"/]|sidecar_path\(|_write_meta\(", "core", "components",
         "pages", "app.py"], cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    outside = [h for h in hits if not h.startswith("core/workspace/")]
    assert outside == []


def test_no_file_is_over_500_lines():
    files = [p for pattern in ("core/**/*.py", "components/*.py", "pages/*.py", "bench/*.py",
                                        "tests/*.py")
             for p in REPO.glob(pattern)] + [REPO / "app.py"]
    long = {str(p.relative_to(REPO)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}
