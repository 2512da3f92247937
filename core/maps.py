"""The 2-D map of a dataset and its topic clusters.

- Layout: UMAP (McInnes, Healy & Melville, arXiv 1802.03426) on the kNN graph already computed
  by ``core.knn`` (passed as ``precomputed_knn``), so no second neighbour search
  (pynndescent) runs. With a seed the layout is reproducible; umap-learn then runs its
  optimisation single-threaded (the cost is measured in bench/embed_knn_map.py). Below
  ``MIN_UMAP_ROWS`` rows UMAP's graph is too thin to mean anything and we fall back to PCA
  of the embeddings (the sidecar says so).
- Clusters: k-means on the L2-normalised embeddings (≈ spherical k-means), numbered by
  decreasing size. The number of clusters defaults to clip(round(sqrt(N / 20)), 2, 40): it
  grows slowly with N (≈ 21 clusters of ~440 rows at 9k, 40 at 36k+), a common square-root
  heuristic scaled so a cluster holds a few hundred rows, and is capped at 40 because a map
  legend with more titles is no longer readable.
- Titles: the instruction terms with the most distinctive TF-IDF weight in a cluster (mean
  weight inside minus mean weight outside), e.g. "poem, story, write".
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from .errors import InputError
from .progress import Progress, report
from .workspace import CLUSTERS, EMBEDDINGS, JSON, KNN, MAP, Step, StepResult, Workspace

MIN_UMAP_ROWS = 30
DEFAULT_N_NEIGHBORS = 15
DEFAULT_MIN_DIST = 0.1
MAX_CLUSTERS = 40


# ----- layout --------------------------------------------------------------------------------
def umap_layout(knn_indices: np.ndarray, knn_similarities: np.ndarray, seed: int | None = 0,
                n_neighbors: int | None = None, min_dist: float = DEFAULT_MIN_DIST,
                embeddings: np.ndarray | None = None) -> np.ndarray:
    """``[N, 2]`` float32 UMAP coordinates from a self-excluded cosine kNN graph.

    ``n_neighbors`` defaults to min(15, k + 1) (UMAP counts the point itself, so k = 10 stored
    neighbours give 11). ``embeddings``, when given, only place disconnected components
    relative to each other in the spectral initialisation. ``seed=None`` lets umap-learn
    run multi-threaded and non-reproducibly.
    """
    import umap

    idx = np.asarray(knn_indices, dtype=np.int64)
    sims = np.asarray(knn_similarities, dtype=np.float32)
    n, k = idx.shape
    if n < MIN_UMAP_ROWS:
        raise InputError(f"UMAP needs at least {MIN_UMAP_ROWS} samples (got {n}); "
                         "use map_layout, which falls back to PCA", field="embeddings")
    width = min(DEFAULT_N_NEIGHBORS, k + 1) if n_neighbors is None else int(n_neighbors)
    if not 2 <= width <= k + 1:
        raise InputError(f"n_neighbors must be between 2 and k + 1 = {k + 1} "
                         "(the stored neighbours plus the point itself)", field="n_neighbors")
    # UMAP expects each point as its own first neighbour, at distance 0.
    own = np.arange(n, dtype=np.int64)[:, None]
    with_self = np.hstack([own, idx])[:, :width]
    distances = np.hstack([np.zeros((n, 1), np.float32),
                           np.clip(1.0 - sims, 0.0, 2.0)])[:, :width]
    data = (np.asarray(embeddings, dtype=np.float32) if embeddings is not None
            else np.zeros((n, 1), np.float32))
    reducer = umap.UMAP(n_neighbors=width, n_components=2, metric="cosine",
                        min_dist=min_dist, random_state=seed,
                        precomputed_knn=(np.ascontiguousarray(with_self),
                                         np.ascontiguousarray(distances, dtype=np.float32)),
                        force_approximation_algorithm=True, low_memory=True, verbose=False,
                        n_jobs=1 if seed is not None else -1)
    with warnings.catch_warnings():
        # "no knn_search_index: transform unavailable" and "n_jobs overridden by seed" are
        # expected here: we never transform, and the seed is the point.
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        xy = reducer.fit_transform(data)
    return np.ascontiguousarray(xy, dtype=np.float32)


def pca_layout(embeddings: np.ndarray) -> np.ndarray:
    """``[N, 2]`` float32 coordinates from the first two principal components."""
    from sklearn.decomposition import PCA

    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    out = np.zeros((n, 2), np.float32)
    components = min(2, n, x.shape[1]) if n else 0
    if n >= 2 and components:
        out[:, :components] = PCA(n_components=components, svd_solver="full").fit_transform(x)
    return out


def map_layout(embeddings: np.ndarray, knn_indices: np.ndarray, knn_similarities: np.ndarray,
               seed: int = 0) -> tuple[np.ndarray, dict]:
    """UMAP when there are enough rows, else PCA; returns coordinates and what was done."""
    n = len(embeddings)
    if n < MIN_UMAP_ROWS or knn_indices.shape[1] < 1:
        note = (f"only {n} samples (< {MIN_UMAP_ROWS}): PCA of the embeddings instead of UMAP")
        return pca_layout(embeddings), {"layout": "pca", "note": note}
    k = knn_indices.shape[1]
    width = min(DEFAULT_N_NEIGHBORS, k + 1)
    xy = umap_layout(knn_indices, knn_similarities, seed=seed, n_neighbors=width,
                     embeddings=embeddings)
    return xy, {"layout": "umap", "n_neighbors": width, "min_dist": DEFAULT_MIN_DIST}


# ----- clusters ------------------------------------------------------------------------------
def default_n_clusters(n: int) -> int:
    """clip(round(sqrt(N / 20)), 2, 40), never more than N (see the module notes)."""
    return int(min(max(n, 1), np.clip(round(np.sqrt(n / 20)), 2, MAX_CLUSTERS)))


def cluster_embeddings(embeddings: np.ndarray, n_clusters: int | None = None,
                       seed: int = 0) -> np.ndarray:
    """k-means cluster per row (int32), numbered 0, 1, ... by decreasing cluster size."""
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    k = default_n_clusters(n) if n_clusters is None else int(n_clusters)
    if k < 1:
        raise InputError("n_clusters must be at least 1", field="n_clusters")
    k = min(k, n)
    if k <= 1:
        return np.zeros(n, np.int32)
    with warnings.catch_warnings():
        # exact duplicates can leave fewer distinct points than clusters
        warnings.filterwarnings("ignore", message=".*distinct clusters.*")
        # one k-means++ start (sklearn's "auto"): 3 starts cost 3x (155 s at 36k on the
        # loaded 2-core machine) for a map colouring that does not need the best inertia
        labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(x)
    sizes = np.bincount(labels, minlength=k)
    # stable renumbering: largest cluster first, ties by old label
    order = np.lexsort((np.arange(k), -sizes))
    rename = np.empty(k, np.int32)
    rename[order] = np.arange(k, dtype=np.int32)
    return rename[labels]


def cluster_titles(instructions, labels, top_terms: int = 3) -> dict[int, str]:
    """A short title per cluster: its most distinctive instruction terms by TF-IDF.

    Distinctiveness = mean TF-IDF weight of a term inside the cluster minus its mean weight in
    the other clusters. Clusters without a usable term are titled "cluster <c>".
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = ["" if t is None else str(t) for t in instructions]
    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise InputError(f"{len(texts)} instructions but {len(labels)} cluster labels",
                         field="labels")
    clusters = [int(c) for c in np.unique(labels)]
    titles = {c: f"cluster {c}" for c in clusters}
    matrix = None
    for min_df in (2, 1):
        try:
            vectorizer = TfidfVectorizer(stop_words="english", min_df=min_df, max_df=0.5,
                                         sublinear_tf=True, max_features=50_000,
                                         token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
            matrix = vectorizer.fit_transform(texts)
            break
        except ValueError:  # empty vocabulary (tiny or stop-word-only sets)
            continue
    if matrix is None or matrix.shape[1] == 0:
        return titles
    terms = vectorizer.get_feature_names_out()
    total = np.asarray(matrix.sum(axis=0)).ravel()
    n = len(texts)
    for c in clusters:
        inside = labels == c
        count = int(inside.sum())
        mean_in = np.asarray(matrix[inside].sum(axis=0)).ravel() / count
        mean_out = (total - mean_in * count) / max(n - count, 1)
        score = mean_in - (mean_out if n > count else 0.0)
        best = [i for i in np.argsort(-score, kind="stable")[:top_terms] if score[i] > 0]
        if best:
            titles[c] = ", ".join(terms[i] for i in best)
    return titles


# ----- workspace step ----------------------------------------------------------------------
def run_map(ws: Workspace, seed: int = 0, n_clusters: int | None = None,
            progress: Progress | None = None, force: bool = False) -> StepResult:
    """Write ``map.parquet`` (sample_id, x, y, cluster), its sidecar and ``clusters.json``.

    The value is ``{"map": frame, "clusters": {"titles": ..., "sizes": ...}}``.
    """
    if ws.fingerprint(EMBEDDINGS) is None or not ws.exists(EMBEDDINGS):
        raise InputError(f"no embeddings yet; run `python -m core embed --workspace {ws.root}`",
                         file=str(ws.root))
    if ws.fingerprint(KNN) is None or not ws.exists(KNN):
        raise InputError("no neighbours yet; run `python -m core neighbors --workspace "
                         f"{ws.root}`", file=str(ws.root))
    params = {"seed": seed, "n_clusters": n_clusters, "layout": "umap (pca below "
              f"{MIN_UMAP_ROWS} rows)", "n_neighbors": f"min({DEFAULT_N_NEIGHBORS}, k+1)",
              "min_dist": DEFAULT_MIN_DIST, "clusters": "kmeans on embeddings",
              "titles": "tf-idf of instructions"}

    def compute():
        embeddings = ws.embeddings(mmap=False)
        idx, sims = ws.knn()
        samples = ws.samples(["sample_id", "instruction"]).sort_values("sample_id")
        if len(samples) != len(embeddings):
            raise InputError("embeddings do not match the samples; re-run `embed`",
                             file=str(ws.path(EMBEDDINGS)))
        report(progress, 0, 3, "layout")
        xy, layout = map_layout(embeddings, idx, sims, seed=seed)
        report(progress, 1, 3, "clusters")
        labels = cluster_embeddings(embeddings, n_clusters=n_clusters, seed=seed)
        report(progress, 2, 3, "titles")
        titles = cluster_titles(samples["instruction"].tolist(), labels)
        report(progress, 3, 3, "")
        frame = pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(np.int64),
                              "x": xy[:, 0], "y": xy[:, 1], "cluster": labels})
        sizes = np.bincount(labels, minlength=len(titles)) if len(labels) else []
        clusters = {"titles": {str(c): t for c, t in titles.items()},
                    "sizes": {str(c): int(s) for c, s in enumerate(sizes)}}
        return {MAP: frame, CLUSTERS: clusters, "layout": layout}

    def summary(value):
        return {"rows": int(len(value[MAP])), **value["layout"],
                "n_clusters": len(value[CLUSTERS]["titles"]), "clusters": value[CLUSTERS]}

    # clusters.json is written before the map: a kill between the two leaves the old map,
    # whose key no longer matches, so the next run redoes both.
    step = Step(MAP, params, inputs={"embeddings": EMBEDDINGS, "knn": KNN},
                also={CLUSTERS: JSON})
    result = ws.run_whole(step, compute, force=force, summary=summary)
    value = {"map": result.value[MAP], "clusters": result.value[CLUSTERS]}
    return StepResult(value, result.meta, result.cached)


# ----- CLI -----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``map`` to the ``python -m core`` argument parser."""
    from .args import positive_int, seed

    p = subparsers.add_parser(
        "map", help="2-D map (UMAP on the kNN graph) and titled clusters",
        description="Write map.parquet (sample_id, x, y, cluster) and clusters.json. Needs "
                    "`embed` and `neighbors` first. Same seed, same map.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--clusters", type=positive_int, default=None,
                   help="number of clusters (default clip(round(sqrt(N/20)), 2, 40))")
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    p.set_defaults(func=_cli_map)


def _cli_map(args) -> int:
    ws = Workspace.open(args.workspace)
    start = time.perf_counter()
    result = run_map(ws, seed=args.seed, n_clusters=args.clusters, force=args.force)
    from .text import terminal_safe

    what = "up to date" if result.cached else "wrote"
    frame, clusters = result.value["map"], result.value["clusters"]
    print(terminal_safe(f"{what} {ws.path(MAP)} and {ws.path(CLUSTERS)}: {len(frame)} samples, "
                        f"{len(clusters['titles'])} clusters ({result.meta.get('layout')}) "
                        f"in {time.perf_counter() - start:.1f}s"))
    if result.meta.get("note"):
        print("note:", terminal_safe(result.meta["note"]))
    return 0
