"""IFD speed: the batched engine (core/lm/losses.py, core/scores/ifd.py) against the plain per-sample loop and against
the matrix-product roofline of this machine (bench/roofline.py).

The same real Alpaca rows (read by the project's importer) are scored in one process by
tests/lm_reference.py (one forward per pass, full logits, like Cherry LLM's loop) and by
``core.scores.ifd.ifd_scores``, in fp32 and in bf16. Prints rows/s, the speed-up over the fp32
loop, the engine's share of the roofline (the time the needed FLOPs take at the measured
matmul rates / the engine's time), the engine's agreement with the loop in fp32 and the bf16
deviation from fp32 (Spearman of IFD, median and max relative difference).

    python bench/ifd.py [--rows 200] [--template none] [--max-length 512] [--budgets 2048]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import lm_reference as ref  # noqa: E402
import roofline  # noqa: E402
from core.scores import ifd  # noqa: E402
from core.lm import load_causal_lm  # noqa: E402

DATA_FILE = ROOT.parent / "shared" / "data" / "alpaca_random_9k.jsonl.gz"


def load_rows(n: int) -> list[dict]:
    """The first ``n`` rows of the real Alpaca file, as the importer reads them."""
    from core.io import read_dataset

    frame = read_dataset(DATA_FILE, limit=n).samples
    return frame[["instruction", "input", "output"]].to_dict("records")


def reference_loop(lm, rows, template, max_length) -> np.ndarray:
    return np.array([ref.ifd_one(lm.model, lm.tokenizer, r["instruction"], r["input"],
                                 r["output"], template, max_length).get("ifd", np.nan)
                     for r in rows])


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def best_of(fn, repeats: int, clock=time.process_time):
    """The value, the shortest wall time and the least CPU time (``clock``) of ``repeats``
    calls. On a shared machine the CPU time (all threads) moves much less with the load than
    the wall time: it does not count the time the threads spent descheduled."""
    value, best, cpu = None, float("inf"), float("inf")
    for _ in range(max(1, repeats)):
        start = clock()
        value, seconds = timed(fn)
        best, cpu = min(best, seconds), min(cpu, clock() - start)
    return value, best, cpu


def cpu_clock(lm):
    """CPU seconds of this process plus those of ``lm``'s live worker processes (rusage
    counts a child only once it has been waited for, so read /proc)."""
    tick = os.sysconf("SC_CLK_TCK")

    def clock() -> float:
        total = time.process_time()
        for proc, *_ in (lm.pool._procs if lm.pool is not None else []):
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return total

    return clock


def deviation(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    ok = np.isfinite(a) & np.isfinite(b)
    rel = np.abs(a[ok] - b[ok]) / np.abs(b[ok])
    return float(spearmanr(a[ok], b[ok])[0]), float(np.median(rel)), float(np.max(rel))


def workload(lm, cols, template: str, max_length: int) -> dict:
    """FLOPs the IFD scoring of these rows needs at the least (``roofline.workload_flops``),
    from the very sequences the engine reads (caught at ``sequence_losses``), with their
    token counts."""
    seen: list = []

    def spy(lm_, seqs, *args, **kwargs):
        seen.extend(seqs)
        return np.full(len(seqs), np.nan)

    real, ifd.sequence_losses = ifd.sequence_losses, spy
    try:
        ifd.ifd_scores(lm, *cols, template=template, max_length=max_length)
    finally:
        ifd.sequence_losses = real
    kept = [(ids, n) for ids, n in seen if n > 0]
    lengths, scored = [len(ids) for ids, _ in kept], [n for _, n in kept]
    flops = roofline.workload_flops(lengths, scored, roofline.model_shape(lm.model.config))
    return {**flops, "tokens_read": sum(lengths), "tokens_scored": sum(scored)}


def best_rates(*measured: dict) -> dict:
    """Per dtype and kind, the best of several roofline measurements (noise only slows)."""
    out = {}
    for m in measured:
        for dtype, rates in m["dtypes"].items():
            mine = out.setdefault(dtype, {})
            for kind in ("layers", "attention", "vocab"):
                mine[kind] = max(mine.get(kind, 0.0), rates[kind])
    return out


def compare(n_rows: int = 200, template: str = "none", max_length: int = 512,
            budgets: tuple[int, ...] = (ifd.DEFAULT_TOKEN_BUDGET,), threads: int | None = 2,
            bf16_loop: bool = True, loops: bool = True, bf16: bool = True, repeats: int = 1,
            one_process: bool | None = None, echo=print) -> dict:
    """Score the first ``n_rows`` rows with the per-sample loop and the engine, fp32 and
    bf16, in this process, and measure the roofline before and after (the best of the two
    per kind is used); print one line per variant (through ``echo``) and return the figures:
    ``{"rows", "roofline", "workload", "variants": [{"name", "seconds", "rows_per_s",
    "speedup", "roofline_share", ...}]}``. The engine runs ``repeats`` times (best kept).
    ``loops=False`` times the engine only (no baseline, no speed-up). The engine runs as
    loaded by default (one single-thread worker process per core, core/lm/pool.py) and, when
    ``one_process`` (default: with the loops), also in this process on its threads."""
    import torch

    one_process = loops if one_process is None else one_process
    if threads:
        torch.set_num_threads(threads)
    rows = load_rows(n_rows)
    cols = ([r["instruction"] for r in rows], [r["input"] for r in rows],
            [r["output"] for r in rows])
    n = len(rows)
    dtypes = ("float32", "bfloat16") if bf16 else ("float32",)
    roof_before = roofline.measure(threads, dtypes=dtypes)
    for line in roofline.table(roof_before):
        echo(line)
    out: dict = {"rows": n, "template": template, "max_length": max_length,
                 "torch_threads": torch.get_num_threads(), "repeats": repeats,
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "variants": []}

    def add(name, seconds, base=None, **extra):
        out["variants"].append({"name": name, "seconds": seconds, "rows_per_s": n / seconds,
                                "speedup": None if base is None else base / seconds, **extra})

    echo(f"{n} real Alpaca rows, template={template}, max_length={max_length}, "
         f"torch threads={out['torch_threads']}, OMP_WAIT_POLICY={out['omp_wait_policy']}")
    lm32 = load_causal_lm(dtype="float32", workers=1)  # the loops, the one-process engine
    work = workload(lm32, cols, template, max_length)
    out["workload"] = work
    echo(f"work: {work['tokens_read']:,} tokens read, {work['tokens_scored']:,} scored; "
         f"{work['layers'] / 1e12:.2f} TFLOP in the layers, {work['vocab'] / 1e12:.2f} in "
         f"the vocabulary projection, {work['attention'] / 1e12:.3f} in attention")
    # warm-up (first-call allocations, kernel selection) on a few rows, not timed
    ifd.ifd_scores(lm32, *(c[:4] for c in cols), template=template, max_length=max_length)
    t_loop32 = None
    if loops:
        loop32, t_loop32 = timed(lambda: reference_loop(lm32, rows, template, max_length))
        add("per-sample loop fp32 (baseline)", t_loop32, t_loop32)
        echo(f"per-sample loop  fp32: {n / t_loop32:6.2f} rows/s   (baseline)")
    engines: dict = {}

    def engine(lm, label: str):
        for budget in budgets:
            def run():
                return ifd.ifd_scores(lm, *cols, template=template, max_length=max_length,
                                      token_budget=budget)["ifd"].to_numpy()

            extra: dict = {"workers": lm.workers}
            if lm.workers > 1 and (lm.pool is None or lm.pool.closed):
                _, extra["first_call_s"] = timed(run)  # starts the workers (once per process)
            got, t, cpu = best_of(run, repeats, clock=cpu_clock(lm))
            engines.setdefault(label.split(",")[0], (got, t, budget))  # the first: default
            line = f"engine {label} budget {budget:5d}: {n / t:6.2f} rows/s"
            if "first_call_s" in extra:
                line += f" (first call, workers starting: {n / extra['first_call_s']:.2f})"
            if t_loop32:
                line += f"   speedup {t_loop32 / t:4.2f}x"
            if label.startswith("fp32") and loops:
                extra["max_rel_diff_vs_loop"] = float(np.nanmax(np.abs(got - loop32)
                                                                / np.abs(loop32)))
                line += f"   max rel diff vs loop {extra['max_rel_diff_vs_loop']:.1e}"
            if label.startswith("bf16"):
                rho, med, mx = deviation(got, engines["fp32"][0])
                extra.update(spearman_vs_fp32=rho, median_rel_diff_vs_fp32=med,
                             max_rel_diff_vs_fp32=mx)
                line += f"   vs fp32: Spearman {rho:.4f}, median {med:.2%}, max {mx:.2%}"
            add(f"engine {label}, budget {budget}", t, t_loop32, dtype=label.split(",")[0],
                cpu_seconds=cpu, **extra)
            echo(line)

    def engines_of(dtype: str, label: str, lm_here):
        lm = load_causal_lm(dtype=dtype)  # the default: workers="auto"
        if lm.workers > 1:
            engine(lm, f"{label}, {lm.workers} worker processes")
            if lm.pool is not None:
                lm.pool.close()
        if lm.workers == 1 or one_process:
            engine(lm_here, f"{label}, one process, {torch.get_num_threads()} threads")
        return lm

    engines_of("float32", "fp32", lm32)
    if bf16:
        lm16 = load_causal_lm(dtype="bfloat16", workers=1)
        out["bf16_compute"] = lm16.compute
        ifd.ifd_scores(lm16, *(c[:4] for c in cols), template=template, max_length=max_length)
        if loops and bf16_loop:
            _, t_loop16 = timed(lambda: reference_loop(lm16, rows, template, max_length))
            add("per-sample loop bf16", t_loop16, t_loop32)
            echo(f"per-sample loop  bf16: {n / t_loop16:6.2f} rows/s   "
                 f"speedup {t_loop32 / t_loop16:4.2f}x")
        engines_of("bfloat16", "bf16", lm16)
    roof_after = roofline.measure(threads, dtypes=dtypes)
    rates = best_rates(roof_before, roof_after)
    out["roofline"] = {**roof_before, "dtypes": {d: {**roof_before["dtypes"][d], **rates[d]}
                                                 for d in dtypes},
                       "load_after": roof_after["load_after"]}
    for v in out["variants"]:
        dtype = {"fp32": "float32", "bf16": "bfloat16"}.get(v.get("dtype"))
        if dtype:
            limit = roofline.limit_seconds(work, rates[dtype])
            v["roofline_rows_per_s"] = n / limit
            v["roofline_share"] = limit / v["seconds"]
            # the same share from CPU time spread over the threads: what the share would be
            # with the cores to itself (the roofline is a best of short runs, nearly unloaded)
            v["roofline_share_cpu"] = limit / (v["cpu_seconds"] / out["torch_threads"])
            echo(f"{v['name']}: {v['roofline_share']:.0%} of the {v['dtype']} roofline "
                 f"({v['roofline_share_cpu']:.0%} by CPU time / {out['torch_threads']} "
                 f"threads; {v['rows_per_s']:.2f} of {n / limit:.2f} rows/s; roofline layers "
                 f"{rates[dtype]['layers']:.0f}, vocabulary {rates[dtype]['vocab']:.0f}, "
                 f"attention {rates[dtype]['attention']:.0f} GFLOP/s)")
    return out


def render(runs) -> list[str]:
    """The RESULTS.md section of the ifd stage (bench/run_all.py)."""
    L = ["## IFD: engine vs per-sample reference loop and the matmul roofline", ""]
    for r in [r for r in runs if r.get("full_comparison")]:
        c = r["compare"]
        roof = c.get("roofline") or {}
        L.append(f"{c['rows']} real Alpaca rows, SmolLM2-135M-Instruct, template "
                 f"{c['template']}, max_length {c['max_length']}, {c['torch_threads']} torch "
                 f"threads, OMP_WAIT_POLICY={c['omp_wait_policy']}; engine best of "
                 f"{c.get('repeats', 1)}.")
        if roof:
            L += ["", f"Roofline (bench/roofline.py, best of before and after): CPU "
                  f"{roof['cpu']}, flags {' '.join(roof['flags']) or '–'}. "
                  + "; ".join(f"{d}: layers {x['layers']:.0f}, vocabulary {x['vocab']:.0f}, "
                              f"attention {x['attention']:.0f} GFLOP/s"
                              for d, x in roof["dtypes"].items())
                  + f". Work: {c['workload']['tokens_read']:,} tokens read, "
                  f"{c['workload']['tokens_scored']:,} scored."]
        if c.get("bf16_compute"):
            L += ["", f"bf16 mode: {c['bf16_compute']}."]
        L += ["", "| variant | rows/s | s/row | vs fp32 loop | roofline rows/s | share of "
              "roofline (wall) | share (CPU time / threads) | agreement |",
              "|---|---|---|---|---|---|---|---|"]
        for v in c["variants"]:
            agree = ""
            if "max_rel_diff_vs_loop" in v:
                agree = f"max rel diff vs loop {v['max_rel_diff_vs_loop']:.1e}"
            if "spearman_vs_fp32" in v:
                agree = (f"vs engine fp32: Spearman {v['spearman_vs_fp32']:.4f}, median "
                         f"{v['median_rel_diff_vs_fp32']:.2%}, max "
                         f"{v['max_rel_diff_vs_fp32']:.2%}")
            speed = f"{v['speedup']:.2f}×" if v.get("speedup") else "–"
            share = f"{v['roofline_share']:.0%}" if "roofline_share" in v else "–"
            limit = f"{v['roofline_rows_per_s']:.2f}" if "roofline_rows_per_s" in v else "–"
            share_cpu = f"{v['roofline_share_cpu']:.0%}" if "roofline_share_cpu" in v else "–"
            L.append(f"| {v['name']} | {v['rows_per_s']:.2f} | {1 / v['rows_per_s']:.3f} | "
                     f"{speed} | {limit} | {share} | {share_cpu} | {agree} |")
        firsts = [f"{v['name']}: {c['rows'] / v['first_call_s']:.2f} rows/s"
                  for v in c["variants"] if "first_call_s" in v]
        if firsts:
            L += ["", "First call, workers starting (once per process, not in the best-of): "
                  + "; ".join(firsts) + ". CPU time of worker variants includes the workers'."]
    return L


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--template", default="none", choices=ifd.TEMPLATES)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--budgets", default=str(ifd.DEFAULT_TOKEN_BUDGET),
                    help="comma-separated token budgets")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="engine runs per variant (best)")
    ap.add_argument("--skip-bf16-loop", action="store_true",
                    help="do not time the per-sample loop in bf16 (saves time)")
    args = ap.parse_args()
    compare(args.rows, args.template, args.max_length,
            tuple(int(b) for b in args.budgets.split(",")), args.threads,
            bf16_loop=not args.skip_bf16_loop, repeats=args.repeats)


if __name__ == "__main__":
    main()
