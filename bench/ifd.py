"""IFD speed: the batched engine (core/ifd.py) against the plain per-sample loop.

The same real Alpaca rows are scored in one process by tests/lm_reference.py (one forward per
pass, full logits, like Cherry LLM's loop) and by ``core.ifd.ifd_scores``, in fp32 and in
bf16. Prints rows/s, the speedup over the fp32 loop, the engine's agreement with the loop in
fp32, and the bf16 deviation from fp32 (Spearman of IFD, median relative difference).

    python bench/ifd.py [--rows 200] [--template none] [--max-length 512] [--budgets 4096]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import lm_reference as ref  # noqa: E402
from core import ifd  # noqa: E402
from core.lm import load_causal_lm  # noqa: E402


def load_rows(n: int) -> list[dict]:
    path = ROOT.parent / "shared" / "data" / "alpaca_random_9k.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(n), fh)]
    return rows


def reference_loop(lm, rows, template, max_length) -> np.ndarray:
    return np.array([ref.ifd_one(lm.model, lm.tokenizer, r["instruction"], r["input"],
                                 r["output"], template, max_length).get("ifd", np.nan)
                     for r in rows])


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def deviation(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    ok = np.isfinite(a) & np.isfinite(b)
    rel = np.abs(a[ok] - b[ok]) / np.abs(b[ok])
    return float(spearmanr(a[ok], b[ok])[0]), float(np.median(rel)), float(np.max(rel))


def compare(n_rows: int = 200, template: str = "none", max_length: int = 512,
            budgets: tuple[int, ...] = (4096,), threads: int | None = None,
            bf16_loop: bool = True, loops: bool = True, bf16: bool = True,
            echo=print) -> dict:
    """Score the first ``n_rows`` rows with the per-sample loop and the engine, fp32 and
    bf16, in this process; print one line per variant (through ``echo``) and return the
    figures: ``{"rows", "variants": [{"name", "seconds", "rows_per_s", "speedup", ...}]}``.
    ``loops=False`` times the engine only (no baseline, no speed-up)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    rows = load_rows(n_rows)
    cols = ([r["instruction"] for r in rows], [r["input"] for r in rows],
            [r["output"] for r in rows])
    n = len(rows)
    out: dict = {"rows": n, "template": template, "max_length": max_length,
                 "torch_threads": torch.get_num_threads(),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "variants": []}

    def add(name, seconds, base=None, **extra):
        out["variants"].append({"name": name, "seconds": seconds, "rows_per_s": n / seconds,
                                "speedup": None if base is None else base / seconds, **extra})

    echo(f"{n} real Alpaca rows, template={template}, max_length={max_length}, "
         f"torch threads={out['torch_threads']}, OMP_WAIT_POLICY={out['omp_wait_policy']}")
    lm32 = load_causal_lm(dtype="float32")
    # warm-up (first-call allocations, kernel selection) on a few rows, not timed
    ifd.ifd_scores(lm32, *(c[:4] for c in cols), template=template, max_length=max_length)
    t_loop32 = None
    if loops:
        loop32, t_loop32 = timed(lambda: reference_loop(lm32, rows, template, max_length))
        add("per-sample loop fp32 (baseline)", t_loop32, t_loop32)
        echo(f"per-sample loop  fp32: {n / t_loop32:6.2f} rows/s   (baseline)")
    eng32 = None
    for budget in budgets:
        got, t = timed(lambda: ifd.ifd_scores(lm32, *cols, template=template,
                                              max_length=max_length,
                                              token_budget=budget)["ifd"].to_numpy())
        eng32 = got if eng32 is None else eng32
        if loops:
            rel = float(np.nanmax(np.abs(got - loop32) / np.abs(loop32)))
            add(f"engine fp32, budget {budget}", t, t_loop32, max_rel_diff_vs_loop=rel)
            echo(f"engine fp32 budget {budget:5d}: {n / t:6.2f} rows/s   "
                 f"speedup {t_loop32 / t:4.2f}x   max rel diff vs loop {rel:.1e}")
        else:
            add(f"engine fp32, budget {budget}", t)
            echo(f"engine fp32 budget {budget:5d}: {n / t:6.2f} rows/s")
    if not bf16:
        return out
    lm16 = load_causal_lm(dtype="bfloat16")
    ifd.ifd_scores(lm16, *(c[:4] for c in cols), template=template, max_length=max_length)
    if loops and bf16_loop:
        loop16, t_loop16 = timed(lambda: reference_loop(lm16, rows, template, max_length))
        add("per-sample loop bf16", t_loop16, t_loop32)
        echo(f"per-sample loop  bf16: {n / t_loop16:6.2f} rows/s   "
             f"speedup {t_loop32 / t_loop16:4.2f}x")
    for budget in budgets:
        got, t = timed(lambda: ifd.ifd_scores(lm16, *cols, template=template,
                                              max_length=max_length,
                                              token_budget=budget)["ifd"].to_numpy())
        rho, med, mx = deviation(got, eng32)
        add(f"engine bf16, budget {budget}", t, t_loop32, spearman_vs_fp32=rho,
            median_rel_diff_vs_fp32=med, max_rel_diff_vs_fp32=mx)
        speed = f"speedup {t_loop32 / t:4.2f}x   " if t_loop32 else ""
        echo(f"engine bf16 budget {budget:5d}: {n / t:6.2f} rows/s   {speed}"
             f"vs fp32: Spearman {rho:.4f}, median rel diff {med:.2%}, max {mx:.2%}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--template", default="none", choices=ifd.TEMPLATES)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--budgets", default="4096", help="comma-separated token budgets")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-bf16-loop", action="store_true",
                    help="do not time the per-sample loop in bf16 (saves time)")
    args = ap.parse_args()
    compare(args.rows, args.template, args.max_length,
            tuple(int(b) for b in args.budgets.split(",")), args.threads,
            bf16_loop=not args.skip_bf16_loop)


if __name__ == "__main__":
    main()
