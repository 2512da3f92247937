"""Ray's overhead against the local executor on this machine: same rows, same process.

IFD (fp32) and embeddings (fp32) of the same real Alpaca rows are computed twice each in
fresh workspaces: with the local executor (the model already loaded in this process) and
with the Ray Data executor on a local cluster (``core/executors``). Printed per step: wall
time of each, their ratio, Ray's fixed cost (from the start of the step to its first chunk
back: actors starting, importing torch, loading the model) and its steady state (first
chunk back to last, per chunk, against the local time per chunk), and the largest
difference between the two results (0 when the files are byte-identical).

    python bench/ray_overhead.py [--rows 96] [--chunk-size 16] [--max-length 256]
                                 [--num-cpus N] [--ray-address ADDR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DATA = Path(os.environ.get("CHERRYPICK_DATA", ROOT.parent / "shared" / "data"))


def workspace(root: Path, rows: list[dict]):
    from core.workspace import Workspace

    frame = pd.DataFrame({
        "sample_id": np.arange(len(rows), dtype=np.int64),
        "source_row": np.arange(len(rows), dtype=np.int64),
        "instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows],
        "output": [r["output"] for r in rows], "record": [json.dumps(r) for r in rows]})
    return Workspace.create(root, frame, source={"path": "bench"})


def timed_step(run) -> dict:
    """Run ``run(progress)``; its wall time, the time to its first finished chunk and the
    mean time between finished chunks after it (the workspace reports each finished chunk
    with an empty note; notes come from inside a chunk)."""
    marks: list[float] = []

    def progress(done, total, note=""):
        if done > 0 and not note:
            marks.append(time.perf_counter())

    start = time.perf_counter()
    value = run(progress)
    wall = time.perf_counter() - start
    first = (marks[0] - start) if marks else wall
    steady = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else float("nan")
    return {"value": value, "wall": wall, "first": first, "per_chunk": steady}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--num-cpus", type=int, default=None,
                    help="size of the local cluster (default: all cores)")
    ap.add_argument("--ray-address", default=None, help="join this cluster instead")
    ap.add_argument("--steps", default="ifd,embed")
    args = ap.parse_args()

    import ray

    from core.embed import run_embed
    from core.executors.ray_cluster import RayExecutor, connect
    from core.lm import load_causal_lm
    from core.scores.ifd import run_ifd
    from real_rows import first_rows

    rows = first_rows(DATA / "alpaca_random_9k.jsonl.gz", args.rows)
    chunks = -(-args.rows // args.chunk_size)
    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    start = time.perf_counter()
    connect(args.ray_address, num_cpus=args.num_cpus)
    cluster_s = time.perf_counter() - start
    resources = ray.cluster_resources()
    print(f"cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU; "
          f"ray.init {cluster_s:.1f}s; load average {os.getloadavg()[0]:.1f}")
    lm = load_causal_lm(dtype="float32") if "ifd" in args.steps else None
    table = []
    for step in args.steps.split(","):
        if step == "ifd":
            def run(ws, executor, progress):
                return run_ifd(ws, model=lm, max_length=args.max_length, dtype="float32",
                               chunk_size=args.chunk_size, executor=executor,
                               progress=progress)["ifd"].value
            name, result_file = "IFD fp32 (SmolLM2-135M)", "scores/ifd.parquet"
        elif step == "embed":
            def run(ws, executor, progress):
                return run_embed(ws, precision="fp32", chunk_size=args.chunk_size,
                                 executor=executor, progress=progress).value
            name, result_file = "embeddings fp32 (MiniLM)", "embeddings.npy"
        else:
            raise SystemExit(f"unknown step {step}")
        local_ws = workspace(tmp / f"{step}-local", rows)
        ray_ws = workspace(tmp / f"{step}-ray", rows)
        local = timed_step(lambda p: run(local_ws, None, p))
        remote = timed_step(lambda p: run(ray_ws, RayExecutor(), p))
        a, b = local["value"], remote["value"]
        if isinstance(a, pd.DataFrame):
            cols = [c for c in a.columns if a[c].dtype.kind == "f"]
            diff = float(np.nanmax(np.abs(a[cols].to_numpy() - b[cols].to_numpy())))
        else:
            diff = float(np.abs(a - b).max())
        same = sha(local_ws.path(result_file)) == sha(ray_ws.path(result_file))
        actors = (ray_ws.meta(result_file) or {}).get("ray_actors")
        table.append((name, local, remote, diff, same, actors))
    print(f"\n{args.rows} real Alpaca rows, {chunks} chunks of {args.chunk_size}, "
          f"max_length {args.max_length}\n")
    print("| step | local s | Ray s (actors) | Ray / local | Ray fixed cost s | "
          "s per chunk local / Ray | max diff (file identical) |")
    print("|---|---|---|---|---|---|---|")
    for name, local, remote, diff, same, actors in table:
        print(f"| {name} | {local['wall']:.1f} | {remote['wall']:.1f} ({actors}) | "
              f"{remote['wall'] / local['wall']:.2f}x | {remote['first']:.1f} | "
              f"{local['wall'] / chunks:.2f} / {remote['per_chunk']:.2f} | "
              f"{diff:.1e} ({'yes' if same else 'no'}) |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
