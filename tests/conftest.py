"""Shared test setup: offline model loading, the real data folder, the output folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHERRYPICK_DATA", REPO.parent / "shared" / "data"))
OUTPUT = REPO / "test-output"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder; the suite needs it (CI has it beside the repo)."""
    assert (DATA / "alpaca_random_9k.jsonl.gz").is_file(), (
        f"real data not found in {DATA}; set CHERRYPICK_DATA")
    return DATA


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests keep artefacts a person should look at (screenshots, reports)."""
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT
