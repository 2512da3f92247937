"""Matrix-product roofline of this CPU for SmolLM2-135M's shapes, in fp32 and bf16.

What the IFD engine is measured against (issue 16): torch ``F.linear`` at the model's layer
shapes (hidden 576, intermediate 1536, 9 query / 3 key-value heads of 64, vocabulary
49,152) at realistic token counts, plus the attention products, on this machine's threads.
``measure()`` returns GFLOP/s per kind (layers, attention, vocabulary); ``limit_seconds()``
turns a workload (``workload_flops``) into the time it would take at those rates, so a
benchmark can print the engine's share of the roofline.

    python bench/roofline.py [--threads 2] [--tokens 2048] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as core/lm/models.py

# SmolLM2-135M (LlamaForCausalLM); read from a model config with ``model_shape(config)``.
SMOLLM2 = {"hidden": 576, "intermediate": 1536, "heads": 9, "kv_heads": 3, "head_dim": 64,
           "layers": 30, "vocab": 49_152}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def model_shape(config) -> dict:
    """The shape dict of a Hugging Face Llama-style config (falls back to SmolLM2's)."""
    get = lambda name, default: getattr(config, name, None) or default  # noqa: E731
    heads = get("num_attention_heads", SMOLLM2["heads"])
    hidden = get("hidden_size", SMOLLM2["hidden"])
    return {"hidden": hidden, "intermediate": get("intermediate_size", SMOLLM2["intermediate"]),
            "heads": heads, "kv_heads": get("num_key_value_heads", heads),
            "head_dim": get("head_dim", hidden // heads),
            "layers": get("num_hidden_layers", SMOLLM2["layers"]),
            "vocab": get("vocab_size", SMOLLM2["vocab"])}


def layer_linears(shape: dict = SMOLLM2) -> list[tuple[str, int, int, int]]:
    """(name, in, out, count per layer) of every linear layer of one decoder block."""
    h, q, kv = shape["hidden"], shape["heads"] * shape["head_dim"], \
        shape["kv_heads"] * shape["head_dim"]
    return [("q, o proj", h, q, 2), ("k, v proj", h, kv, 2),
            ("gate, up proj", h, shape["intermediate"], 2),
            ("down proj", shape["intermediate"], h, 1)]


def cpu_info() -> dict:
    """CPU model name, logical cores and the SIMD / matrix flags that decide bf16 speed."""
    name, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and name in ("unknown", "", "x86_64"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: kernel selection, first-touch allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_linear(m: int, k: int, n: int, dtype, repeats: int = 5) -> float:
    """GFLOP/s of ``F.linear``'s kernel (``torch.mm``) of an [m, k] input with an [n, k]
    weight, into a reused output (best of repeats)."""
    import torch

    x, w = torch.randn(m, k).to(dtype), (torch.randn(n, k) * 0.05).to(dtype)
    out = torch.empty(m, n, dtype=dtype)  # the kernel's rate, not page faults of a new output
    with torch.inference_mode():
        return 2 * m * k * n / _best(lambda: torch.mm(x, w.t(), out=out), repeats) / 1e9


def time_attention(seqs: int, length: int, shape: dict, dtype, repeats: int = 5) -> float:
    """GFLOP/s of the two attention products (scores = q kᵀ, then scores v) for ``seqs``
    sequences of ``length`` tokens, every query head of ``head_dim``."""
    import torch

    bh, d = seqs * shape["heads"], shape["head_dim"]
    q, k, v = (torch.randn(bh, length, d).to(dtype) for _ in range(3))
    scores, out = torch.empty(bh, length, length, dtype=dtype), torch.empty_like(q)

    def run():
        torch.bmm(torch.bmm(q, k.transpose(1, 2), out=scores), v, out=out)

    with torch.inference_mode():
        return 2 * 2 * bh * length * length * d / _best(run, repeats) / 1e9


def measure(threads: int | None = 2, tokens: int = 2048, vocab_rows: int = 512,
            attention_length: int = 128, repeats: int = 10, shape: dict = SMOLLM2,
            dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict:
    """Roofline per dtype: GFLOP/s of each layer linear at ``tokens`` rows, their
    FLOP-weighted rate ("layers"), the vocabulary projection at ``vocab_rows`` rows
    ("vocab") and the attention products ("attention")."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    out = {**cpu_info(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "tokens": tokens, "vocab_rows": vocab_rows, "attention_length": attention_length,
           "load_before": os.getloadavg()[0], "shape": dict(shape), "dtypes": {}}
    for name in dtypes:
        dtype = getattr(torch, name)
        linears, flops, seconds = {}, 0.0, 0.0
        for label, k, n, count in layer_linears(shape):
            rate = time_linear(tokens, k, n, dtype, repeats)
            linears[label] = rate
            flops += 2 * k * n * count
            seconds += 2 * k * n * count / rate
        out["dtypes"][name] = {
            "linears": linears, "layers": flops / seconds,
            "vocab": time_linear(vocab_rows, shape["hidden"], shape["vocab"], dtype, repeats),
            "attention": time_attention(max(1, tokens // attention_length), attention_length,
                                        shape, dtype, repeats)}
    out["load_after"] = os.getloadavg()[0]
    return out


def workload_flops(lengths, scored, shape: dict = SMOLLM2) -> dict:
    """The FLOPs a forward of these sequences needs at the least: every read token through
    every layer, causal attention, and the vocabulary projection of the scored positions."""
    per_token = sum(2 * k * n * c for _, k, n, c in layer_linears(shape)) * shape["layers"]
    qd = shape["heads"] * shape["head_dim"]
    return {"layers": float(per_token * sum(lengths)),
            "attention": float(2 * qd * shape["layers"] * sum(L * (L + 1) for L in lengths)),
            "vocab": float(2 * shape["hidden"] * shape["vocab"] * sum(scored))}


def limit_seconds(flops: dict, rates: dict) -> float:
    """Seconds the workload ``flops`` takes at the roofline ``rates`` of one dtype."""
    return sum(flops[k] / (rates[k] * 1e9) for k in ("layers", "attention", "vocab"))


def table(result: dict) -> list[str]:
    """The roofline as printable lines."""
    d = result["dtypes"]
    names = list(d)
    lines = [f"CPU {result['cpu']}, {result['cores']} cores, flags: "
             f"{' '.join(result['flags']) or 'none of ' + ' '.join(FLAGS)}; torch "
             f"{result['torch']}, {result['threads']} threads, load "
             f"{result['load_before']:.1f}->{result['load_after']:.1f}",
             f"{'matmul (GFLOP/s)':<34}" + "".join(f"{n:>11}" for n in names)
             + ("   bf16/fp32" if len(names) == 2 else "")]

    def row(label, values):
        ratio = f"   {values[1] / values[0]:9.2f}x" if len(values) == 2 else ""
        lines.append(f"{label:<34}" + "".join(f"{v:11.0f}" for v in values) + ratio)

    for label in d[names[0]]["linears"]:
        row(f"{label} [{result['tokens']} tok]", [d[n]["linears"][label] for n in names])
    row("all layer linears (FLOP-weighted)", [d[n]["layers"] for n in names])
    row(f"vocab projection [{result['vocab_rows']} rows]", [d[n]["vocab"] for n in names])
    row(f"attention q·kᵀ, p·v [L={result['attention_length']}]",
        [d[n]["attention"] for n in names])
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print("\n".join(table(measure(args.threads, args.tokens, repeats=args.repeats))))


if __name__ == "__main__":
    main()
