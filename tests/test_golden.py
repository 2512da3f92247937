"""Behaviour kept: every step of the golden workspace (tests/golden.py), recomputed by the
current code from the stored inputs of that step, equals the stored snapshot.

Numbers made by fp32 models may differ by a CPU's rounding (1e-4 relative, the docs/methods.md §6
rule); everything else must be equal: ids, neighbours, clusters, flags, selections, export.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import golden

pytestmark = pytest.mark.lm

SNAPSHOT = golden.GOLDEN / "workspace"
LM_STEPS = {"ifd", "recost"}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The golden workspace: the source imported, every stored result and sidecar copied in."""
    root = tmp_path_factory.mktemp("golden") / "ws"
    golden.new_workspace(root)
    for path in sorted(SNAPSHOT.rglob("*")):
        if path.is_file():  # results and their sidecars
            dst = root / path.relative_to(SNAPSHOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst)
    return root


@pytest.mark.parametrize("step", golden.STEPS)
def test_step_reproduces_the_snapshot(step, base, tmp_path, request):
    from core.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(base, root)
    for rel in golden.STEP_FILES[step]:
        (root / rel).unlink()
    lm = request.getfixturevalue("golden_lm") if step in LM_STEPS else None
    golden.run_step(Workspace.open(root), step, lm)
    for rel in golden.STEP_FILES[step]:
        _assert_same(SNAPSHOT / rel, root / rel)


@pytest.fixture(scope="module")
def golden_lm():
    from core.lm import load_causal_lm

    return load_causal_lm(dtype="float32")


def test_snapshot_covers_every_step_and_is_small():
    files = [SNAPSHOT / rel for fs in golden.STEP_FILES.values() for rel in fs]
    assert all(f.is_file() for f in files), [str(f) for f in files if not f.is_file()]
    assert sum(f.stat().st_size for f in files) < 1_000_000
    assert len(golden.SOURCE.read_text(encoding="utf-8").splitlines()) == golden.ROWS


def _assert_same(want: Path, got: Path) -> None:
    if want.suffix == ".npy":
        a, b = np.load(want), np.load(got)
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    elif want.suffix == ".npz":
        with np.load(want) as a, np.load(got) as b:
            assert sorted(a.files) == sorted(b.files)
            np.testing.assert_array_equal(b["indices"], a["indices"])
            np.testing.assert_allclose(b["similarities"], a["similarities"], atol=1e-5)
    elif want.suffix == ".parquet":
        _assert_frames(pd.read_parquet(want), pd.read_parquet(got), want.name)
    elif want.suffix == ".json":
        a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (want, got))
        for volatile in ("created", "inputs", "cherrypick"):
            a.pop(volatile, None)
            b.pop(volatile, None)
        _assert_values(a, b, want.name)
    elif want.suffix == ".jsonl":
        a, b = ([json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
                for p in (want, got))
        _assert_values(a, b, want.name)
    else:
        raise AssertionError(f"no comparison for {want}")


# A column that is the difference of two others is as exact as its terms, not relative to
# its own (often tiny) value: RECOST's entropies agree to 1e-4 across CPUs (AMD and Intel
# fp32 kernels round differently), so their difference agrees to 1e-4 of their size.
DIFFERENCES = {"recost": ("entropy_plain", "entropy_knowledge")}


def _assert_frames(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    assert list(b.columns) == list(a.columns), what
    assert len(a) == len(b), what
    for col, (left, right) in DIFFERENCES.items():
        if col in b.columns:
            np.testing.assert_allclose(b[col], b[left] - b[right], rtol=0, atol=1e-12,
                                       err_msg=f"{what}.{col} is not {left} - {right}")
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x):
            xs = x.to_numpy(dtype=np.float64, na_value=np.nan)
            ys = pd.to_numeric(y).to_numpy(dtype=np.float64, na_value=np.nan)
            np.testing.assert_array_equal(np.isnan(ys), np.isnan(xs), err_msg=f"{what}.{col}")
            tol = 1e-3 if col in ("x", "y") else 1e-4
            atol = 1e-6
            if col in DIFFERENCES:  # per row: tol of the terms' size
                atol = atol + tol * sum(np.abs(a[t].to_numpy(dtype=np.float64, na_value=0.0))
                                        for t in DIFFERENCES[col])
            bad = ~np.isnan(xs) & (np.abs(ys - xs) > atol + tol * np.abs(xs))
            assert not bad.any(), (f"{what}.{col}: rows {np.flatnonzero(bad)[:5]} got "
                                   f"{ys[bad][:5]} want {xs[bad][:5]}")
        else:
            _assert_values(x.tolist(), y.tolist(), f"{what}.{col}")


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _assert_values(a, b, what: str) -> None:
    if _missing(a) or _missing(b):
        assert _missing(a) and _missing(b), (what, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), (what, a, b)
        for k in a:
            _assert_values(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple, np.ndarray)):
        assert isinstance(b, (list, tuple, np.ndarray)) and len(a) == len(b), (what, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_values(x, y, f"{what}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool) and isinstance(b, (int, float)):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (what, a, b)
    else:
        assert a == b or (a is None and b is None), (what, a, b)
