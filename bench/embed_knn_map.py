"""Timings of embeddings, nearest neighbours and the 2-D map on real data.

    python bench/embed_knn_map.py                # everything (embeds once, then cached)
    python bench/embed_knn_map.py --stages embed # only fill the embedding cache

Sizes: the 9k Alpaca file, all real files together (~35.8k rows), and 200k for kNN and map
(real vectors repeated with small Gaussian noise, renormalised). Embeddings are cached in
bench/.cache/ (one .npy per source file, with the measured time in a .json next to it), so
the 36k figure is the sum of the per-file runs. Ratios are against baselines run in the same
process: plain ``SentenceTransformer.encode`` for embedding, exact faiss search for HNSW.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import embed, knn, maps  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CACHE = Path(__file__).resolve().parent / ".cache"
NINE_K = "alpaca_random_9k.jsonl.gz"


def read_rows(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return pd.DataFrame([json.loads(line) for line in fh if line.strip()])


def cached_embeddings(path: Path, recipe: str = "full") -> tuple[np.ndarray, float, list[str]]:
    """Embeddings of one data file (computed once, then read from bench/.cache)."""
    frame = read_rows(path)
    ident = embed.model_identity()
    stem = path.name.split(".")[0]
    base = CACHE / f"{stem}-{recipe}-{ident['weights_sha256']}"
    if base.with_suffix(".npy").exists() and base.with_suffix(".json").exists():
        info = json.loads(base.with_suffix(".json").read_text())
        return np.load(base.with_suffix(".npy")), info["seconds"], list(frame["instruction"])
    texts = embed.embedding_text(frame, recipe)
    start = time.perf_counter()
    vectors = embed.embed_texts(texts, batch_size=64)
    seconds = time.perf_counter() - start
    CACHE.mkdir(exist_ok=True)
    np.save(base.with_suffix(".npy"), vectors)
    base.with_suffix(".json").write_text(json.dumps({"rows": len(texts), "seconds": seconds,
                                                     "model": ident}))
    print(f"  embedded {path.name}: {len(texts)} rows in {seconds:.1f}s", flush=True)
    return vectors, seconds, list(frame["instruction"])


def line(what: str, n: int, seconds: float, extra: str = "") -> None:
    print(f"{what:<44} N={n:>7,}  {seconds:8.2f} s  {seconds / n * 1e3:8.3f} ms/row  {extra}",
          flush=True)


def bench_embed(files: list[Path], baseline: bool = True
                ) -> tuple[dict[int, np.ndarray], list[str]]:
    print("== embeddings (all-MiniLM-L6-v2, text=full, batch 64, CPU) ==", flush=True)
    if baseline:
        compare_with_plain_encode()
    return embed_files(files)


def neighbour_agreement(truth: np.ndarray, other: np.ndarray, k: int = 10) -> dict:
    """How close ``other`` vectors are to ``truth`` (same rows): cosine per row (min, mean)
    and exact kNN@k recall of ``other``'s neighbours against ``truth``'s."""
    cos = np.sum(truth * other, axis=1)
    t_idx, _ = knn.knn_search(truth, k=k, method="exact")
    o_idx, _ = knn.knn_search(other, k=k, method="exact")
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "recall": float(knn.recall_at_k(o_idx, t_idx)), "k": k}


def compare_with_plain_encode(n: int = 512, repeats: int = 2, offset: int = 0,
                              precision: str = "auto") -> dict:
    """``embed_texts`` (exact fp32, and ``precision``: auto = bf16 where it is fast) against
    a plain fp32 ``SentenceTransformer.encode`` of the same ``n`` real rows (9k file, from
    row ``offset``), alternated, best of ``repeats`` each (the machine is shared); plus the
    fast vectors' cosine to the plain ones and their kNN@10 recall against the plain
    neighbours. Prints one line per variant and returns the figures."""
    nine = read_rows(DATA / NINE_K)
    texts = embed.embedding_text(nine.iloc[offset:offset + n])
    fast = embed.resolve_precision(precision)
    model = embed.load_embedder(precision="fp32")
    fast_model = embed.load_embedder(precision=fast)
    load_before = os.getloadavg()[0]
    variants = {
        "plain": lambda: model.encode(texts, batch_size=64, normalize_embeddings=True),
        "fp32": lambda: embed.embed_texts(texts, model, batch_size=64),
        fast: lambda: embed.embed_texts(texts, fast_model, batch_size=64),
    }
    for warm in (model, fast_model):  # first-call allocations, kernel selection
        warm.encode(texts[:64])
    best, vectors = {}, {}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            vectors[name] = np.asarray(run(), dtype=np.float32)
            best[name] = min(best.get(name, np.inf), time.perf_counter() - start)
    agree = neighbour_agreement(vectors["plain"], vectors[fast])
    plain = best["plain"]
    line("plain SentenceTransformer.encode fp32 (baseline)", len(texts), plain)
    line("embed_texts fp32 (token-length-sorted batches)", len(texts), best["fp32"],
         f"ratio {plain / best['fp32']:.2f}x")
    if fast != "fp32":
        line(f"embed_texts {fast}", len(texts), best[fast],
             f"ratio {plain / best[fast]:.2f}x  cosine min {agree['cosine_min']:.5f}  "
             f"kNN@10 recall {agree['recall']:.4f}")
    return {"rows": len(texts), "plain_s": plain, "engine_fp32_s": best["fp32"],
            "engine_s": best[fast], "precision": fast, "repeats": repeats, **agree,
            "chars_per_row": float(np.mean([len(t) for t in texts])),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def render(runs) -> list[str]:
    """The RESULTS.md section of the embed stage (bench/run_all.py)."""
    L = ["## Embeddings: `core.embed.embed_texts` vs plain `SentenceTransformer.encode`",
         "", "all-MiniLM-L6-v2, text=full, batch 64, CPU; first N rows of alpaca_random_9k; "
         "best of the repeats, alternated in one process. The fast precision is what "
         "`run_embed`'s default (`auto`) picks on this CPU; recall = kNN@10 of its vectors "
         "against the plain fp32 neighbours of the same rows.", "",
         "| N | chars/row | plain fp32 encode ms/row | embed_texts fp32 ms/row | "
         "fp32 speed-up | fast precision | its ms/row | speed-up | cosine min | "
         "kNN@10 recall |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        n, plain = r["rows"], r["plain_s"]
        fp32 = r.get("engine_fp32_s", r["engine_s"])
        L.append(f"| {n:,} | {r['chars_per_row']:.0f} | {plain / n * 1e3:.1f} | "
                 f"{fp32 / n * 1e3:.1f} | {plain / fp32:.2f}× | {r.get('precision', 'fp32')} | "
                 f"{r['engine_s'] / n * 1e3:.1f} | {plain / r['engine_s']:.2f}× | "
                 f"{r.get('cosine_min', float('nan')):.5f} | {r.get('recall', float('nan')):.4f} |")
    return L


def embed_files(files: list[Path]) -> tuple[dict[int, np.ndarray], list[str]]:
    arrays, instructions, total_s = [], [], 0.0
    nine_vectors = None
    for path in files:
        vectors, seconds, instr = cached_embeddings(path)
        arrays.append(vectors)
        instructions += instr
        total_s += seconds
        line(f"embed {path.name.split('.')[0]}", len(vectors), seconds)
        if path.name == NINE_K:
            nine_vectors, nine_s = vectors, seconds
    if len(files) == 1:
        return {len(nine_vectors): nine_vectors}, instructions
    allv = np.concatenate(arrays)
    line("embed all files (sum of the runs above)", len(allv), total_s)
    return {len(nine_vectors): nine_vectors, len(allv): allv}, instructions


def noisy_copies(base: np.ndarray, n: int, sigma: float = 0.02, seed: int = 0) -> np.ndarray:
    """``n`` rows: the real vectors repeated, plus Gaussian noise, renormalised."""
    rng = np.random.default_rng(seed)
    rows = base[np.arange(n) % len(base)]
    out = rows + rng.normal(0, sigma, rows.shape).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def knn_compare(x: np.ndarray, k: int = 10, full_exact_up_to: int = 50_000,
                sample_queries: int = 2_000) -> dict:
    """HNSW (as ``core.knn`` builds it) against exact search on ``x``: seconds and recall@k.

    Above ``full_exact_up_to`` rows the exact search (N² work) is timed on
    ``sample_queries`` random queries against the full index and scaled to N; HNSW recall
    is measured on the same queries. Returns the figures and the graph (exact when it was
    computed in full, else HNSW's)."""
    import faiss

    n = len(x)
    start = time.perf_counter()
    hidx, hsim = knn.knn_search(x, k=k, method="hnsw")
    hnsw_s = time.perf_counter() - start
    if n <= full_exact_up_to:
        start = time.perf_counter()
        idx, sim = knn.knn_search(x, k=k, method="exact")
        exact_s = time.perf_counter() - start
        line("exact (IndexFlatIP)", n, exact_s)
        recall = knn.recall_at_k(hidx, idx)
        graph, queries = (idx, sim), n
    else:
        rows = np.random.default_rng(0).choice(n, sample_queries, replace=False)
        faiss.omp_set_num_threads(knn.thread_count())
        index = faiss.IndexFlatIP(x.shape[1])
        start = time.perf_counter()
        index.add(x)
        sims, found = index.search(x[rows], k + 1)
        exact_s = (time.perf_counter() - start) * n / sample_queries
        truth = np.array([[j for j in f if j != r][:k] for f, r in zip(found, rows)])
        recall = knn.recall_at_k(hidx[rows], truth)
        line(f"exact (IndexFlatIP), scaled from {sample_queries:,} queries", n, exact_s)
        graph, queries = (hidx, hsim), sample_queries
    how = "" if queries == n else f" (on {queries:,} queries)"
    line("hnsw (IndexHNSWFlat)", n, hnsw_s,
         f"exact/hnsw {exact_s / hnsw_s:.2f}x  recall@{k} {recall:.4f}{how}")
    return {"rows": n, "k": k, "hnsw_s": hnsw_s, "exact_s": exact_s, "recall": recall,
            "exact_scaled": queries != n, "recall_queries": queries, "graph": graph}


def bench_knn(sets: dict[int, np.ndarray], k: int = 10, full_exact_up_to: int = 50_000,
              sample_queries: int = 2_000) -> dict[int, tuple]:
    """Exact vs HNSW for every set (see ``knn_compare``); returns the graphs by size."""
    print(f"\n== nearest neighbours (faiss, k={k}, {knn.thread_count()} threads) ==", flush=True)
    return {n: knn_compare(x, k, full_exact_up_to, sample_queries)["graph"]
            for n, x in sorted(sets.items())}


def bench_map(sets: dict[int, np.ndarray], graphs: dict[int, tuple],
              instructions: list[str]) -> None:
    print("\n== 2-D map (umap on the faiss graph) and clusters ==", flush=True)
    # numba compiles umap's kernels on first use in a process; time that apart
    warm = noisy_copies(sets[min(sets)][:200], 200)
    widx, wsim = knn.knn_search(warm, k=10)
    for seed in (0, None):
        start = time.perf_counter()
        maps.umap_layout(widx, wsim, seed=seed, embeddings=warm)
        line(f"umap first call (numba compile), seed={seed}", 200, time.perf_counter() - start)
    for n, x in sorted(sets.items()):
        idx, sim = graphs[n]
        start = time.perf_counter()
        xy = maps.umap_layout(idx, sim, seed=0, embeddings=x)
        line("umap, seeded (single-threaded SGD)", n, time.perf_counter() - start)
        if n <= 40_000:
            start = time.perf_counter()
            maps.umap_layout(idx, sim, seed=None, embeddings=x)
            line("umap, unseeded (parallel SGD)", n, time.perf_counter() - start)
        start = time.perf_counter()
        labels = maps.cluster_embeddings(x, seed=0)
        line(f"kmeans ({labels.max() + 1} clusters)", n, time.perf_counter() - start)
        instr = [instructions[i % len(instructions)] for i in range(n)]
        start = time.perf_counter()
        titles = maps.cluster_titles(instr, labels)
        line("cluster titles (tf-idf)", n, time.perf_counter() - start,
             "e.g. " + "; ".join(list(titles.values())[:3]))
        assert xy.shape == (n, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="embed,knn,map")
    parser.add_argument("--noisy", default="200000",
                        help="comma-separated sizes of noisy-copy sets for kNN and map")
    parser.add_argument("--files", choices=("all", "9k"), default="all",
                        help="9k = only the Alpaca 9k file (when the 36k cache is not ready)")
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    files = [DATA / NINE_K]
    if args.files == "all":
        files += sorted(p for p in DATA.glob("*.jsonl.gz") if p.name != NINE_K)
    print(f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    sets, instructions = bench_embed(files, baseline="embed" in stages)
    if not stages & {"knn", "map"}:
        return
    base = sets[max(sets)]
    for size in (int(v) for v in args.noisy.split(",") if v):
        print(f"noisy copies: N={size:,} from the {len(base):,} real vectors (sigma 0.02)")
        sets[size] = noisy_copies(base, size)
    graphs = bench_knn(sets)
    if "map" in stages:
        bench_map(sets, graphs, instructions)


if __name__ == "__main__":
    main()
