"""Eval-set decontamination: flag training rows that overlap an evaluation set.

Two checks, each against every item of one or more eval files (any import format,
``core.io.read_dataset``; an item's text is instruction + input + output):

- **Word n-grams** (GPT-3's 13-gram overlap, Brown et al. 2020 app. C; 8 as an option) on
  the normalised words of ``core.dedup.normalised_words`` (NFKC, case folded, punctuation
  dropped). For each row the eval item whose n-grams it covers most is recorded with that
  share (``ngram_coverage``: shared n-grams / the item's n-grams), the count and up to
  ``KEEP_NGRAMS`` of the shared n-grams. A row is flagged when the share is ≥
  ``min_coverage`` (default: any shared n-gram, as in GPT-3). An item shorter than n words
  is one n-gram (itself).
- **Embeddings** for rephrasings: cosine ≥ ``cosine`` (default 0.9) between the row's
  workspace embedding and the eval item embedded with the same model and text recipe
  (``core.embed``); the nearest item and its cosine are recorded.

``scores/decontam.parquet``: ``contaminated`` (either check), ``by_ngram``, ``by_embedding``,
``ngram_coverage``, ``ngram_matches``, ``eval_cosine`` and, as text, the matched eval file and
row (``eval_file``, ``eval_row`` for the n-gram match, ``nearest_eval_file``,
``nearest_eval_row`` for the embedding) and ``matched_ngrams`` (JSON list). The recipe
filter ``exclude_contaminated`` drops flagged rows; ``export`` refuses them unless allowed
(``check_export``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .dedup import normalised_words, word_ngrams
from .errors import InputError
from .progress import Progress, report
from .workspace import EMBEDDINGS, NPY, SAMPLES, Step, StepResult, Workspace, sha256_file

DECONTAM_NAME = "decontam"
DECONTAM_SCORE = f"scores/{DECONTAM_NAME}.parquet"
EVAL_EMBEDDINGS = "decontam_eval.npy"
NGRAM_SIZES = (13, 8)
COSINE_THRESHOLD = 0.9
KEEP_NGRAMS = 5
FAISS_BATCH = 4096


def read_eval_sets(paths: Sequence[str | Path]) -> tuple[pd.DataFrame, list[dict]]:
    """All items of the eval files in one frame (``eval_file``, ``eval_row`` = the item's
    record position in its file, ``text``, and the item's instruction, input and output)
    and each file's fingerprint."""
    from .embed import embedding_text
    from .io import read_dataset

    if not paths:
        raise InputError("give at least one eval file (--eval FILE ...)", field="eval")
    frames, prints = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise InputError("eval file not found", file=str(path), field="eval")
        samples = read_dataset(path).samples
        frame = pd.DataFrame({"eval_file": path.name,
                              "eval_row": samples["source_row"].to_numpy(np.int64),
                              "text": embedding_text(samples, "full")})
        for col in ("instruction", "input", "output"):
            frame[col] = samples[col].to_numpy() if col in samples else ""
        frames.append(frame)
        prints.append({"file": path.name, "sha256": sha256_file(path), "items": len(samples)})
    items = pd.concat(frames, ignore_index=True)
    if items.empty:
        raise InputError("the eval files hold no items", file=str(paths[0]), field="eval")
    return items, prints


def ngram_overlap(texts: Sequence[str], eval_texts: Sequence[str], n: int = 13,
                  progress: Progress | None = None) -> pd.DataFrame:
    """For each of ``texts``: the eval item (position in ``eval_texts``, -1 for none) whose
    word n-grams it covers most, the share covered, the shared count and up to
    ``KEEP_NGRAMS`` shared n-grams (in the item's order). Ties: the earlier eval item."""
    index: dict[str, list[int]] = {}
    sizes = np.zeros(len(eval_texts), dtype=np.int64)
    ordered: list[list[str]] = []
    for j, text in enumerate(eval_texts):
        grams = word_ngrams(normalised_words(text), n)
        sizes[j] = len(grams)
        words = normalised_words(text)
        seen = [" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))]
        ordered.append(list(dict.fromkeys(g for g in seen if g in grams)))
        for g in grams:
            index.setdefault(g, []).append(j)
    best_item = np.full(len(texts), -1, dtype=np.int64)
    coverage = np.zeros(len(texts))
    matches = np.zeros(len(texts), dtype=np.int64)
    shown: list[str] = []
    for i, text in enumerate(texts):
        counts: dict[int, int] = {}
        grams = word_ngrams(normalised_words(text), n)
        for g in grams:
            for j in index.get(g, ()):
                counts[j] = counts.get(j, 0) + 1
        if counts:
            j = max(counts, key=lambda k: (counts[k] / sizes[k], -k))
            best_item[i], matches[i], coverage[i] = j, counts[j], counts[j] / sizes[j]
            shown.append(json.dumps([g for g in ordered[j] if g in grams][:KEEP_NGRAMS],
                                    ensure_ascii=False))
        else:
            shown.append("[]")
        if i % 2048 == 0:
            report(progress, i, len(texts), f"{n}-gram overlap")
    report(progress, len(texts), len(texts), "")
    return pd.DataFrame({"item": best_item, "coverage": coverage, "matches": matches,
                         "ngrams": shown})


def nearest_items(vectors: np.ndarray, eval_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and cosine of the most similar eval vector for every row (unit vectors)."""
    import faiss

    index = faiss.IndexFlatIP(eval_vectors.shape[1])
    index.add(np.ascontiguousarray(eval_vectors, dtype=np.float32))
    found, sims = [], []
    for lo in range(0, len(vectors), FAISS_BATCH):
        s, i = index.search(np.ascontiguousarray(vectors[lo:lo + FAISS_BATCH], np.float32), 1)
        found.append(i[:, 0])
        sims.append(s[:, 0])
    if not found:
        return np.empty(0, np.int64), np.empty(0)
    return np.concatenate(found).astype(np.int64), np.concatenate(sims).astype(np.float64)


def _embedding_setup(ws: Workspace) -> tuple[np.ndarray, dict]:
    """The workspace embeddings (refused when made from other samples) and their model and
    text recipe, which the eval items are embedded with."""
    meta = ws.meta(EMBEDDINGS) or {}
    if not ws.exists(EMBEDDINGS) or meta.get("key") is None:
        raise InputError("the embedding check needs the workspace embeddings; run `python -m "
                         f"core embed --workspace {ws.root}` or pass --no-embedding",
                         file=str(ws.root))
    if (meta.get("inputs") or {}).get("samples") != ws.samples_fingerprint():
        raise InputError("the embeddings were made from other samples; rerun `embed` (or "
                         "pass --no-embedding)", file=str(ws.path(EMBEDDINGS)))
    vectors = ws.embeddings(mmap=False)
    if len(vectors) != len(ws):
        raise InputError(f"embeddings.npy has {len(vectors)} rows for {len(ws)} samples; "
                         "rerun `embed`", file=str(ws.path(EMBEDDINGS)))
    return vectors, {"model_path": meta.get("model_path"), "recipe": meta.get("recipe", "full"),
                     "model": (meta.get("params") or {}).get("model")}


def _eval_embeddings(ws: Workspace, items: pd.DataFrame, prints: list[dict], setup: dict,
                     progress: Progress | None) -> np.ndarray:
    """The eval items embedded like the workspace rows, cached under the files' sha256."""
    from .embed import embed_texts, embedding_text

    texts = embedding_text(items, setup["recipe"])
    step = Step(EVAL_EMBEDDINGS, {"model": setup["model"], "recipe": setup["recipe"]},
                external={"eval": prints}, codec=NPY)
    return ws.run_whole(step, lambda: embed_texts(texts, model=setup["model_path"],
                                                  progress=progress)).value


def run_decontaminate(ws: Workspace, eval_paths: Sequence[str | Path], ngram: int = 13,
                      cosine: float | None = COSINE_THRESHOLD, min_coverage: float = 0.0,
                      progress: Progress | None = None, force: bool = False) -> StepResult:
    """Write ``scores/decontam.parquet`` (module notes); ``cosine`` None skips the embedding
    check."""
    from .embed import embedding_text

    if ngram not in NGRAM_SIZES:
        raise InputError(f"--ngram must be one of {', '.join(map(str, NGRAM_SIZES))}, not "
                         f"{ngram}", field="ngram")
    if cosine is not None and not 0.0 < float(cosine) <= 1.0:
        raise InputError(f"the cosine threshold must be above 0 and at most 1, not {cosine}",
                         field="cosine")
    if not 0.0 <= float(min_coverage) <= 1.0:
        raise InputError(f"min coverage must be between 0 and 1, not {min_coverage}",
                         field="min_coverage")
    items, prints = read_eval_sets(eval_paths)
    samples = ws.samples(["sample_id", "instruction", "input", "output"])
    samples = samples.sort_values("sample_id").reset_index(drop=True)
    row_vectors, setup = _embedding_setup(ws) if cosine is not None else (None, None)
    params = {"ngram": int(ngram), "min_coverage": float(min_coverage),
              "cosine": None if cosine is None else float(cosine),
              "text": "instruction + input + output, NFKC casefold words",
              "embed_model": setup["model"] if setup else None}
    inputs = {"samples": SAMPLES, **({"embeddings": EMBEDDINGS} if setup else {})}

    def compute() -> pd.DataFrame:
        overlap = ngram_overlap(embedding_text(samples, "full"), items["text"].tolist(),
                                int(ngram), progress)
        has = overlap["item"].to_numpy() >= 0
        by_ngram = has & (overlap["coverage"].to_numpy() >= float(min_coverage))
        pick = overlap["item"].clip(lower=0).to_numpy()
        frame = pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(np.int64)})
        frame["by_ngram"] = by_ngram
        frame["ngram_coverage"] = overlap["coverage"].to_numpy()
        frame["ngram_matches"] = overlap["matches"].to_numpy()
        frame["eval_file"] = np.where(has, items["eval_file"].to_numpy()[pick], None)
        frame["eval_row"] = pd.Series(items["eval_row"].to_numpy()[pick],
                                       dtype="Int64").where(has, pd.NA)
        frame["matched_ngrams"] = overlap["ngrams"].to_numpy()
        if setup is not None:
            vectors = _eval_embeddings(ws, items, prints, setup, progress)
            nearest, sims = nearest_items(row_vectors, vectors)
            frame["eval_cosine"] = sims
            frame["by_embedding"] = sims >= float(cosine)
            frame["nearest_eval_file"] = items["eval_file"].to_numpy()[nearest]
            frame["nearest_eval_row"] = items["eval_row"].to_numpy()[nearest].astype(np.int64)
        else:
            frame["eval_cosine"] = np.nan
            frame["by_embedding"] = False
        frame.insert(1, "contaminated", frame["by_ngram"] | frame["by_embedding"])
        return frame

    def summary(frame: pd.DataFrame) -> dict:
        return {"rows": int(len(frame)), "contaminated": int(frame["contaminated"].sum()),
                "by_ngram": int(frame["by_ngram"].sum()),
                "by_embedding": int(frame["by_embedding"].sum()),
                "eval_items": int(len(items))}

    step = Step(DECONTAM_SCORE, params, inputs=inputs, external={"eval": prints},
                meta={"eval_files": [str(Path(p).resolve()) for p in eval_paths]})
    return ws.run_whole(step, compute, force=force, summary=summary)


def check_export(ws: Workspace, sample_ids: np.ndarray, allow: bool = False) -> int:
    """Refuse (``InputError``) an export holding rows flagged in ``scores/decontam.parquet``
    unless ``allow``; returns how many flagged rows are exported. A result made from other
    samples is refused too: it cannot say which rows are clean."""
    if DECONTAM_NAME not in ws.score_names():
        return 0
    meta = ws.score_meta(DECONTAM_NAME) or {}
    if not allow and (meta.get("inputs") or {}).get("samples") != ws.samples_fingerprint():
        raise InputError("the decontamination result was made from other samples; rerun "
                         "`python -m core decontaminate` or pass --allow-contaminated",
                         file=str(ws.path(DECONTAM_SCORE)))
    flagged = ws.read_score(DECONTAM_NAME, ["sample_id", "contaminated"])
    hit = np.intersect1d(flagged.loc[flagged["contaminated"].fillna(False).astype(bool),
                                     "sample_id"].to_numpy(np.int64), sample_ids)
    if len(hit) and not allow:
        raise InputError(f"{len(hit):,} of the rows to export overlap the eval set (first: "
                         f"sample {int(hit[0])}); drop them with the recipe filter "
                         "exclude_contaminated or pass --allow-contaminated",
                         file=str(ws.path(DECONTAM_SCORE)), field="contaminated")
    return int(len(hit))


# ----- CLI -----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``decontaminate`` to the ``python -m core`` argument parser."""
    from .args import positive_int, probability, ratio

    p = subparsers.add_parser(
        "decontaminate", help="flag rows that overlap an eval set (n-grams, embeddings)",
        description="Write scores/decontam.parquet: for each row the eval item whose word "
                    "n-grams it covers most (share, count, the n-grams) and the nearest eval "
                    "item by embedding. Filter with the recipe step exclude_contaminated; "
                    "export refuses flagged rows unless --allow-contaminated.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    p.add_argument("--eval", required=True, nargs="+", metavar="FILE",
                   help="eval set file(s), any import format")
    p.add_argument("--ngram", type=positive_int, choices=NGRAM_SIZES, default=13,
                   help="words per n-gram (13, default, or 8)")
    p.add_argument("--min-coverage", type=probability, default=0.0,
                   help="flag only when this share of an eval item's n-grams is in the row "
                        "(default 0: any shared n-gram)")
    p.add_argument("--cosine", type=ratio, default=COSINE_THRESHOLD,
                   help="embedding cosine threshold (default 0.9)")
    p.add_argument("--no-embedding", action="store_true",
                   help="skip the embedding check (no embeddings needed)")
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    p.set_defaults(func=_cli_decontaminate)


def _cli_decontaminate(args) -> int:
    from .progress import TqdmProgress
    from .text import terminal_safe

    ws = Workspace.open(args.workspace)
    start = time.perf_counter()
    with TqdmProgress("decontaminate", unit="row") as bar:
        result = run_decontaminate(ws, args.eval, ngram=args.ngram,
                                   cosine=None if args.no_embedding else args.cosine,
                                   min_coverage=args.min_coverage, progress=bar,
                                   force=args.force)
    m = result.meta
    what = "up to date" if result.cached else "wrote"
    print(terminal_safe(f"{what} {ws.path(DECONTAM_SCORE)}: {m.get('contaminated', 0):,} of "
                        f"{m.get('rows', 0):,} rows overlap {m.get('eval_items', 0):,} eval "
                        f"items (n-grams {m.get('by_ngram', 0):,}, embeddings "
                        f"{m.get('by_embedding', 0):,}) in {time.perf_counter() - start:.1f}s"))
    return 0
