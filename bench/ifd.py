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
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = load_rows(args.rows)
    cols = ([r["instruction"] for r in rows], [r["input"] for r in rows],
            [r["output"] for r in rows])
    budgets = [int(b) for b in args.budgets.split(",")]
    n = len(rows)
    print(f"{n} real Alpaca rows, template={args.template}, max_length={args.max_length}, "
          f"torch threads={torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    lm32 = load_causal_lm(dtype="float32")
    # warm-up (first-call allocations, kernel selection) on a few rows, not timed
    ifd.ifd_scores(lm32, *(c[:4] for c in cols), template=args.template,
                   max_length=args.max_length)
    loop32, t_loop32 = timed(lambda: reference_loop(lm32, rows, args.template,
                                                    args.max_length))
    print(f"per-sample loop  fp32: {n / t_loop32:6.2f} rows/s   (baseline)")
    eng32 = None
    for budget in budgets:
        got, t = timed(lambda: ifd.ifd_scores(lm32, *cols, template=args.template,
                                              max_length=args.max_length,
                                              token_budget=budget)["ifd"].to_numpy())
        eng32 = got if eng32 is None else eng32
        rel = np.nanmax(np.abs(got - loop32) / np.abs(loop32))
        print(f"engine fp32 budget {budget:5d}: {n / t:6.2f} rows/s   "
              f"speedup {t_loop32 / t:4.2f}x   max rel diff vs loop {rel:.1e}")
    lm16 = load_causal_lm(dtype="bfloat16")
    ifd.ifd_scores(lm16, *(c[:4] for c in cols), template=args.template,
                   max_length=args.max_length)
    if not args.skip_bf16_loop:
        loop16, t_loop16 = timed(lambda: reference_loop(lm16, rows, args.template,
                                                        args.max_length))
        print(f"per-sample loop  bf16: {n / t_loop16:6.2f} rows/s   "
              f"speedup {t_loop32 / t_loop16:4.2f}x")
    for budget in budgets:
        got, t = timed(lambda: ifd.ifd_scores(lm16, *cols, template=args.template,
                                              max_length=args.max_length,
                                              token_budget=budget)["ifd"].to_numpy())
        rho, med, mx = deviation(got, eng32)
        print(f"engine bf16 budget {budget:5d}: {n / t:6.2f} rows/s   "
              f"speedup {t_loop32 / t:4.2f}x   vs fp32: Spearman {rho:.4f}, "
              f"median rel diff {med:.2%}, max {mx:.2%}")


if __name__ == "__main__":
    main()
