"""Nearest neighbours of every sample by cosine similarity (faiss inner product).

Embeddings are L2-normalised, so inner product = cosine similarity. Two methods:

- ``exact``: ``IndexFlatIP``, a brute-force search; deterministic. Default below
  ``EXACT_THRESHOLD`` rows.
- ``hnsw``: ``IndexHNSWFlat`` (Malkov & Yashunin, arXiv 1603.09320) with inner product; an
  approximate graph index, used above the threshold where the exact search's N² cost
  dominates. Its recall against exact is measured in bench/embed_knn_map.py. The graph is
  built with several threads, so on rare near-ties a rerun may pick a different neighbour.

Each point's own row is excluded, also when exact duplicates exist: we search k + 1 and drop
the query's own index wherever it appears in the list (with duplicates the tie order is
arbitrary, so it need not come first); when it does not appear (more than k + 1 identical
vectors) the last candidate is dropped. Duplicates stay as each other's neighbours at
similarity 1 (what near-duplicate detection wants).

With N ≤ k rows there are only N − 1 other points: ``k`` is clamped to N − 1 (the sidecar
records ``k_requested`` and ``k``). We clamp instead of padding with −1 because −1 is a valid
numpy index (the last row) and would silently corrupt any consumer that forgets to mask it.
"""

from __future__ import annotations

import os
import time

import numpy as np

from . import atomic
from .errors import InputError
from .progress import Progress, report
from .workspace import EMBEDDINGS, KNN, Codec, Step, StepResult, Workspace

# Measured on 2 cores (bench/embed_knn_map.py, bench/README.md "Embeddings, kNN, map"):
# exact search grows with N² (idle: 9k 1.2 s, 36k 16 s; 200k ≈ 3.6× HNSW) while HNSW grows
# ~N log N and is 1.5× faster at 36k. Below 50k exact costs seconds and is deterministic, so
# it stays the default there; above, HNSW (recall@10 ≥ 0.99) wins more with every row.
EXACT_THRESHOLD = 50_000
# HNSW settings, measured on the real 9k embeddings (k = 10, recall vs exact):
#   M 16, efConstruction 40, efSearch 64: 0.991;  M 16 / 80 / 64: 0.998 (1.25x the time);
#   M 32 / 80 / 128: 0.9994 (2x the time). We take the middle one.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
METHODS = ("auto", "exact", "hnsw")


def thread_count() -> int:
    """CPU cores this process may use (respects affinity masks and cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_method(method: str, n: int, exact_threshold: int = EXACT_THRESHOLD) -> str:
    if method not in METHODS:
        raise InputError(f"unknown kNN method {method!r}; use one of {', '.join(METHODS)}",
                         field="method")
    if method == "auto":
        return "exact" if n <= exact_threshold else "hnsw"
    return method


def _validate(embeddings) -> np.ndarray:
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"embeddings must be a 2-D array, got shape {x.shape}",
                         field="embeddings")
    if not np.isfinite(x).all():
        raise InputError("embeddings contain NaN or infinite values; re-run `embed`",
                         field="embeddings")
    return x


def check_k(k) -> int:
    """``k`` as a count of neighbours: a whole number ≥ 1 (0 or a fraction would reach
    faiss, which allocates N x (k + 1) results)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a whole number ≥ 1, not {k!r}", field="k")
    return int(k)


def knn_search(embeddings, k: int = 10, method: str = "auto",
               exact_threshold: int = EXACT_THRESHOLD, seed: int = 0,
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar other rows of every row of ``embeddings``.

    Returns ``(indices int64 [N, k'], similarities float32 [N, k'])`` sorted by decreasing
    similarity, with ``k' = min(k, N - 1)`` (see the module notes). ``seed`` fixes the HNSW
    level assignment; the exact search needs none.
    """
    import faiss

    k = check_k(k)
    x = _validate(embeddings)
    n, dim = x.shape
    method = resolve_method(method, n, exact_threshold)
    k_used = min(k, n - 1)
    if k_used < 1:
        return np.empty((n, 0), np.int64), np.empty((n, 0), np.float32)
    faiss.omp_set_num_threads(thread_count())
    if method == "exact":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * (k_used + 1))
        index.hnsw.rng = faiss.RandomGenerator(int(seed))
    report(progress, 0, 2, f"{method} index")
    index.add(x)
    report(progress, 1, 2, "searching")
    sims, idx = index.search(x, k_used + 1)
    report(progress, 2, 2, "")
    return _drop_self(idx.astype(np.int64, copy=False), sims, k_used)


def _drop_self(idx: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index (wherever it is), else its last candidate; keep k."""
    n, width = idx.shape
    own = idx == np.arange(n)[:, None]
    # Keep at most k per row: drop the first occurrence of self, or the last column.
    has_self = own.any(axis=1)
    drop_col = np.where(has_self, own.argmax(axis=1), width - 1)
    keep = np.ones_like(own)
    keep[np.arange(n), drop_col] = False
    out_idx = idx[keep].reshape(n, width - 1)[:, :k]
    out_sim = sims[keep].reshape(n, width - 1)[:, :k].astype(np.float32, copy=False)
    # faiss marks missing results (an HNSW search that found too few) with -1; never let a
    # -1 through as if it were row N-1.
    if (out_idx < 0).any():
        raise RuntimeError("the kNN index returned fewer neighbours than asked; raise efSearch")
    return np.ascontiguousarray(out_idx), np.ascontiguousarray(out_sim)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true k nearest neighbours that ``found`` contains (averaged over rows)."""
    found, truth = np.asarray(found), np.asarray(truth)
    if truth.size == 0:
        return 1.0
    hits = sum(len(np.intersect1d(f, t, assume_unique=False)) for f, t in zip(found, truth))
    return hits / truth.size


# ----- workspace step ----------------------------------------------------------------------
def run_neighbors(ws: Workspace, k: int = 10, method: str = "auto",
                  progress: Progress | None = None, force: bool = False) -> StepResult:
    """Write ``knn.npz`` (indices, similarities; self excluded) from ``embeddings.npy``.

    The value is ``(indices, similarities)``; indices are embedding rows (= sample_id order).
    """
    k = check_k(k)
    if ws.fingerprint(EMBEDDINGS) is None or not ws.exists(EMBEDDINGS):
        raise InputError("no embeddings yet; run `python -m core embed --workspace "
                         f"{ws.root}` first", file=str(ws.root))
    n = len(ws.embeddings(mmap=True))
    resolved = resolve_method(method, n)
    k_used = min(k, max(n - 1, 0))
    params = {"k": k_used, "method": resolved, "metric": "cosine (inner product)"}
    if resolved == "hnsw":
        params.update(M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION,
                      ef_search=max(HNSW_EF_SEARCH, 2 * (k_used + 1)), seed=0)

    def compute():
        return knn_search(ws.embeddings(mmap=False), k=k, method=resolved, progress=progress)

    def summary(value):
        meta = {"rows": n, "k_requested": k, "k": int(value[0].shape[1]),
                "method_requested": method, "threads": thread_count(), "self_excluded": True}
        if k_used < k:
            meta["note"] = (f"only {n} samples: k clamped from {k} to {k_used} "
                            "(no padding; every index is a real neighbour)")
        return meta

    step = Step(KNN, params, inputs={"embeddings": EMBEDDINGS}, codec=KNN_CODEC)
    return ws.run_whole(step, compute, force=force, summary=summary)


def _write_graph(path, value) -> None:
    atomic.write_npz(path, indices=value[0], similarities=value[1])


def _read_graph(path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["indices"], z["similarities"]


KNN_CODEC = Codec(_write_graph, _read_graph)


# ----- CLI -----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``neighbors`` to the ``python -m core`` argument parser."""
    from .args import positive_int

    p = subparsers.add_parser(
        "neighbors", help="k nearest neighbours of every sample (faiss)",
        description="Write knn.npz: for each sample the k most similar other samples by "
                    "cosine similarity of the embeddings (self excluded). auto = exact below "
                    f"{EXACT_THRESHOLD:,} samples, HNSW above.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    p.add_argument("--k", type=positive_int, default=10,
                   help="neighbours per sample (default 10)")
    p.add_argument("--method", choices=METHODS, default="auto")
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    p.set_defaults(func=_cli_neighbors)


def _cli_neighbors(args) -> int:
    ws = Workspace.open(args.workspace)
    start = time.perf_counter()
    result = run_neighbors(ws, k=args.k, method=args.method, force=args.force)
    idx, _ = result.value
    from .text import terminal_safe

    what = "up to date" if result.cached else "wrote"
    print(terminal_safe(f"{what} {ws.path(KNN)}: {idx.shape[0]} samples x {idx.shape[1]} "
                        f"neighbours ({result.meta['params']['method']}) in "
                        f"{time.perf_counter() - start:.1f}s"))
    if result.meta.get("note"):
        print("note:", terminal_safe(result.meta["note"]))
    return 0
