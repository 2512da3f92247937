"""Benchmark DS2 score curation (kNN excluded) on real embeddings of the mixed pool.

Ratings are drawn through a known transition matrix from a "true" class that follows the
embedding's topic cluster (K-means on the real embeddings), so the benchmark also reports how
well T is recovered. Sizes above the pool size repeat the real embeddings with small noise.

    python bench/ds2.py                       # 36k-ish pool and 200k
    python bench/ds2.py --sizes 50000 --files alpaca_random_9k.jsonl.gz
    python bench/ds2.py --embed-only          # just build the cached embeddings

Embeddings (all-MiniLM-L6-v2) are computed once and cached under bench/.cache (ignored by
git through the .gitignore written inside it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CACHE = REPO / "bench" / ".cache"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ds2_truth import TRUE_T  # noqa: E402  (the known rater confusion, shared with the tests)


def all_files() -> list[str]:
    return sorted(p.name for p in DATA.glob("*.jsonl.gz"))


def pool_embeddings(files: list[str]) -> np.ndarray:
    """Embeddings of ``files`` through the engine (``core.embed``), cached per file in
    bench/.cache by bench/embed_knn_map.py, so both benchmarks read the same vectors."""
    from embed_knn_map import cached_embeddings

    return np.concatenate([cached_embeddings(DATA / name)[0] for name in files])


def cached_pool() -> tuple[np.ndarray, list[str]]:
    """Real embeddings of the files already cached under bench/.cache (the 9k file is
    embedded when nothing is cached yet)."""
    names = [name for name in all_files()
             if any(CACHE.glob(f"{name.split('.')[0]}-full-*.npy"))]
    names = names or ["alpaca_random_9k.jsonl.gz"]
    return pool_embeddings(names), names


def grow(x: np.ndarray, n: int, seed: int = 0, noise: float = 0.05
         ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows: the real vectors, then copies with Gaussian noise (norm ≈ ``noise``).

    Returns the rows and, for each, the real row it came from.
    """
    if n <= len(x):
        return x[:n], np.arange(n)
    rng = np.random.default_rng(seed)
    origin = np.concatenate([np.arange(len(x)), rng.integers(0, len(x), n - len(x))])
    extra = x[origin[len(x):]]
    extra = extra + noise * rng.normal(size=extra.shape).astype(np.float32) / np.sqrt(x.shape[1])
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    return np.concatenate([x, extra.astype(np.float32)]), origin


def knn(x: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """kNN (self excluded): exact up to 60k rows, IVF (nprobe 16) above. Not timed."""
    import faiss

    if len(x) <= 60_000:
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        quant = faiss.IndexFlatIP(x.shape[1])
        index = faiss.IndexIVFFlat(quant, x.shape[1], 1024, faiss.METRIC_INNER_PRODUCT)
        index.train(x[np.random.default_rng(0).choice(len(x), 50_000, replace=False)])
        index.nprobe = 16
    index.add(x)
    sims, idx = index.search(x, k + 1)
    keep = idx != np.arange(len(x))[:, None]
    keep[keep.all(axis=1), -1] = False
    return idx[keep].reshape(len(x), k), sims[keep].reshape(len(x), k)


def true_classes(x: np.ndarray, seed: int = 0, clusters: int = 200) -> np.ndarray:
    """A true class per row that follows topic: K-means cluster → class (DS2-like prior)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], clusters, niter=15, seed=seed, spherical=True)
    km.train(x[np.random.default_rng(seed).choice(len(x), min(len(x), 20_000), replace=False)])
    _, assign = km.index.search(x, 1)
    prior = np.array([0.06, 0.15, 0.29, 0.29, 0.20, 0.01])  # DS2's released class shares
    prior = prior / prior.sum()
    cluster_class = np.random.default_rng(seed).choice(6, clusters, p=prior)
    return cluster_class[assign[:, 0]]


def draw_ratings(true: np.ndarray, seed: int = 0) -> np.ndarray:
    u = np.random.default_rng(seed + 1).random(len(true))
    return np.minimum((u[:, None] > np.cumsum(TRUE_T, axis=1)[true]).sum(axis=1), 5)


def run(x: np.ndarray, true: np.ndarray, label: str) -> dict:
    """Time ``core.scores.ds2.curate`` on ``x`` (kNN built first, not timed); print one line
    and return the figures."""
    from core.scores import ds2

    idx, sims = knn(x)
    ratings = draw_ratings(true)
    last: dict[str, float] = {}

    def progress(done, total, note):
        last[note] = time.perf_counter()

    start = time.perf_counter()
    frame, rep = ds2.curate(ratings, idx, sims, k=10, seed=0, progress=progress)
    seconds = time.perf_counter() - start
    edges = [("consensus", "consensus"), ("fit T", "fitting T"),
             ("SimiFeat", "mis-rating detection"), ("rest", "done")]
    stages, prev = [], start
    for label_, note in edges:
        stages.append(f"{label_} {last[note] - prev:.1f}s")
        prev = last[note]
    T = np.asarray(rep["transition_matrix"])
    err = float(np.abs(T - TRUE_T).max())
    from sklearn.metrics import roc_auc_score

    auroc = roc_auc_score(ratings != true, frame["noisy_avg"])
    mean_err = float(np.abs(T - TRUE_T).mean())
    # HOC assumes a sample and its nearest neighbours share the true class: how often here?
    same = float(np.mean(true[idx[:, 0]] == true))
    print(f"{label:<20} N={len(x):>8,}  {seconds:6.2f} s  {seconds / len(x) * 1e6:6.1f} us/row  "
          f"T err max {err:.3f} mean {mean_err:.3f}  NN1 same class {same:.0%}  "
          f"AUROC {auroc:.3f}  flagged {frame['flagged'].mean():.1%}  "
          f"[{', '.join(stages)}]", flush=True)
    return {"rows": len(x), "seconds": seconds, "t_err_max": err, "t_err_mean": mean_err,
            "nn1_same_class": same, "auroc": float(auroc),
            "flagged": float(frame["flagged"].mean()), "stages": stages}


def plain_loop_baseline(x: np.ndarray, true: np.ndarray) -> dict:
    """The reference's per-sample Python loops (HOC counting, one SimiFeat epoch) on the same
    graph and subsamples, against the engine's vectorised stages: the speed-up ratio."""
    from core.scores import hoc, simifeat

    idx, sims = knn(x)
    ratings = draw_ratings(true)
    k_classes, rounds = 6, 50

    start = time.perf_counter()
    engine_counts = hoc.consensus_counts(ratings, idx, k_classes, rounds=rounds, seed=0)
    engine_hoc = time.perf_counter() - start
    start = time.perf_counter()
    points, patterns = hoc.consensus_patterns(ratings, idx)
    cnt3 = np.zeros((k_classes,) * 3)
    for sub in hoc.hoc_subsamples(len(points), rounds, 50_000, 0):
        local = np.zeros_like(cnt3)
        for s in sub:
            a, b, c = patterns[s]
            local[a][b][c] += 1
        cnt3 += local / len(sub)
    loop_hoc = time.perf_counter() - start
    assert np.allclose(cnt3 / rounds, engine_counts[2])

    rho = np.full(k_classes, 0.3)
    start = time.perf_counter()
    simifeat.detect_misratings(ratings, idx, sims, rho, k=10, epochs=1, seed=0)
    engine_epoch = time.perf_counter() - start
    start = time.perf_counter()
    rows = next(simifeat.simifeat_subsamples(ratings, 1, 0.9, 0))
    member = np.zeros(len(ratings), dtype=bool)
    member[rows] = True
    for i in rows:
        votes, used = [0.0] * k_classes, 0
        for j, sim in zip(idx[i], sims[i]):
            if used == 10:
                break
            if member[j] and j != i:
                votes[ratings[j]] += max(float(sim), 0.0)
                used += 1
        norm = sum(v * v for v in votes) ** 0.5
        _ = -np.log(votes[ratings[i]] / norm + 1e-8) if norm else None
    loop_epoch = time.perf_counter() - start
    print(f"baseline (plain per-sample loops, N={len(x):,}): HOC counting {loop_hoc:.2f}s vs "
          f"{engine_hoc:.3f}s = {loop_hoc / engine_hoc:.0f}x; one SimiFeat epoch "
          f"{loop_epoch:.2f}s vs {engine_epoch:.3f}s = {loop_epoch / engine_epoch:.0f}x",
          flush=True)
    return {"rows": len(x), "hoc_loop_s": loop_hoc, "hoc_engine_s": engine_hoc,
            "epoch_loop_s": loop_epoch, "epoch_engine_s": engine_epoch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=None,
                    help="pool sizes (default: the real pool, 50,000 and 200,000)")
    ap.add_argument("--clusters", type=int, default=200,
                    help="topic clusters that carry the true class (default 200)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain-loop baseline")
    ap.add_argument("--embed-only", nargs="*", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.embed_only is not None:
        files = args.embed_only or all_files()
        e = pool_embeddings(files)
        print(f"embedded {len(e)} rows from {len(files)} files")
        return 0
    x, names = cached_pool()
    print(f"DS2 curation benchmark: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"real embeddings: {len(x):,} rows from {', '.join(names)}; kNN (k=20) not timed; "
          "ratings drawn through a known T from topic-cluster classes")
    true_real = true_classes(x, clusters=args.clusters)
    if not args.no_baseline:
        plain_loop_baseline(x, true_real)
    sizes = args.sizes or [len(x), 50_000, 200_000]
    for n in sizes:
        xs, origin = grow(x, n)
        run(xs, true_real[origin], "real" if n <= len(x) else "real + noisy copies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
