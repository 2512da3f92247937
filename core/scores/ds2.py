"""DS2 score curation: find and repair noisy LLM ratings from neighbour consensus.

Method (docs/methods.md §3; Pang et al., "Improving Data Efficiency via Curating LLM-Driven
Rating Systems", arXiv 2410.10877; reference code UCSC-REAL/DS2 ``score_curation/``, itself
built on HOC, Zhu et al. ICML'21, and SimiFeat, Zhu et al. ICML'22):

1. ``ratings.to_classes`` maps raw ratings onto K integer classes (the DS2 1–10 scale
   becomes 6).
2. ``hoc.TransitionEstimator`` estimates T[i, j] = P(rated j | true i) and the true-class
   prior p without labels, from how often a sample and its two nearest neighbours agree.
3. ``simifeat.detect_misratings`` (SimiFeat-rank) scores each rating by how little its
   neighbours vote for it, flags each class's expected noisy share, and suggests a
   replacement class.
4. ``curate`` (here) ties these together with the long-tail score; ``run_curate`` is the
   ``curate`` step of a workspace. The dual sort that picks a budget from the result is
   ``core.select.dual_sort``.

Deliberate differences from the reference (the others are named in the module where they
happen): the kNN graph comes from the workspace (self excluded), computed once, where the
reference concatenates the dataset with itself and recomputes a GPU fp16 kNN per subsample;
everything is seeded, so the same seed gives identical output.

Missing ratings (NaN) are class −1: they are never flagged, never vote, never count in the
consensus, and their ``curated`` value stays −1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..names import check_score_owner, ds2_score_name
from ..progress import Progress, report
from ..raters.run import rating_score_name, ratings_for_curation
from ..workspace import KNN, SAMPLES, Step, sha256_file
from .hoc import TransitionEstimator, check_graph
from .ratings import MISSING, SCALES, to_classes
from .simifeat import check_detector, class_noise_rates, detect_misratings, long_tail_score

VERSION = "ds2-2"  # bump when the numbers this module produces change (2: self-vote weight
#                    from the first two voting neighbours, as docta's in-subsample kNN)
COLUMNS = ("rating_class", "flagged", "noisy_avg", "suggested", "confidence", "curated",
           "long_tail")


def curate(ratings, knn_indices, knn_similarities, k: int = 10, seed: int = 0, *,
           num_classes: int | None = None, rounds: int = 50,
           hoc_sample_size: int | None = 50_000, steps: int = 1500, lr: float = 0.1,
           epochs: int = 51, sample_fraction: float = 0.9, min_confidence: float = 0.5,
           self_vote: bool = False, detector: str = "rank", sample_ids=None,
           progress: Progress | None = None) -> tuple[pd.DataFrame, dict]:
    """DS2 score curation of one rater's classes (−1 = missing) over a kNN graph.

    The reference variants (docs/methods.md §3): ``self_vote`` (the sample votes for
    itself in SimiFeat), ``detector`` ``"rank"`` (SimiFeat-rank, the paper's) or ``"mv"``
    (majority vote), and ``min_confidence``, the confidence a flagged rating needs before
    its suggestion replaces it.

    Returns a frame in sample order with ``sample_id`` and ``rating_class, flagged,
    noisy_avg, suggested, confidence, curated, long_tail`` (missing ratings: rating_class
    −1, not flagged, noisy_avg/confidence NaN, suggested and curated −1), and a report
    with T, p, raw and curated class histograms, noise rates, parameters and warnings.
    """
    ratings = np.asarray(ratings, dtype=np.int64)
    n = len(ratings)
    if n == 0:
        raise InputError("no samples to curate")
    check_variant(detector, min_confidence)
    if ratings.min() < MISSING:
        raise InputError("rating classes must be ≥ 0 (−1 for missing); map them with "
                         "to_classes first")
    k_classes = num_classes or max(int(ratings.max()) + 1, 2)
    if ratings.max() >= k_classes:
        raise InputError(f"rating class {int(ratings.max())} does not fit "
                         f"num_classes={k_classes}")
    idx, sims, usable = check_graph(ratings, knn_indices, knn_similarities)
    if sims is None:
        raise InputError("kNN similarities are required")
    rated = ratings >= 0
    hist = np.bincount(ratings[rated], minlength=k_classes)
    warnings = _warnings(ratings, hist, usable, k)
    params = dict(k=k, seed=seed, num_classes=k_classes, rounds=rounds,
                  hoc_sample_size=hoc_sample_size, steps=steps, lr=lr, epochs=epochs,
                  sample_fraction=sample_fraction, min_confidence=min_confidence,
                  self_vote=self_vote, detector=detector, version=VERSION)
    total = rounds + epochs + 1
    stage = (lambda offset: None if progress is None else
             (lambda done, _total, note: progress(offset + done, total, note)))

    estimator = TransitionEstimator(k_classes, rounds, hoc_sample_size, steps, lr, seed)
    estimator.fit(ratings, knn_indices, progress=stage(0))
    report(progress, rounds + 1, total, "fitting T")
    rho = class_noise_rates(estimator.transition_matrix_, estimator.prior_, hist)
    detection = detect_misratings(ratings, knn_indices, knn_similarities, rho, k, epochs,
                                  sample_fraction, seed, self_vote, stage(rounds + 1),
                                  detector=detector)
    change = detection["flagged"].to_numpy() & \
        (detection["confidence"].to_numpy() >= min_confidence)
    curated = np.where(change, detection["suggested"].to_numpy(), ratings)
    frame = pd.DataFrame({
        "sample_id": np.arange(n) if sample_ids is None else np.asarray(sample_ids),
        "rating_class": ratings,
        "flagged": detection["flagged"].to_numpy(),
        "noisy_avg": detection["noisy_avg"].to_numpy(),
        "suggested": detection["suggested"].to_numpy(),
        "confidence": detection["confidence"].to_numpy(),
        "curated": curated.astype(np.int64),
        "long_tail": long_tail_score(knn_similarities, k, knn_indices),
    })
    flagged_per_class = np.bincount(ratings[frame["flagged"].to_numpy()],
                                     minlength=k_classes)
    changed_per_class = np.bincount(ratings[change], minlength=k_classes)
    result = {
        "num_classes": k_classes,
        "transition_matrix": _rounded(estimator.transition_matrix_),
        "prior": _rounded(estimator.prior_),
        "fit_loss": float(estimator.loss_),
        "histogram_raw": hist.tolist(),
        "histogram_curated": np.bincount(curated[rated], minlength=k_classes).tolist(),
        "noise_rates": [None if np.isnan(r) else float(r) for r in rho],
        "flagged_per_class": flagged_per_class.tolist(),
        "changed_per_class": changed_per_class.tolist(),
        "rated": int(rated.sum()),
        "missing": int((~rated).sum()),
        "flagged": int(frame["flagged"].sum()),
        "changed": int(change.sum()),
        "parameters": params,
        "seed": seed,
        "warnings": warnings,
    }
    report(progress, total, total, "done")
    return frame, result


def check_variant(detector: str, min_confidence: float) -> None:
    """Refuse an unknown detector or a confidence outside [0, 1] before any work starts."""
    check_detector(detector)
    if not (isinstance(min_confidence, (int, float)) and 0.0 <= min_confidence <= 1.0):
        raise InputError(f"min_confidence must be between 0 and 1, not {min_confidence!r}",
                         field="min_confidence")


def _rounded(a) -> list:
    """Plain floats for JSON (full precision: later steps recompute from these)."""
    return np.asarray(a, dtype=np.float64).tolist()


def _warnings(ratings, hist, usable, k) -> list[str]:
    out = []
    rated = int((ratings >= 0).sum())
    if rated < 2000:
        out.append(f"only {rated} rated samples: the transition matrix estimate is rough "
                   "(it needs thousands; ≈ 0.09 max error at 6,000, ≈ 0.05 at 20,000)")
    absent = [c for c, h in enumerate(hist) if h == 0]
    if absent:
        out.append(f"no sample is rated with class {', '.join(map(str, absent))}: T rows for "
                   "absent classes are guesses")
    if (hist > 0).sum() == 1:
        out.append("all rated samples have the same class: there is nothing to curate")
    have = usable.sum(axis=1)
    if have.size and have.min() < k:
        out.append(f"some samples have only {int(have.min())} neighbours (k={k}); the kNN "
                   f"graph holds {usable.shape[1]} columns. Rerun `neighbors` with a larger k "
                   "(≥ k + 5 recommended: votes use neighbours inside each 90 % subsample)")
    return out



def rater_agreement(ratings: pd.DataFrame, curated: pd.DataFrame | None = None
                    ) -> pd.DataFrame:
    """Pairwise exact agreement and Cohen's kappa between raters (columns), on the rows
    both rated (−1 or NaN = missing). With ``curated`` (same columns), adds the same two
    numbers after curation as ``*_curated`` columns.
    """
    def pairs(frame: pd.DataFrame) -> dict:
        out = {}
        cols = list(frame.columns)
        for i, a in enumerate(cols):
            for b in cols[i + 1:]:
                x = pd.to_numeric(frame[a], errors="coerce").to_numpy(np.float64)
                y = pd.to_numeric(frame[b], errors="coerce").to_numpy(np.float64)
                both = ~np.isnan(x) & ~np.isnan(y) & (x >= 0) & (y >= 0)
                out[(a, b)] = (int(both.sum()), *_agreement(x[both], y[both]))
        return out

    before = pairs(ratings)
    rows = [{"rater_a": a, "rater_b": b, "n": n, "exact_agreement": agree, "kappa": kappa}
            for (a, b), (n, agree, kappa) in before.items()]
    if curated is not None:
        after = pairs(curated[list(ratings.columns)])
        for row in rows:
            _, agree, kappa = after[(row["rater_a"], row["rater_b"])]
            row.update(exact_agreement_curated=agree, kappa_curated=kappa)
    return pd.DataFrame(rows)


def _agreement(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(x) == 0:
        return float("nan"), float("nan")
    observed = float(np.mean(x == y))
    labels = np.union1d(x, y)
    px = np.array([np.mean(x == c) for c in labels])
    py = np.array([np.mean(y == c) for c in labels])
    expected = float(px @ py)
    kappa = float("nan") if expected == 1.0 else (observed - expected) / (1.0 - expected)
    return observed, kappa


# ----- the workspace step ----------------------------------------------------------------
@dataclass
class CurationRun:
    """What ``run_curate`` returns: the frame and its sidecar (``meta``), the score's name
    and where it is (``parquet``, for the CLI to print; other code reads the result with
    ``ws.read_score`` / ``ws.score_meta``)."""

    frame: pd.DataFrame
    meta: dict
    parquet: Path
    name: str
    cached: bool


def _parse_scale(scale):
    if isinstance(scale, str) and scale.strip().startswith("{"):
        try:
            return json.loads(scale)
        except json.JSONDecodeError as err:
            raise InputError(f"the mapping is not valid JSON: {err}", field="mapping")
    return scale


def _ratings_from_samples(ws, column: str) -> tuple[pd.Series, np.ndarray]:
    import pyarrow.parquet as pq

    names = pq.read_schema(ws.path("samples.parquet")).names
    if column in names:
        frame = ws.samples(columns=["sample_id", "source_row", column])
        return frame[column], frame["source_row"].to_numpy()
    if "record" in names:
        frame = ws.samples(columns=["sample_id", "source_row", "record"])
        values = []
        for rec in frame["record"]:
            rec = json.loads(rec) if isinstance(rec, str) else rec
            values.append(rec.get(column) if isinstance(rec, dict) else None)
        if any(v is not None for v in values):
            return pd.Series(values, dtype=object), frame["source_row"].to_numpy()
    extra = [c for c in names if c not in ("sample_id", "source_row", "instruction", "input",
                                           "output", "record", "duplicate_of", "source")]
    raise InputError(f"no rating column '{column}' in the samples (other columns: "
                     f"{', '.join(extra) or 'none'}); pass --ratings-file for ratings kept "
                     "elsewhere", field=column)


def _ratings_from_file(ws, path: str | Path, column: str) -> tuple[pd.Series, np.ndarray]:
    """Ratings from a JSONL/JSON/CSV file keyed by ``sample_id`` or ``source_row``."""
    path = Path(path)
    if not path.exists():
        raise InputError("ratings file not found", file=str(path))
    try:
        if path.suffix.lower() in (".csv", ".tsv"):
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        else:
            table = pd.read_json(path, lines=path.suffix.lower() in (".jsonl", ".ndjson"),
                                 dtype=False)
    except ValueError as err:
        raise InputError(f"cannot read the ratings file: {err}", file=str(path))
    if column not in table:
        raise InputError(f"no column '{column}' (columns: {', '.join(map(str, table))})",
                         file=str(path), field=column)
    key = next((c for c in ("sample_id", "source_row") if c in table), None)
    if key is None:
        raise InputError("the ratings file needs a sample_id or source_row column to join on",
                         file=str(path))
    cols = ["sample_id", "source_row"] + (["source"] if "source" in table else [])
    samples = ws.samples(columns=cols)
    join = [key] + (["source"] if key == "source_row" and "source" in table else [])
    if key == "source_row" and "source" not in table and "source" in samples \
            and samples["source"].nunique() > 1:
        raise InputError("the workspace pools several source files, so source_row is "
                         "ambiguous: add a source column or key the ratings by sample_id",
                         file=str(path))
    dup = table.duplicated(join)
    if dup.any():
        raise InputError(f"{key} {table.loc[dup.idxmax(), key]} appears twice",
                         file=str(path), row=int(dup.idxmax()), field=key)
    merged = samples.merge(table[join + [column]], on=join, how="left", validate="1:1")
    unknown = ~table.set_index(join).index.isin(samples.set_index(join).index)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise InputError(f"{key} {table[key].iloc[row]} is not in the workspace",
                         file=str(path), row=row, field=key)
    merged = merged.sort_values("sample_id")
    return merged[column].reset_index(drop=True), merged["source_row"].to_numpy()


def run_curate(ws, rating_column: str | None = None, scale=None, seed: int = 0, k: int = 10,
               ratings_file: str | Path | None = None, progress: Progress | None = None,
               force: bool = False, rater: str | None = None, self_vote: bool = False,
               detector: str = "rank", min_confidence: float = 0.5, **options
               ) -> CurationRun:
    """Curate one rater's ratings in a workspace: ``scores/ds2_<column>.parquet`` + sidecar
    (the name is ``core.names.ds2_score_name``; the sidecar keeps the exact column).

    Ratings come from the samples column ``rating_column``, from ``ratings_file`` (JSONL,
    JSON or CSV keyed by ``sample_id`` or ``source_row``), or from a rater of ``core.raters``
    (``rater``: its ``overall`` ratings, scale ds2-10 by default, column ``rating_<rater>``).
    ``scale`` is a name from ``SCALES``, a mapping dict, or a JSON mapping string. The kNN
    graph is the workspace's (``neighbors`` step). Several raters = several calls.
    ``self_vote``, ``detector`` and ``min_confidence`` are the reference variants (see
    ``curate``); they and ``options`` (rounds, steps, epochs, ...) are part of the cache key.
    """
    scale = _parse_scale(scale)
    check_variant(detector, min_confidence)
    if (rating_column is None) == (rater is None):
        raise InputError("name the ratings: either a rating column or a rater")
    if rater is not None and ratings_file is not None:
        raise InputError("a rater's ratings come from the workspace; drop the ratings file")
    knn_indices, knn_similarities = ws.knn()
    if rater is not None:
        values = ratings_for_curation(ws, rater).reset_index(drop=True)
        source_rows = ws.samples(columns=["sample_id", "source_row"]).sort_values(
            "sample_id")["source_row"].to_numpy()
        rating_column = rating_score_name(rater)
        scale = "ds2-10" if scale is None else scale
        inputs, external = {"ratings": f"scores/{rating_column}.parquet"}, {}
    elif ratings_file is not None:
        values, source_rows = _ratings_from_file(ws, ratings_file, rating_column)
        inputs, external = {}, {"ratings": sha256_file(ratings_file)}
    else:
        values, source_rows = _ratings_from_samples(ws, rating_column)
        inputs, external = {"ratings": SAMPLES}, {}
    classes, mapping = to_classes(values, scale, field=rating_column, rows=source_rows)
    if len(classes) != len(knn_indices):
        raise InputError(f"the kNN graph has {len(knn_indices)} rows for {len(classes)} "
                         "samples; rerun `neighbors`")
    name = ds2_score_name(rating_column)
    if not force:
        check_score_owner(ws, rating_column)
    params = {"rating_column": rating_column, "scale": scale, "k": k, "seed": seed,
              "ratings_file": str(ratings_file) if ratings_file else None,
              "self_vote": bool(self_vote), "detector": detector,
              "min_confidence": float(min_confidence), "version": VERSION, **options}
    parquet = ws.path("scores", f"{name}.parquet")
    holder: dict = {}

    def compute():
        frame, result = curate(classes, knn_indices, knn_similarities, k=k, seed=seed,
                               num_classes=mapping["num_classes"], progress=progress,
                               self_vote=bool(self_vote), detector=detector,
                               min_confidence=float(min_confidence), **options)
        holder["report"] = result
        return frame

    def summary(frame):
        return {"rows": int(len(frame)), "mapping": mapping, **holder["report"]}

    step = Step(f"scores/{name}.parquet", params, inputs={**inputs, "knn": KNN},
                external=external)
    result = ws.run_whole(step, compute, force=force, summary=summary)
    return CurationRun(result.value, result.meta, parquet, name, result.cached)


# ----- CLI -------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    from ..args import positive_int, probability, seed
    from .simifeat import DETECTORS

    p = subparsers.add_parser(
        "curate", help="DS2: find and repair noisy LLM ratings from neighbour consensus",
        description="Estimate the rater's noise transition matrix (HOC), flag ratings that "
                    "disagree with their neighbours (SimiFeat-rank), suggest curated "
                    "ratings and a long-tail score. Needs `neighbors` first. Writes "
                    "scores/ds2_<column>.parquet and .json.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--rating-column", metavar="COL",
                       help="the rating column (in the samples or in --ratings-file)")
    which.add_argument("--rater", metavar="NAME",
                       help="a rater's ratings from `rate` (scores/rating_NAME; scale ds2-10 "
                            "unless --scale/--mapping says otherwise)")
    p.add_argument("--scale", choices=SCALES, default=None,
                   help="rating scale (default: classes for integer ratings)")
    p.add_argument("--mapping", metavar="JSON",
                   help="explicit {raw value: class} mapping, e.g. '{\"low\": 0, \"high\": 1}'")
    p.add_argument("--ratings-file", metavar="PATH",
                   help="JSONL/JSON/CSV with sample_id or source_row and the rating column")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours that vote (default 10)")
    p.add_argument("--self-vote", action="store_true",
                   help="reference variant: each sample votes for its own rating too (docta "
                        "knn.py: k votes counting itself, weight from its two nearest)")
    p.add_argument("--detector", choices=DETECTORS, default="rank",
                   help="rank (default, the paper's SimiFeat-rank: each class's expected noisy "
                        "share) or mv (flag whenever the neighbours' majority disagrees)")
    p.add_argument("--min-confidence", type=probability, default=0.5, metavar="X",
                   help="confidence in [0, 1] a flagged rating needs before its suggestion "
                        "replaces it (default 0.5)")
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    p.set_defaults(func=_cmd_curate)


def _cmd_curate(args) -> int:
    from ..progress import TqdmProgress
    from ..text import terminal_safe
    from ..workspace import Workspace

    if args.mapping and args.scale:
        raise InputError("give either --scale or --mapping, not both")
    scale = _parse_scale(args.mapping) if args.mapping else args.scale
    if args.mapping and not isinstance(scale, dict):
        raise InputError("--mapping must be a JSON object {raw value: class}", field="mapping")
    if args.ratings_file and Path(args.ratings_file).is_dir():
        raise InputError("is a folder; give the ratings file (JSONL, JSON or CSV)",
                         file=args.ratings_file, field="ratings_file")
    ws = Workspace.open(args.workspace)
    with TqdmProgress(desc="curate", unit="step") as bar:
        run = run_curate(ws, args.rating_column, scale=scale, seed=args.seed, k=args.k,
                         ratings_file=args.ratings_file, progress=bar, force=args.force,
                         rater=args.rater, self_vote=args.self_vote, detector=args.detector,
                         min_confidence=args.min_confidence)
    print(terminal_safe(format_summary(run.meta), keep_newlines=True))
    print(terminal_safe(f"wrote {run.parquet}") + (" (cached)" if run.cached else ""))
    return 0


def format_summary(meta: dict) -> str:
    """T as a small table plus flagged counts per class (for the CLI)."""
    T = np.asarray(meta["transition_matrix"])
    k = len(T)
    head = "true\\rated " + " ".join(f"{c:>6d}" for c in range(k))
    lines = ["Transition matrix T[true, rated]:", head]
    for i in range(k):
        lines.append(f"{i:>10d} " + " ".join(f"{x:6.3f}" for x in T[i]))
    lines.append("prior p: " + " ".join(f"{x:.3f}" for x in meta["prior"]))
    lines.append(f"{'class':>6} {'rated':>8} {'flagged':>8} {'changed':>8} {'curated':>8} "
                 f"{'noise':>6}")
    for c in range(k):
        rho = meta["noise_rates"][c]
        lines.append(f"{c:>6d} {meta['histogram_raw'][c]:>8d} "
                     f"{meta['flagged_per_class'][c]:>8d} {meta['changed_per_class'][c]:>8d} "
                     f"{meta['histogram_curated'][c]:>8d} "
                     f"{'-' if rho is None else format(rho, '.3f'):>6}")
    params = meta.get("parameters", {})
    lines.append(f"detector {params.get('detector', 'rank')}, self-vote "
                 f"{'on' if params.get('self_vote') else 'off'}, min confidence "
                 f"{params.get('min_confidence', 0.5)}")
    lines.append(f"flagged {meta['flagged']:,} of {meta['rated']:,} rated samples; "
                 f"{meta['changed']:,} ratings changed; {meta['missing']:,} missing")
    for w in meta.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)
