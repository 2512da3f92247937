#!/usr/bin/env bash
# The GPU benchmarks: IFD, embeddings and the Ray executor on a CUDA machine, in under ten
# minutes, printed as the same Markdown tables as bench/README.md.
#
#   bench/gpu.sh                 # from the repository, after `make install`
#
# Without a GPU it prints "no GPU: skipped" and exits 0. With an NVIDIA GPU but the CPU
# build of torch (what requirements.txt installs), it first installs the CUDA build of the
# same torch version into the venv (set CHERRYPICK_NO_INSTALL=1 to only print the command).
# CHERRYPICK_GPU_BENCH_DEVICE=cpu runs the same code on the CPU with tiny sizes (a check of
# the script itself, not a benchmark).
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
DEVICE="${CHERRYPICK_GPU_BENCH_DEVICE:-cuda}"

if [ "$DEVICE" = cuda ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "no GPU: skipped (no NVIDIA GPU found by nvidia-smi; the CPU benchmarks are bench/run_all.py)"
        exit 0
    fi
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        TORCH="$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")"
        CMD=("$PY" -m pip install "torch==$TORCH" --index-url https://download.pytorch.org/whl/cu128)
        if [ "${CHERRYPICK_NO_INSTALL:-0}" = 1 ]; then
            echo "a GPU is present but torch $TORCH is the CPU build; install the CUDA build with:"
            echo "  ${CMD[*]}"
            exit 2
        fi
        echo "a GPU is present but torch $TORCH is the CPU build: installing the CUDA build (once)"
        "${CMD[@]}"
        "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
            echo "torch still sees no CUDA device (driver too old for cu128?): skipped"; exit 2; }
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

start=$(date +%s)
DEVICE="$DEVICE" "$PY" - <<'PYTHON'
"""IFD and embedding speed on the GPU, each against a baseline timed in this process."""
import os, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path.cwd()
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import numpy as np
import torch
from scipy.stats import spearmanr

from core.embed import embed_texts, embedding_text, load_embedder
from core.io import read_dataset
from core.lm import load_causal_lm
from core.lm.losses import DEFAULT_TOKEN_BUDGET, cuda_token_budget
from core.scores.ifd import ifd_scores

device = os.environ["DEVICE"]
tiny = device == "cpu"
data = Path(os.environ.get("CHERRYPICK_DATA", ROOT.parent / "shared" / "data"))
source = data / "alpaca_random_9k.jsonl.gz"
ifd_rows, base_rows, embed_rows = (8, 4, 64) if tiny else (2000, 64, 9229)
samples = read_dataset(source, limit=max(ifd_rows, embed_rows)).samples
if device == "cuda":
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    value = fn()
    sync()
    return value, time.perf_counter() - t


def ifd_of(lm, frame):
    return ifd_scores(lm, frame["instruction"].tolist(), frame["input"].tolist(),
                      frame["output"].tolist(), max_length=512)["ifd"].to_numpy()


# ----- IFD --------------------------------------------------------------------------------
rows = samples.iloc[:ifd_rows]
cpu = load_causal_lm(device="cpu", dtype="float32")
base, base_s = timed(lambda: ifd_of(cpu, rows.iloc[:base_rows]))
del cpu
table = [("engine fp32, CPU (baseline)", base_rows / base_s, None)]
fp32 = load_causal_lm(device=device, dtype="float32")
ifd_of(fp32, rows.iloc[:4])  # warm-up: CUDA context, kernels
ref, fp32_s = timed(lambda: ifd_of(fp32, rows))
budget = cuda_token_budget(fp32.model, 512) if device == "cuda" else DEFAULT_TOKEN_BUDGET
table.append((f"engine fp32, {device}", ifd_rows / fp32_s,
              f"max diff vs CPU fp32 {np.nanmax(np.abs(ref[:base_rows] - base)):.1e}"))
del fp32
if device == "cuda":
    torch.cuda.empty_cache()
auto = load_causal_lm(device=device, dtype="auto")  # bf16 on CUDA with bf16 (README)
ifd_of(auto, rows.iloc[:4])
low, low_s = timed(lambda: ifd_of(auto, rows))
ok = np.isfinite(ref) & np.isfinite(low)
rel = np.abs(low[ok] - ref[ok]) / np.abs(ref[ok])
table.append((f"engine dtype auto = {auto.dtype}, {device}", ifd_rows / low_s,
              f"vs fp32: Spearman {spearmanr(ref[ok], low[ok])[0]:.4f}, median "
              f"{100 * np.median(rel):.2f} %, max {100 * rel.max():.1f} %"))
del auto
print(f"\n**IFD**, {ifd_rows} real Alpaca rows (template none, max_length 512, token budget "
      f"{budget} on {device}):\n")
print("| variant | rows/s | vs CPU fp32 | agreement |\n|---|---|---|---|")
for name, speed, note in table:
    print(f"| {name} | {speed:.1f} | {speed / table[0][1]:.1f}x | {note or '-'} |")

# ----- embeddings -------------------------------------------------------------------------
texts = embedding_text(samples.iloc[:embed_rows], "full")
plain = load_embedder(None, device=device, precision="fp32")
plain.encode(texts[:64], batch_size=64)
vec_plain, plain_s = timed(lambda: plain.encode(texts, batch_size=64, normalize_embeddings=True))
vec32, ours32_s = timed(lambda: embed_texts(texts, plain, batch_size=256))
table = [("plain SentenceTransformer.encode fp32 (baseline)", plain_s, "-"),
         ("embed_texts fp32 (token-sorted batches of 256)", ours32_s,
          f"max diff {np.abs(vec32 - vec_plain).max():.1e}")]
bf16 = load_embedder(None, device=device, precision="auto")
embed_texts(texts[:64], bf16)
vec16, ours16_s = timed(lambda: embed_texts(texts, bf16, batch_size=256))
k = 10
def neighbours(v):
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :k]
a, b = neighbours(vec32), neighbours(vec16)
recall = np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)])
table.append((f"embed_texts precision auto = {'bf16' if bf16 is not plain else 'fp32'}",
              ours16_s, f"kNN@10 recall vs fp32 {recall:.4f}"))
print(f"\n**Embeddings**, {embed_rows} real Alpaca rows (MiniLM, full text):\n")
print("| variant | rows/s | vs plain encode | agreement |\n|---|---|---|---|")
for name, seconds, note in table:
    print(f"| {name} | {embed_rows / seconds:.0f} | {plain_s / seconds:.2f}x | {note} |")
PYTHON

echo
echo "**Ray executor** against local (bench/ray_overhead.py):"
if [ "$DEVICE" = cpu ]; then
    "$PY" bench/ray_overhead.py --rows 16 --chunk-size 8 --max-length 64
else
    "$PY" bench/ray_overhead.py --rows 1024 --chunk-size 128 --max-length 512
fi
echo
echo "bench/gpu.sh took $(( $(date +%s) - start )) s"
