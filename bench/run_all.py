"""Run every benchmark and write bench/RESULTS.md (one command).

    .venv/bin/python bench/run_all.py                  # full sizes (about 1-1.5 h on 2 idle cores)
    .venv/bin/python bench/run_all.py --quick          # small sizes, a few minutes
    .venv/bin/python bench/run_all.py --stages knn,ds2 # rerun some stages, keep the others
    .venv/bin/python bench/run_all.py --report         # only rewrite RESULTS.md from the JSON

Every (stage, size) runs in its own child process, so its peak resident memory is the
child's own (``os.wait4`` rusage ``ru_maxrss``; the end-to-end stage also resets
``/proc/self/clear_refs`` before each step to get one peak per step). Each figure is a ratio
or a per-row cost against a baseline timed in the same child. Results are merged into
``bench/.cache/results.json`` (a stage that is not rerun keeps its last figures, with its own
date and mode), and RESULTS.md is rendered from that file; a stage the file does not hold (a
fresh checkout has no bench/.cache) keeps what the committed RESULTS.md says about it.

This file is the entry: the command line, the child processes and the registries of stages
(``STAGE_FUNCS``: stage → function of (size, quick) run in the child; ``RENDER``: stage →
its RESULTS.md section; sizes per stage are ``common.SIZES``). The stages live in
bench/stages.py (ifd, embed, knn, umap, ds2, select), bench/app.py, bench/e2e.py,
bench/demo_build.py and bench/ray_overhead.py, and reuse
bench/ifd.py, bench/embed_knn_map.py and bench/ds2.py; shared helpers are in bench/common.py
and the report in bench/report.py. See bench/README.md for what each stage measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app import stage_app
from common import (CACHE, RESULTS_JSON, RESULTS_MD, ROOT, SIZES, STAGES, cpu_label, jsonable,
                    load_results, machine, now, proc_status, save_results)
from demo_build import render as render_demo, stage_demo
from e2e import stage_e2e
from ray_overhead import render as render_ray, stage_ray
from report import (render_app, render_ds2, render_e2e, render_embed, render_ifd,
                    render_knn, render_select, render_umap, write_report)
from stages import stage_ds2, stage_embed, stage_ifd, stage_knn, stage_select, stage_umap

STAGE_FUNCS = {"e2e": stage_e2e, "ifd": stage_ifd, "embed": stage_embed, "knn": stage_knn,
               "umap": stage_umap, "ds2": stage_ds2, "select": stage_select, "app": stage_app,
               "demo": stage_demo, "ray": stage_ray}
RENDER = {"e2e": render_e2e, "ifd": render_ifd, "embed": render_embed, "knn": render_knn,
          "umap": render_umap, "ds2": render_ds2, "select": render_select, "app": render_app,
          "demo": render_demo, "ray": render_ray}


def run_child(stage: str, n: int, quick: bool, log) -> dict:
    """Run one (stage, size) in a fresh Python process, echoing its output to ``log``; its
    figures plus wall time, load average and the child's own peak RSS (rusage)."""
    fd, out = tempfile.mkstemp(prefix=f"{stage}-{n}-", suffix=".json", dir=CACHE)
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--size", str(n),
           "--out", out] + (["--quick"] if quick else [])
    print(f"\n=== {stage} N={n:,} ({'quick' if quick else 'full'}) ===", flush=True)
    start = time.perf_counter()
    load0 = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    for line in proc.stdout:
        sys.stdout.write(line)
        log.write(line)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    try:
        result = json.loads(Path(out).read_text()) if proc.returncode == 0 else {
            "error": f"child exited with status {proc.returncode} (see bench/.cache/run.log)"}
    except ValueError:
        result = {"error": "child wrote no result"}
    Path(out).unlink(missing_ok=True)
    result.update(size=n, wall_s=wall, peak_rss_mib=max(usage.ru_maxrss / 1024,
                                                        result.get("peak_rss_mib") or 0),
                  load_before=load0, load_after=os.getloadavg()[0])
    return result


def child_main(stage: str, n: int, out: str, quick: bool) -> int:
    """In the child: run the stage at size ``n`` and write its figures to ``out``."""
    result = STAGE_FUNCS[stage](n, quick)
    result["child_vmhwm_mib"] = proc_status("VmHWM")
    Path(out).write_text(json.dumps(result, default=jsonable))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--sizes", default=None,
                    help="override the sizes of the chosen stages (comma-separated)")
    ap.add_argument("--report", action="store_true", help="only rewrite RESULTS.md")
    ap.add_argument("--note", default="",
                    help="free text stored with the stages run now (e.g. what else was running)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    CACHE.mkdir(exist_ok=True)
    gitignore = CACHE / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n")
    if args.child:
        return child_main(args.child, args.size, args.out, args.quick)
    results = load_results()
    if not args.report:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = set(stages) - set(STAGES)
        if unknown:
            ap.error(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(STAGES)}")
        results["machine"] = machine()
        with open(CACHE / "run.log", "a") as log:
            log.write(f"\n##### {now()} {' '.join(sys.argv)}\n")
            for stage in [s for s in STAGES if s in stages]:
                sizes = ([int(v) for v in args.sizes.split(",")] if args.sizes
                         else SIZES[stage][0 if args.quick else 1])
                entry = {"mode": "quick" if args.quick else "full", "date": now(),
                         "cpu": cpu_label(results["machine"]), "note": args.note, "runs": []}
                stage_start = time.perf_counter()
                for n in sizes:
                    entry["runs"].append(run_child(stage, n, args.quick, log))
                entry["wall_s"] = time.perf_counter() - stage_start
                machine_now = results["machine"]
                results = load_results()  # another run may have saved other stages meanwhile
                results["machine"] = machine_now
                results["stages"][stage] = entry
                save_results(results)
                write_report(results, RENDER)
    write_report(results, RENDER)
    print(f"\nwrote {RESULTS_MD.relative_to(ROOT)} (figures in "
          f"{RESULTS_JSON.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
