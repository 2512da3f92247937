"""Cherry's brief (pre-experienced) model: Cherry LLM v1's first phase (docs/methods.md §1b).

Cherry v1 (arXiv 2308.12032; Cherry_LLM ``cherry_seletion/data_analysis.py --mod pre`` and
``cherry_seletion/data_by_cluster.py``) trains the scoring model briefly on a small, diverse
part of the target data before scoring IFD with it:

1. ``prompt_statistics``: the LM reads each instruction prompt alone (template applied, cut at
   max_length): its perplexity exp(mean NLL of tokens 2..n) and the mean of the last hidden
   layer over all its tokens. Stored resumably as ``models/brief_analysis.parquet``.
2. ``cluster_labels``: K-means on those embeddings (100 clusters, seeded).
3. ``middle_band_picks``: per cluster, the samples whose perplexity lies in the cluster's
   25th..75th percentile band (inclusive), 10 of them evenly spaced in dataset order; a
   cluster or band with fewer than 10 is taken whole.
4. ``brief_train.train_brief``: fine-tune on them, answer-only loss, a checkpoint per epoch.

The result is a plain Hugging Face folder ``models/brief/`` with a sidecar ``brief.json``
(picked ids, parameters, base model, loss per epoch). ``score ifd --model brief`` loads it
(``core.lm.models.resolve_model``) and every IFD sidecar records the folder and the sidecar's
sha256, so a retrained brief model never reuses scores of the old one. Optional, never the
default (Cherry v2 and Superfiltering dropped this phase).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..progress import Progress, TqdmProgress
from .brief_train import (TrainConfig, latest_checkpoint, mean_answer_loss, save_model_folder,
                          train_brief, training_example, write_json_sorted)
from .losses import DEFAULT_TOKEN_BUDGET, _head_nll, _needs_full_head, plan_batches
from .models import BRIEF_MODEL_DIR, BRIEF_SIDECAR
from .templates import TEMPLATES, as_text, encode, render_prompt, with_start

ANALYSIS = "models/brief_analysis.parquet"
BAND_PERCENTILES = (25.0, 75.0)
KMEANS_N_INIT = 10          # scikit-learn's default when the reference was written
ANALYSIS_VERSION = 1


# ----- 1. instruction perplexity and embedding ----------------------------------------------
def prompt_statistics(lm, prompts: Sequence[Sequence[int]],
                      token_budget: int = DEFAULT_TOKEN_BUDGET,
                      progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Per token sequence: perplexity exp(mean NLL of every token after the first) and the
    mean of the last hidden layer over all its tokens (Cherry's ``get_perplexity_and_
    embedding_whole_text``). Batched like ``sequence_losses``: longest first, right padding
    without a mask (exact for a causal model). NaN perplexity for a one-token sequence."""
    import torch

    model = lm.model
    n = len(prompts)
    width = int(model.config.hidden_size)
    ppl = np.full(n, np.nan, dtype=np.float64)
    emb = np.zeros((n, width), dtype=np.float32)
    order = sorted(range(n), key=lambda i: -len(prompts[i]))
    lengths = [len(prompts[i]) for i in order]
    head = model.get_output_embeddings()
    full_head = head is None or _needs_full_head(model)
    device = next(model.parameters()).device
    done, total = 0, max(sum(lengths), 1)
    with torch.inference_mode():
        for lo, hi in plan_batches(lengths, token_budget):
            batch = order[lo:hi]
            x = torch.full((len(batch), lengths[lo]), int(lm.start_token_id), dtype=torch.long)
            rows, cols, targets = [], [], []
            for r, i in enumerate(batch):
                ids = list(prompts[i])
                x[r, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
                rows.extend([r] * (len(ids) - 1))
                cols.extend(range(len(ids) - 1))
                targets.extend(ids[1:])
            x = x.to(device)
            if full_head:
                out = model(input_ids=x, output_hidden_states=True)
                hidden = out.hidden_states[-1]
            else:
                hidden = model.base_model(input_ids=x).last_hidden_state
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
            if targets:
                rows_t = torch.as_tensor(rows, device=device)
                cols_t = torch.as_tensor(cols, device=device)
                targets_t = torch.as_tensor(targets, device=device)
                if full_head:
                    logits = out.logits[rows_t, cols_t].float()
                    nll = torch.logsumexp(logits, -1) - logits.gather(1, targets_t[:, None])[:, 0]
                else:
                    nll = _head_nll(head, hidden[rows_t, cols_t], targets_t)
                sums.index_add_(0, rows_t, nll.double())
            for r, i in enumerate(batch):
                length = len(prompts[i])
                emb[i] = hidden[r, :length].float().mean(0).cpu().numpy()
                if length > 1:
                    ppl[i] = math.exp(float(sums[r]) / (length - 1))
            done += sum(lengths[lo:hi])
            if progress is not None:
                progress(done, total)
    return ppl, emb


def prompt_ids(lm, template: str, instruction, input, max_length: int) -> list[int]:
    """The instruction prompt alone as the scorer reads it: start token + prompt(Q), cut at
    ``max_length`` tokens (the reference's ``tokenizer.encode(..., truncation=True)``)."""
    tok = lm.tokenizer
    ids = with_start(int(lm.start_token_id),
                     encode(tok, render_prompt(template, instruction, input, tok)))
    return ids[:max_length]


def run_analysis(ws, lm, template: str, max_length: int, progress: Progress | None = None,
                 chunk_size: int = 256, force: bool = False) -> pd.DataFrame:
    """Instruction perplexity and embedding of every sample, resumable, as a workspace step
    (``models/brief_analysis.parquet``: sample_id, perplexity, embedding). Sorted by id."""
    from ..scores.ifd import lm_params
    from ..workspace import SAMPLES, Step
    from .losses import token_progress

    frame = ws.samples(["sample_id", "instruction", "input"]).set_index("sample_id").sort_index()
    ids = frame.index.to_numpy()

    def compute(chunk: np.ndarray, chunk_progress) -> pd.DataFrame:
        rows = frame.loc[chunk]
        seqs = [prompt_ids(lm, template, q, x, max_length)
                for q, x in zip(rows["instruction"], rows["input"])]
        ppl, emb = prompt_statistics(lm, seqs, progress=token_progress(
            chunk_progress, len(chunk), "instruction perplexity"))
        return pd.DataFrame({"sample_id": np.asarray(chunk, dtype=np.int64),
                             "perplexity": ppl, "embedding": list(emb)})

    step = Step(ANALYSIS, lm_params(lm, template=template, max_length=int(max_length),
                                     analysis_version=ANALYSIS_VERSION),
                inputs={"samples": SAMPLES}, meta=lm.meta())
    result = ws.run_chunked(step, ids, compute, chunk_size=chunk_size, progress=progress,
                            force=force)
    value = result.value
    return value[value["sample_id"].isin(ids)].sort_values("sample_id").reset_index(drop=True)


# ----- 2. and 3. the pick rule --------------------------------------------------------------
def cluster_labels(embeddings: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """K-means labels (scikit-learn, ``random_state=seed``, as the reference's
    ``KMeans(n_clusters=100, random_state=0)``, with the n_init of its time)."""
    from sklearn.cluster import KMeans

    embeddings = np.asarray(embeddings, dtype=np.float32)
    if n_clusters > len(embeddings):
        raise InputError(f"{n_clusters} clusters need at least as many samples; the "
                         f"workspace has {len(embeddings)}: use fewer --clusters",
                         field="clusters")
    km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=KMEANS_N_INIT)
    return km.fit(embeddings).labels_.astype(np.int64)


def middle_band_picks(labels: np.ndarray, perplexity: np.ndarray, per_cluster: int,
                      low: float = BAND_PERCENTILES[0],
                      high: float = BAND_PERCENTILES[1]) -> np.ndarray:
    """Positions picked by Cherry's ``sample_middle_confidence_data``, cluster by cluster.

    A cluster with fewer than ``per_cluster`` members is taken whole; otherwise its members
    whose perplexity lies within the cluster's ``low``..``high`` percentiles (numpy's
    linear interpolation, both ends inclusive) form the band, taken whole when it is smaller
    than ``per_cluster``, else ``band[::len(band) // per_cluster][:per_cluster]``."""
    labels = np.asarray(labels)
    perplexity = np.asarray(perplexity, dtype=np.float64)
    picks = []
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        if len(members) < per_cluster:
            picks.append(members)
            continue
        values = perplexity[members]
        lower, upper = np.percentile(values, [low, high])
        band = members[(values >= lower) & (values <= upper)]
        picks.append(band if len(band) < per_cluster
                     else band[::len(band) // per_cluster][:per_cluster])
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)


# ----- 4. the whole phase -------------------------------------------------------------------
@dataclass
class BriefResult:
    folder: Path
    sidecar: dict
    cached: bool


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 autocast where the hardware computes bf16 natively (CUDA with bf16,
    CPUs with AVX512-BF16 or AMX), else fp32."""
    import torch

    if precision in ("float32", "bfloat16"):
        return precision
    if precision != "auto":
        raise InputError(f"unknown precision {precision!r}; use auto, float32 or bfloat16",
                         field="precision")
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    cpu = torch.cpu
    native = any(getattr(cpu, name, lambda: False)() for name in
                 ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return "bfloat16" if native else "float32"


def run_brief_model(ws, model=None, template: str = "alpaca", n_clusters: int = 100,
                    per_cluster: int = 10, max_length: int = 512,
                    config: TrainConfig | None = None, precision: str = "auto",
                    analysis_progress: Progress | None = None,
                    train_progress: Progress | None = None, force: bool = False) -> BriefResult:
    """Pick the samples, fine-tune the scoring LM on them and save ``models/brief/``.

    Up to date when the saved model's key (base model identity, samples, every parameter)
    matches; a killed training resumes from its last epoch checkpoint
    (``models/brief.checkpoints/<key>/``)."""
    from ..lm import load_causal_lm
    from ..workspace import cache_key

    if template not in TEMPLATES:
        raise InputError(f"unknown prompt template {template!r}; use one of "
                         f"{', '.join(TEMPLATES)}", field="template")
    if per_cluster < 1 or n_clusters < 1:
        raise InputError("--clusters and --per-cluster must be at least 1", field="clusters")
    config = config or TrainConfig()
    config.precision = resolve_precision(precision)
    lm = load_causal_lm(model, dtype="float32")
    if lm.path and Path(lm.path).resolve() == ws.path(BRIEF_MODEL_DIR).resolve():
        raise InputError("the brief model is trained from a base model, not from itself",
                         field="model")
    # --force retrains; the analysis is recomputed only when its own key changed
    analysis = run_analysis(ws, lm, template, max_length, progress=analysis_progress)
    labels = cluster_labels(np.stack(analysis["embedding"].to_numpy()), n_clusters,
                            seed=config.seed)
    positions = middle_band_picks(labels, analysis["perplexity"].to_numpy(), per_cluster)
    picked = analysis["sample_id"].to_numpy()[positions].astype(np.int64)
    params = {"base_model": lm.identity, "template": template, "clusters": int(n_clusters),
              "per_cluster": int(per_cluster), "band_percentiles": list(BAND_PERCENTILES),
              "kmeans_n_init": KMEANS_N_INIT, "max_length": int(max_length),
              "train": config.as_params(), "picked": picked.tolist()}
    key = cache_key(params, {"samples": ws.samples_fingerprint()})
    folder = ws.path(BRIEF_MODEL_DIR)
    sidecar_path = folder / BRIEF_SIDECAR
    if not force and sidecar_path.is_file() and (folder / "config.json").is_file():
        from .. import atomic

        old = atomic.read_json(sidecar_path)
        if old.get("key") == key:
            return BriefResult(folder, old, True)

    rows = ws.samples(["sample_id", "instruction", "input", "output"]).set_index("sample_id")
    tok = lm.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else lm.start_token_id
    examples, skipped = [], []
    for sid in picked:
        row = rows.loc[int(sid)]
        ex = training_example(tok, int(lm.start_token_id), int(eos),
                              render_prompt(template, row["instruction"], row["input"], tok),
                              as_text(row["output"]), max_length)
        if ex is None:  # the prompt alone fills max_length
            skipped.append(int(sid))
            continue
        examples.append(ex)
    if not examples:
        raise InputError("no picked sample has an answer token within --max-length",
                         field="max_length")
    parts = ws.path("models", "brief.checkpoints")
    checkpoints = parts / key
    resumed = latest_checkpoint(checkpoints)
    started = time.perf_counter()
    base_loss = None if resumed else mean_answer_loss(lm.model, examples, lm.start_token_id,
                                                      config.precision)
    trained, trained_tok, history = train_brief(lm.path, examples, lm.start_token_id, config,
                                                checkpoints, progress=train_progress)
    took = time.perf_counter() - started
    sidecar = {"key": key, "kind": "cherry-brief-model", "base_model": lm.meta(),
               "params": {k: v for k, v in params.items() if k != "picked"},
               "picked_sample_ids": picked.tolist(),
               "cluster_of_picked": labels[positions].tolist(),
               "skipped_sample_ids": skipped,  # picked, but the prompt fills max_length
               "train_examples": len(examples),
               "train_tokens": int(sum(len(e.ids) for e in examples)),
               "answer_tokens": int(sum(e.n_target for e in examples)),
               "loss_before": base_loss, "history": history,
               "resumed_from_epoch": int(resumed.name.split("-")[1]) if resumed else 0,
               "duration_s": round(took, 1), "samples_fingerprint": ws.samples_fingerprint()}
    _install(folder, trained, trained_tok, sidecar)
    shutil.rmtree(parts, ignore_errors=True)  # checkpoints of this and older keys
    return BriefResult(folder, sidecar, False)


def _install(folder: Path, model, tokenizer, sidecar: dict) -> None:
    """Write the model folder under a temporary name and swap it into place, so a kill
    never leaves a half-written ``models/brief/``; the previous model is removed after."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".brief.", dir=folder.parent))
    old = None
    try:
        save_model_folder(tmp, model, tokenizer)
        write_json_sorted(tmp / BRIEF_SIDECAR, sidecar)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=".brief-old.", dir=folder.parent))
            os.rename(folder, old / "brief")
        os.rename(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ----- CLI ----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``brief-model`` to ``python -m core``."""
    from ..args import positive_float, positive_int, seed

    p = subparsers.add_parser(
        "brief-model", help="Cherry v1's brief (pre-experienced) scoring model",
        description="Pick ~1,000 diverse samples (instruction embeddings from the LM, K-means, "
                    "the 25-75 % perplexity band of each cluster), fine-tune the scoring LM "
                    "on them and save it as models/brief/ in the workspace; then score with "
                    "`score ifd --model brief`. A killed run resumes from its last epoch.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="base model: a local Hugging Face causal-LM folder (default: "
                        "SmolLM2-135M-Instruct)")
    p.add_argument("--template", choices=TEMPLATES, default="alpaca",
                   help="prompt template for picking and training (default alpaca, as Cherry)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--clusters", type=positive_int, default=None,
                      help="K-means clusters (default 100)")
    size.add_argument("--samples", type=positive_int, default=None, metavar="N",
                      help="about N training samples: N / --per-cluster clusters")
    p.add_argument("--per-cluster", type=positive_int, default=10,
                   help="samples taken per cluster (default 10)")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs (default 3)")
    p.add_argument("--lr", type=positive_float, default=2e-5, help="learning rate (2e-5)")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="samples per optimiser step (default 128, Cherry's global batch)")
    p.add_argument("--max-length", type=positive_int, default=512,
                   help="tokens per sequence (512)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="training compute: auto = bf16 autocast where the CPU/GPU has native "
                        "bf16, else fp32")
    p.add_argument("--seed", type=seed, default=0, help="K-means and shuffle seed (0)")
    p.add_argument("--force", action="store_true", help="retrain even if up to date")
    p.set_defaults(func=_cli_brief)


def _cli_brief(args) -> int:
    from ..text import terminal_safe
    from ..workspace import Workspace

    ws = Workspace.open(args.workspace)
    clusters = args.clusters or (math.ceil(args.samples / args.per_cluster) if args.samples
                                 else 100)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         seed=args.seed)
    start = time.perf_counter()
    with TqdmProgress("analyse", unit="sample") as bar1, \
            TqdmProgress("train", unit="step") as bar2:
        def train_bar(done: int, total: int, note: str = "") -> None:
            bar1.close()  # the analysis is finished once training reports
            bar2(done, total, note)

        res = run_brief_model(ws, model=args.model, template=args.template,
                              n_clusters=clusters, per_cluster=args.per_cluster,
                              max_length=args.max_length, config=config,
                              precision=args.precision, analysis_progress=bar1,
                              train_progress=train_bar, force=args.force)
    side = res.sidecar
    print(terminal_safe(f"{'up to date' if res.cached else 'wrote'} {res.folder}"))
    print(f"  trained on {side['train_examples']:,} samples "
          f"({side['answer_tokens']:,} answer tokens), {side['params']['train']['precision']}")
    for h in side["history"]:
        print(f"  epoch {h['epoch']}: answer loss {h['train_loss']:.4f} ({h['seconds']} s)")
    print(terminal_safe(f"  score with: python -m core score ifd --workspace {ws.root} "
                        f"--model brief --template {side['params']['template']}"))
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0
