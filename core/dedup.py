"""Near-duplicate groups: exact copies, semantic near-duplicates from the kNN graph and
lexical near-duplicates from MinHash LSH, with one keeper per group.

- **Exact**: the importer's ``duplicate_of`` (same instruction, input and output).
- **Semantic**: an edge between two rows whose embeddings have cosine ≥ ``semantic``
  (default 0.95) in ``knn.npz`` (each row's k nearest neighbours, so a group is found
  through chains of neighbours even when it is larger than k).
- **Lexical**: MinHash LSH (Broder 1997; Leskovec, Rajaraman & Ullman, *Mining of Massive
  Datasets* ch. 3) over word 5-gram shingles of the normalised text (``normalised_words``),
  via ``datasketch``. LSH only proposes candidate pairs; each is kept when the exact Jaccard
  of the two shingle sets is ≥ ``minhash`` (default 0.8), so an LSH false positive never
  becomes a duplicate. Texts shorter than 5 words are one shingle (the whole text).

Groups are the connected components of the union of the edges. The keeper of a group is
its best row by ``keep_by``: ``first`` (smallest sample_id, as ``exclude_duplicates``),
``length`` (longest output, Long Is More), ``ifd`` (highest IFD among IFD < 1, then the
others) or ``curated`` (highest curated DS2 rating in force, audit decisions included); ties
go to the smaller sample_id. ``scores/dedup.parquet`` holds every row; the recipe filter
``exclude_near_duplicates`` drops the rows with ``near_duplicate`` set (in a group, not its
keeper).
"""

from __future__ import annotations

import re
import time
import unicodedata
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .progress import Progress, report
from .workspace import AUDIT, EMBEDDINGS, KNN, SAMPLES, Step, StepResult, Workspace

DEDUP_NAME = "dedup"
DEDUP_SCORE = f"scores/{DEDUP_NAME}.parquet"
KEEP_BY = ("first", "length", "ifd", "curated")
SEMANTIC_THRESHOLD = 0.95
MINHASH_THRESHOLD = 0.8
SHINGLE_WORDS = 5
NUM_PERM = 128          # MinHash permutations: Jaccard estimate error about 1/sqrt(128) ≈ 0.09
MINHASH_SEED = 1
LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative) weights of datasketch's banding
DEDUP_COLUMNS = ("group", "group_size", "is_keeper", "near_duplicate", "exact", "semantic",
                 "lexical", "max_cosine", "max_jaccard")

_WORD = re.compile(r"\w+")


# ----- text ----------------------------------------------------------------------------------
def normalised_words(text: object) -> list[str]:
    """Words of ``text`` after Unicode NFKC and case folding; punctuation and spacing are
    dropped, so re-spacing, re-casing and re-punctuating a text changes nothing."""
    return _WORD.findall(unicodedata.normalize("NFKC", str(text or "")).casefold())


def word_ngrams(words: Sequence[str], n: int) -> set[str]:
    """The distinct word ``n``-grams of ``words``; a text shorter than ``n`` words is one
    n-gram (itself), an empty text none."""
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# ----- detectors (plain functions on arrays) ------------------------------------------------
def minhash_pairs(texts: Sequence[str], threshold: float = MINHASH_THRESHOLD,
                  ngram: int = SHINGLE_WORDS, num_perm: int = NUM_PERM, seed: int = MINHASH_SEED,
                  progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, i < j, of ``texts`` whose shingle sets have Jaccard ≥ ``threshold``:
    LSH candidates verified exactly. Returns ``(pairs int64 [P, 2], jaccard float [P])``."""
    from datasketch import MinHash, MinHashLSH

    sets = [word_ngrams(normalised_words(t), ngram) for t in texts]
    report(progress, 0, 3, "MinHash signatures")
    hashes = MinHash.bulk([[s.encode("utf-8") for s in sh] for sh in sets],
                          num_perm=num_perm, seed=seed)
    report(progress, 1, 3, "LSH index")
    # candidates are verified exactly, so a false positive costs a set comparison while a
    # false negative is a missed duplicate: weigh the banding towards recall
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    with lsh.insertion_session() as session:
        for i, h in enumerate(hashes):
            session.insert(i, h, check_duplication=False)
    report(progress, 2, 3, "verifying candidates")
    pairs, sims = [], []
    for i, h in enumerate(hashes):
        for j in lsh.query(h):
            if j > i:
                sim = jaccard(sets[i], sets[j])
                if sim >= threshold:
                    pairs.append((i, j))
                    sims.append(sim)
    report(progress, 3, 3, "")
    order = np.lexsort(np.asarray(pairs, dtype=np.int64).T[::-1]) if pairs else []
    return (np.asarray(pairs, dtype=np.int64).reshape(-1, 2)[order],
            np.asarray(sims, dtype=np.float64)[order])


def semantic_pairs(indices: np.ndarray, similarities: np.ndarray,
                   threshold: float = SEMANTIC_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``(i, j)``, i < j, of the kNN graph with cosine ≥ ``threshold`` (each once),
    and their cosine."""
    idx = np.asarray(indices, dtype=np.int64)
    sim = np.asarray(similarities, dtype=np.float64)
    rows = np.repeat(np.arange(len(idx)), idx.shape[1] if idx.ndim == 2 else 0)
    cols, vals = idx.reshape(-1), sim.reshape(-1)
    hit = vals >= threshold
    a, b = np.minimum(rows[hit], cols[hit]), np.maximum(rows[hit], cols[hit])
    edges = pd.DataFrame({"a": a, "b": b, "s": vals[hit]})
    edges = edges[edges["a"] != edges["b"]].groupby(["a", "b"], as_index=False)["s"].max()
    return edges[["a", "b"]].to_numpy(np.int64).reshape(-1, 2), edges["s"].to_numpy()


def exact_pairs(duplicate_of: Sequence) -> np.ndarray:
    """Edges from each exact duplicate to the first copy (``duplicate_of``)."""
    dup = pd.to_numeric(pd.Series(duplicate_of), errors="coerce")
    rows = np.flatnonzero(dup.notna().to_numpy())
    return np.stack([dup.to_numpy()[rows].astype(np.int64), rows], axis=1) if len(rows) \
        else np.empty((0, 2), np.int64)


def connected_groups(n: int, *edge_sets: np.ndarray) -> np.ndarray:
    """Group label of each of ``n`` rows: the connected component of the union of the edges,
    numbered 0, 1, ... by their smallest row; -1 for a row without any edge."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate([np.asarray(e, np.int64).reshape(-1, 2) for e in edge_sets]) \
        if edge_sets else np.empty((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    linked = np.zeros(n, dtype=bool)
    linked[edges.reshape(-1)] = True
    out = np.full(n, -1, dtype=np.int64)
    # renumber the linked components by their first row, so labels do not depend on scipy
    _, first = np.unique(labels[linked], return_index=True)
    order = np.argsort(np.flatnonzero(linked)[first], kind="stable")
    relabel = dict(zip(np.unique(labels[linked])[order], range(len(order))))
    out[linked] = [relabel[c] for c in labels[linked]]
    return out


def choose_keepers(groups: np.ndarray, priority: Sequence[np.ndarray]) -> np.ndarray:
    """True for each group's best row: highest ``priority`` keys (the first key counts
    most; NaN lowest), then the smallest row; rows outside a group (-1) are their own
    keepers."""
    groups = np.asarray(groups)
    n = len(groups)
    keys = [np.nan_to_num(np.asarray(p, np.float64), nan=-np.inf) for p in priority]
    order = np.lexsort((np.arange(n), *[-k for k in reversed(keys)], groups))
    sorted_groups = groups[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    keep = np.zeros(n, dtype=bool)
    keep[order[first]] = True
    keep[groups < 0] = True
    return keep


def near_duplicate_table(sample_ids: np.ndarray, exact: np.ndarray, semantic: tuple,
                         lexical: tuple, priority: Sequence[np.ndarray]) -> pd.DataFrame:
    """The dedup score frame from the edges of the three detectors (rows = positions of
    ``sample_ids``; ``semantic``/``lexical`` are ``(pairs, similarities)``)."""
    n = len(sample_ids)
    groups = connected_groups(n, exact, semantic[0], lexical[0])
    sizes = np.ones(n, dtype=np.int64)
    linked = groups >= 0
    counts = np.bincount(groups[linked]) if linked.any() else np.zeros(0, np.int64)
    sizes[linked] = counts[groups[linked]]
    keep = choose_keepers(groups, priority)

    def touched(pairs: np.ndarray) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        mask[np.asarray(pairs, np.int64).reshape(-1)] = True
        return mask

    def best(pairs: np.ndarray, sims: np.ndarray) -> np.ndarray:
        out = np.full(n, np.nan)
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        for col in (0, 1):
            frame = pd.DataFrame({"r": pairs[:, col], "s": sims}).groupby("r")["s"].max()
            rows = frame.index.to_numpy(np.int64)
            out[rows] = np.fmax(out[rows], frame.to_numpy())
        return out

    return pd.DataFrame({
        "sample_id": np.asarray(sample_ids, np.int64),
        "group": pd.Series(groups, dtype="Int64").where(linked, pd.NA),
        "group_size": sizes, "is_keeper": keep, "near_duplicate": linked & ~keep,
        "exact": touched(exact), "semantic": touched(semantic[0]),
        "lexical": touched(lexical[0]),
        "max_cosine": best(*semantic), "max_jaccard": best(*lexical)})


# ----- the workspace step --------------------------------------------------------------------
def _threshold(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise InputError(f"the {what} threshold must be above 0 and at most 1, not {value}",
                         field=what)
    return value


def _keeper_priority(ws: Workspace, samples: pd.DataFrame, keep_by: str,
                     rating: str | None) -> tuple[list[np.ndarray], dict, dict]:
    """Priority keys for ``choose_keepers`` and the inputs/external fingerprints they read."""
    from .select import score_table

    ids = samples["sample_id"].to_numpy(np.int64)
    if keep_by == "first":
        return [], {}, {}
    if keep_by == "length":
        return [samples["output"].fillna("").astype(str).str.len().to_numpy(np.float64)], {}, {}
    if keep_by == "ifd":
        if "ifd" not in ws.score_names():
            raise InputError("--keep-by ifd needs IFD scores; run `python -m core ifd` first "
                             "or choose another --keep-by", field="keep_by")
        ifd = score_table(ws, ["ifd.ifd"]).set_index("sample_id")["ifd.ifd"]
        values = pd.to_numeric(ifd.reindex(ids), errors="coerce").to_numpy(np.float64)
        with np.errstate(invalid="ignore"):
            feasible = np.where(np.isfinite(values), (values < 1.0).astype(np.float64), np.nan)
        return [feasible, values], {"ifd": "scores/ifd.parquet"}, {}
    if keep_by == "curated":
        from .export import curated_ratings
        from .names import ds2_score_name, ds2_scores, resolve_rating_column

        if rating is None:
            found = sorted(ds2_scores(ws).values())
            if len(found) != 1:
                raise InputError("--keep-by curated needs --rating COLUMN (DS2 scores found "
                                 f"for: {', '.join(found) or 'none'})", field="rating")
            rating = found[0]
        column = resolve_rating_column(ws, rating)
        curated = pd.to_numeric(curated_ratings(ws, column).reindex(ids), errors="coerce")
        return ([curated.to_numpy(np.float64)],
                {"ds2": f"scores/{ds2_score_name(column)}.parquet"},
                {"audit_sha256": ws.file_sha256(AUDIT), "rating_column": column})
    raise InputError(f"unknown --keep-by {keep_by!r}; use one of {', '.join(KEEP_BY)}",
                     field="keep_by")


def _checked_knn(ws: Workspace) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph, refused when it does not describe the samples as they are now."""
    if not ws.exists(KNN):
        raise InputError("semantic near-duplicates need the kNN graph; run `python -m core "
                         f"embed --workspace {ws.root}` and `neighbors`, or pass "
                         "--no-semantic", file=str(ws.root))
    emb_meta = ws.meta(EMBEDDINGS) or {}
    if (emb_meta.get("inputs") or {}).get("samples") != ws.samples_fingerprint():
        raise InputError("the embeddings were made from other samples; rerun `embed` and "
                         "`neighbors` (or pass --no-semantic)", file=str(ws.path(EMBEDDINGS)))
    idx, sims = ws.knn()
    if len(idx) != len(ws):
        raise InputError(f"the kNN graph has {len(idx)} rows for {len(ws)} samples; rerun "
                         "`neighbors`", file=str(ws.path(KNN)))
    return idx, sims


def run_dedup(ws: Workspace, semantic: float | None = SEMANTIC_THRESHOLD,
              minhash: float | None = MINHASH_THRESHOLD, keep_by: str = "first",
              rating: str | None = None, ngram: int = SHINGLE_WORDS, num_perm: int = NUM_PERM,
              progress: Progress | None = None, force: bool = False) -> StepResult:
    """Write ``scores/dedup.parquet`` (see the module notes); ``semantic``/``minhash`` None
    turns that detector off."""
    from .embed import embedding_text

    semantic, minhash = _threshold(semantic, "semantic"), _threshold(minhash, "minhash")
    if int(ngram) < 1 or int(num_perm) < 16:
        raise InputError("ngram must be ≥ 1 and num_perm ≥ 16", field="ngram")
    samples = ws.samples(["sample_id", "instruction", "input", "output", "duplicate_of"])
    samples = samples.sort_values("sample_id").reset_index(drop=True)
    priority, inputs, external = _keeper_priority(ws, samples, keep_by, rating)
    graph = _checked_knn(ws) if semantic is not None else None
    inputs = {"samples": SAMPLES, **({"knn": KNN} if semantic is not None else {}), **inputs}
    params = {"semantic": semantic, "minhash": minhash, "keep_by": keep_by,
              "text": "instruction + input + output, NFKC casefold words",
              "ngram": int(ngram), "num_perm": int(num_perm), "minhash_seed": MINHASH_SEED,
              "verify": "exact Jaccard of the shingle sets"}
    empty = (np.empty((0, 2), np.int64), np.empty(0))

    def compute() -> pd.DataFrame:
        lexical = empty
        if minhash is not None:
            lexical = minhash_pairs(embedding_text(samples, "full"), minhash, int(ngram),
                                    int(num_perm), progress=progress)
        near = semantic_pairs(*graph, semantic) if graph is not None else empty
        return near_duplicate_table(samples["sample_id"].to_numpy(np.int64),
                                    exact_pairs(samples["duplicate_of"]), near, lexical,
                                    priority)

    def summary(frame: pd.DataFrame) -> dict:
        return {"rows": int(len(frame)), "groups": int(frame["group"].nunique()),
                "rows_in_groups": int(frame["group"].notna().sum()),
                "near_duplicates": int(frame["near_duplicate"].sum()),
                "by_detector": {d: int(frame[d].sum()) for d in ("exact", "semantic",
                                                                  "lexical")}}

    step = Step(DEDUP_SCORE, params, inputs=inputs, external=external)
    return ws.run_whole(step, compute, force=force, summary=summary)


def group_members(frame: pd.DataFrame, sample_id: int) -> list[int]:
    """Sample ids of the group of ``sample_id`` in a dedup frame (keeper first, then by id);
    just the row itself when it has no near-duplicate."""
    row = frame.loc[frame["sample_id"] == sample_id]
    if row.empty or pd.isna(row["group"].iloc[0]):
        return [int(sample_id)] if not row.empty else []
    members = frame[frame["group"] == row["group"].iloc[0]]
    members = members.sort_values(["is_keeper", "sample_id"], ascending=[False, True])
    return members["sample_id"].astype(int).tolist()


# ----- CLI -----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``dedup`` to the ``python -m core`` argument parser."""
    from .args import positive_int, ratio

    p = subparsers.add_parser(
        "dedup", help="near-duplicate groups (kNN cosine, MinHash LSH) with one keeper each",
        description="Write scores/dedup.parquet: group, group_size, is_keeper, near_duplicate "
                    "and which detector linked each row (exact, semantic, lexical). Filter "
                    "with the recipe step exclude_near_duplicates.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    p.add_argument("--semantic", type=ratio, default=SEMANTIC_THRESHOLD,
                   help="cosine threshold on the kNN graph (default 0.95)")
    p.add_argument("--no-semantic", action="store_true",
                   help="skip the embedding check (no kNN graph needed)")
    p.add_argument("--minhash", type=ratio, default=MINHASH_THRESHOLD,
                   help="Jaccard threshold on word 5-gram shingles (default 0.8)")
    p.add_argument("--no-minhash", action="store_true", help="skip the MinHash check")
    p.add_argument("--keep-by", choices=KEEP_BY, default="first",
                   help="which row of a group to keep: first (smallest id, default), length "
                        "(longest output), ifd (highest IFD < 1), curated (DS2 rating)")
    p.add_argument("--rating", metavar="COLUMN", help="rating column for --keep-by curated")
    p.add_argument("--ngram", type=positive_int, default=SHINGLE_WORDS,
                   help="words per shingle (default 5)")
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    p.set_defaults(func=_cli_dedup)


def _cli_dedup(args) -> int:
    from .progress import TqdmProgress
    from .text import terminal_safe

    ws = Workspace.open(args.workspace)
    start = time.perf_counter()
    with TqdmProgress("dedup", unit="stage") as bar:
        result = run_dedup(ws, semantic=None if args.no_semantic else args.semantic,
                           minhash=None if args.no_minhash else args.minhash,
                           keep_by=args.keep_by, rating=args.rating, ngram=args.ngram,
                           progress=bar, force=args.force)
    meta = result.meta
    what = "up to date" if result.cached else "wrote"
    by = meta.get("by_detector", {})
    print(terminal_safe(f"{what} {ws.path(DEDUP_SCORE)}: {meta.get('groups', 0):,} groups, "
                        f"{meta.get('rows_in_groups', 0):,} rows in them, "
                        f"{meta.get('near_duplicates', 0):,} near-duplicates to drop "
                        f"(rows linked: exact {by.get('exact', 0):,}, semantic "
                        f"{by.get('semantic', 0):,}, lexical {by.get('lexical', 0):,}) in "
                        f"{time.perf_counter() - start:.1f}s"))
    return 0
