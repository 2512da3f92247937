"""Where IFD's time goes: torch.profiler over the batched engine on real Alpaca rows, the ops'
self CPU time grouped into the parts bench/README.md's breakdown table names.

    .venv/bin/python bench/profile_ifd.py [--rows 200] [--dtype bfloat16|float32] [--threads 1]

The engine runs in this process (``workers=1``: a profiler does not see worker processes);
``--threads 1`` profiles what one worker of core/lm/pool.py runs.

Run it on a quiet machine; the shares, not the seconds, are the result.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from ifd import load_rows  # bench/ifd.py: sets the thread/offline defaults and sys.path

# op name → part; the first matching prefix wins (order matters: "aten::_log_softmax" before
# "aten::_").
PARTS = (
    (("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
      "mkldnn", "aten::_mkldnn"), "matrix products (layers and vocabulary)"),
    (("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_flash"),
     "attention (SDPA)"),
    (("aten::logsumexp", "aten::_log_softmax", "aten::log_softmax", "aten::gather",
      "aten::exp", "aten::sum", "aten::max", "aten::amax", "aten::sub"),
     "vocabulary log-sum-exp, gather"),
    (("aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous", "aten::clone"),
     "dtype casts and copies"),
    (("aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt", "aten::silu",
      "aten::neg", "aten::cat", "aten::cos", "aten::sin", "aten::div", "aten::where"),
     "norms, RoPE, SiLU, residual adds"),
)


def part_of(name: str) -> str:
    for prefixes, part in PARTS:
        if name.startswith(prefixes):
            return part
    return "other ops (indexing, views, embedding, masks)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from core.lm import load_causal_lm
    from core.scores.ifd import ifd_scores

    rows = load_rows(args.rows)
    lm = load_causal_lm(None, dtype=args.dtype, workers=1, threads=args.threads)
    cols = ([r["instruction"] for r in rows], [r["input"] for r in rows],
            [r["output"] for r in rows])
    ifd_scores(lm, *(c[:8] for c in cols))  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        ifd_scores(lm, *cols)
        wall = time.perf_counter() - t0
    parts: Counter = Counter()
    for event in prof.key_averages():
        parts[part_of(event.key)] += event.self_cpu_time_total / 1e6
    ops = sum(parts.values())
    print(f"IFD {args.dtype}, {args.rows} real Alpaca rows, {torch.get_num_threads()} threads: "
          f"wall {wall:.1f} s under the profiler, ops' self CPU time {ops:.1f} s")
    print("| part | share of the ops' time |\n|---|---|")
    for part, seconds in parts.most_common():
        print(f"| {part} | {100 * seconds / ops:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
