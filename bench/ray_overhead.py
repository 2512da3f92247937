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

It is also the ``ray`` stage of bench/run_all.py (``stage_ray``, ``render``).
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


def measure(rows: int = 96, chunk_size: int = 16, max_length: int = 256,
            steps: str = "ifd,embed", num_cpus: int | None = None,
            ray_address: str | None = None) -> dict:
    """Each step on ``rows`` real rows with the local executor and with Ray (module
    docstring); the figures per step."""
    import ray

    from core.embed import run_embed
    from core.executors.ray_cluster import RayExecutor, connect
    from core.lm import load_causal_lm
    from core.scores.ifd import run_ifd
    from real_rows import first_rows

    texts = first_rows(DATA / "alpaca_random_9k.jsonl.gz", rows)
    chunks = -(-rows // chunk_size)
    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    start = time.perf_counter()
    connect(ray_address, num_cpus=num_cpus)
    cluster_s = time.perf_counter() - start
    resources = ray.cluster_resources()
    print(f"cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU; "
          f"ray.init {cluster_s:.1f}s; load average {os.getloadavg()[0]:.1f}", flush=True)
    lm = load_causal_lm(dtype="float32") if "ifd" in steps else None
    result = {"rows": rows, "chunk_size": chunk_size, "chunks": chunks,
              "max_length": max_length, "ray_init_s": cluster_s,
              "cluster_cpus": resources.get("CPU", 0), "cluster_gpus": resources.get("GPU", 0),
              "steps": []}
    try:
        for step in steps.split(","):
            if step == "ifd":
                def run(ws, executor, progress):
                    return run_ifd(ws, model=lm, max_length=max_length, dtype="float32",
                                   chunk_size=chunk_size, executor=executor,
                                   progress=progress)["ifd"].value
                name, result_file = "IFD fp32 (SmolLM2-135M)", "scores/ifd.parquet"
            elif step == "embed":
                def run(ws, executor, progress):
                    return run_embed(ws, precision="fp32", chunk_size=chunk_size,
                                     executor=executor, progress=progress).value
                name, result_file = "embeddings fp32 (MiniLM)", "embeddings.npy"
            else:
                raise SystemExit(f"unknown step {step}")
            local_ws = workspace(tmp / f"{step}-local", texts)
            ray_ws = workspace(tmp / f"{step}-ray", texts)
            local = timed_step(lambda p: run(local_ws, None, p))
            remote = timed_step(lambda p: run(ray_ws, RayExecutor(), p))
            a, b = local.pop("value"), remote.pop("value")
            if isinstance(a, pd.DataFrame):
                cols = [c for c in a.columns if a[c].dtype.kind == "f"]
                diff = float(np.nanmax(np.abs(a[cols].to_numpy() - b[cols].to_numpy())))
            else:
                diff = float(np.abs(a - b).max())
            result["steps"].append({
                "step": name, "local": local, "ray": remote, "max_diff": diff,
                "identical": sha(local_ws.path(result_file)) == sha(ray_ws.path(result_file)),
                "actors": (ray_ws.meta(result_file) or {}).get("ray_actors")})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def table(result: dict) -> list[str]:
    """The figures of :func:`measure` as a Markdown table."""
    chunks = result["chunks"]
    L = ["| rows | step | local s | Ray s (actors) | Ray / local | Ray fixed cost s | "
         "s per chunk local / Ray | max diff (file identical) |",
         "|---|---|---|---|---|---|---|---|"]
    for s in result["steps"]:
        local, remote = s["local"], s["ray"]
        L.append(f"| {result['rows']} | {s['step']} | {local['wall']:.1f} | "
                 f"{remote['wall']:.1f} ({s['actors']}) | {remote['wall'] / local['wall']:.2f}× | "
                 f"{remote['first']:.1f} | {local['wall'] / chunks:.2f} / "
                 f"{remote['per_chunk']:.2f} | {s['max_diff']:.1e} "
                 f"({'yes' if s['identical'] else 'no'}) |")
    return L


def stage_ray(n: int, quick: bool) -> dict:
    """The ``ray`` stage of bench/run_all.py: both steps on ``n`` rows, on a local cluster
    of this machine's cores."""
    result = measure(rows=n, chunk_size=8 if quick else 16)
    print("\n".join(table(result)), flush=True)
    result["series"] = {f"{s['step']} on Ray / local": s["ray"]["wall"] / s["local"]["wall"]
                        for s in result["steps"]}
    return result


def render(runs) -> list[str]:
    """The RESULTS.md section of the ray stage."""
    L = ["## Ray Data executor against the local executor (`--executor ray`)", "",
         "The same real Alpaca rows scored twice in fresh workspaces, in one process: with "
         "the local executor (the model already loaded) and on a local Ray cluster of this "
         "machine's cores (`core/executors`). Fixed cost: from the start of the step to its "
         "first chunk back (actors starting, importing torch, loading the model). On one "
         "machine Ray can only add cost; it pays off when the cluster has more machines or "
         "GPUs (bench/README.md, expected scaling).", ""]
    for i, r in enumerate(runs):
        L += table(r)[(0 if i == 0 else 2):]
    return L


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
    result = measure(args.rows, args.chunk_size, args.max_length, args.steps, args.num_cpus,
                     args.ray_address)
    print(f"\n{args.rows} real Alpaca rows, {result['chunks']} chunks of {args.chunk_size}, "
          f"max_length {args.max_length}\n")
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
