"""The local rater backend (core/raters/backends.py LocalRater) on real Alpaca rows with the
real SmolLM2: every answer cached, parsed to the stored row, and the sidecar names the backend."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.raters.backends import LocalRater
from core.raters.prompt import parse_rating
from core.raters.run import COLUMNS, responses_path, run_rate
from core.workspace import Workspace
from real_rows import first_rows


@pytest.mark.lm
def test_local_backend_rates_real_alpaca_rows(tmp_path, data_dir):
    rows = first_rows(data_dir / "alpaca_random_9k.jsonl.gz", 3)
    samples = pd.DataFrame({
        "sample_id": np.arange(3, dtype=np.int64), "source_row": np.arange(3, dtype=np.int64),
        "instruction": [r["instruction"] for r in rows],
        "input": [r.get("input", "") for r in rows], "output": [r["output"] for r in rows],
        "record": [json.dumps(r) for r in rows],
        "duplicate_of": pd.array([None] * 3, dtype="Int64")})
    ws = Workspace.create(tmp_path / "ws", samples, source={"path": "alpaca_random_9k"})
    import torch

    threads = torch.get_num_threads()
    rater = LocalRater(max_new_tokens=40, threads=1)  # one thread: the CPU is shared
    result = run_rate(ws, rater, "smol")
    assert torch.get_num_threads() == threads
    frame = result.value
    assert list(frame.columns) == list(COLUMNS)
    assert frame["sample_id"].tolist() == [0, 1, 2]
    for _, row in frame.iterrows():
        assert pd.isna(row["request_error"])
        if pd.isna(row["overall"]):
            assert isinstance(row["parse_error"], str) and row["parse_error"]
        else:
            assert 1 <= row["overall"] <= 10 and pd.isna(row["parse_error"])
    # every answer is on disk and parses to the same row again
    entries = [json.loads(x) for x in responses_path(ws, "smol").read_text().splitlines()]
    assert len(entries) == 3
    for entry in entries:
        row = frame.set_index("sample_id").loc[entry["sample_id"]]
        parsed = parse_rating(entry["content"])
        assert (parsed is None) == pd.isna(row["overall"])
        if parsed is not None:
            assert parsed["overall"] == row["overall"]
        assert 0 < entry["response"]["completion_tokens"] <= 40
    meta = ws.score_meta("rating_smol")
    assert meta["backend"]["backend"] == "local" and meta["backend"]["decoding"] == "greedy"
    assert meta["counts"]["rows"] == 3
