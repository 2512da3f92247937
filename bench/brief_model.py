"""Cherry's brief model (core/lm/brief.py): time the pick and the fine-tuning.

The full run is Cherry v1's phase as specified (docs/methods.md §1b): the whole real Alpaca
file (9,229 rows) analysed, K-means 100, 10 per cluster (~1,000 samples), 3 epochs at lr 2e-5,
batch 128, max length 512, template alpaca, precision auto (bf16 autocast on a CPU with
AVX512-BF16/AMX). Smaller configurations are for a shared machine: ``--pool``, ``--clusters``
and ``--epochs`` shrink it, and the output says which configuration was measured.

Prints and writes bench/.cache/brief_model.json: seconds and tokens/s of the analysis (prompt
forward passes) and of training (forward + backward + AdamW over every token of every
example, per epoch), the load average before and after, and the projection of the training
time to 1,000 samples x 3 epochs from the measured tokens/s and the measured mean example
length (labelled as arithmetic, not a measurement).

    python bench/brief_model.py                      # the full run (hours on 2 CPU cores)
    nice -n 10 python bench/brief_model.py --pool 1000 --clusters 10 --epochs 1   # reduced
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA_FILE = ROOT.parent / "shared" / "data" / "alpaca_random_9k.jsonl.gz"
OUT = Path(__file__).resolve().parent / ".cache" / "brief_model.json"
FULL = {"pool": None, "clusters": 100, "per_cluster": 10, "epochs": 3}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", type=int, default=None,
                   help="analyse the first N rows (default: the whole file)")
    p.add_argument("--clusters", type=int, default=FULL["clusters"])
    p.add_argument("--per-cluster", type=int, default=FULL["per_cluster"])
    p.add_argument("--epochs", type=int, default=FULL["epochs"])
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--workspace", default=str(Path(__file__).resolve().parent / ".cache"
                                              / "brief_ws"),
                   help="scratch workspace (re-created; kept for inspection)")
    args = p.parse_args(argv)

    import torch

    from core.io import import_to_workspace
    from core.lm import load_causal_lm
    from core.lm.brief import (cluster_labels, middle_band_picks, resolve_precision,
                               run_analysis)
    from core.lm.brief_train import TrainConfig, train_brief, training_example
    from core.lm.templates import as_text, render_prompt

    config_name = ("full" if args.pool is None and args.clusters == FULL["clusters"]
                   and args.per_cluster == FULL["per_cluster"]
                   and args.epochs == FULL["epochs"] else "reduced")
    load_before = os.getloadavg()
    from core.lm.brief import ANALYSIS
    from core.workspace import Workspace, is_workspace

    ws_path = Path(args.workspace)
    ws = Workspace.open(ws_path) if is_workspace(ws_path) else None
    if ws is None or (args.pool is not None and len(ws) != args.pool):
        if ws_path.exists():
            shutil.rmtree(ws_path)
        ws, _ = import_to_workspace([DATA_FILE], ws_path, limit=args.pool)
    lm = load_causal_lm(dtype="float32")
    precision = resolve_precision(args.precision)

    # The analysis is a cached workspace step: a rerun on the same pool reuses it, and its
    # time is then the one its sidecar recorded when it was computed.
    analysis = run_analysis(ws, lm, "alpaca", args.max_length)
    t_analysis = float(ws.meta(ANALYSIS)["duration_s"])
    tok = lm.tokenizer
    samples = ws.samples(["sample_id", "instruction", "input", "output"]).set_index("sample_id")
    prompt_tokens = sum(len(tok(render_prompt("alpaca", r.instruction, r.input),
                                add_special_tokens=False)["input_ids"]) + 1
                        for r in samples.itertuples())

    t0 = time.perf_counter()
    import numpy as np

    labels = cluster_labels(np.stack(analysis["embedding"].to_numpy()), args.clusters)
    picked = analysis["sample_id"].to_numpy()[
        middle_band_picks(labels, analysis["perplexity"].to_numpy(), args.per_cluster)]
    t_pick = time.perf_counter() - t0
    eos = tok.eos_token_id
    examples = [e for e in (training_example(
        tok, lm.start_token_id, eos,
        render_prompt("alpaca", samples.loc[s, "instruction"], samples.loc[s, "input"]),
        as_text(samples.loc[s, "output"]), args.max_length) for s in picked) if e]
    config = TrainConfig(epochs=args.epochs, precision=precision)
    t0 = time.perf_counter()
    _, _, history = train_brief(lm.path, examples, lm.start_token_id, config,
                                ws.path("models", "brief.checkpoints", "bench"))
    t_train = time.perf_counter() - t0
    shutil.rmtree(ws.path("models", "brief.checkpoints"), ignore_errors=True)  # ~1.6 GB scratch
    tokens_per_epoch = sum(len(e.ids) for e in examples)
    train_tps = tokens_per_epoch * args.epochs / t_train
    mean_len = tokens_per_epoch / len(examples)
    full_tokens = 1000 * mean_len * 3
    result = {
        "config": config_name, "pool": len(samples), "clusters": args.clusters,
        "per_cluster": args.per_cluster, "epochs": args.epochs, "picked": int(len(picked)),
        "trained": len(examples), "max_length": args.max_length, "precision": precision,
        "analysis_s": round(t_analysis, 1), "analysis_prompt_tokens": prompt_tokens,
        "analysis_tokens_per_s": round(prompt_tokens / t_analysis, 1),
        "pick_s": round(t_pick, 2), "train_s": round(t_train, 1),
        "train_tokens_per_epoch": tokens_per_epoch, "mean_example_tokens": round(mean_len, 1),
        "train_tokens_per_s": round(train_tps, 1), "history": history,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "projection_1000x3": {
            "note": "arithmetic from this run's tokens/s, not a measurement",
            "tokens": round(full_tokens), "train_s": round(full_tokens / train_tps)},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
