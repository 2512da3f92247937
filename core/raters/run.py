"""The ``rate`` step: ask a rater model for a DS2 rating of every sample, keep every answer.

``run_rate`` puts each sample through the DS2 rating prompt (``prompt.py``), asks a backend
(``backends.py``) through the response cache (``cache.py``: ``ratings/<rater>/responses.jsonl``
in the workspace, so a rerun never asks twice) and writes the rating column file
``scores/rating_<rater>.parquet`` (sample_id, rarity, complexity, informativeness, overall,
parse_error, request_error) through ``Workspace.run_chunked`` (docs/architecture.md). DS2
curation reads it with ``ratings_for_curation`` (``core.scores.ds2.run_curate(ws,
rater=...)``, the same call from the CLI and the app; docs/methods.md §3).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..progress import Progress, TqdmProgress
from ..workspace import SAMPLES, Step, StepResult, Workspace, now_iso
from .backends import LocalRater, OpenAIRater
from .cache import ResponseCache, ask_cached
from .prompt import FIELDS, PROMPT_VERSION, explain_rating, prompt_sha256, rating_prompt

RATING_PREFIX = "rating_"
RATINGS_DIR = "ratings"
RESPONSES = "responses.jsonl"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
COLUMNS = ("sample_id", *FIELDS, "parse_error", "request_error")


def check_rater_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"rater name {name!r} must be letters, digits, '-' or '_' (no dots; "
                         "at most 64 characters), e.g. gpt4o-mini", field="name")
    return name


def rating_score_name(rater_name: str) -> str:
    """The score name of a rater's ratings: ``rating_<rater>``."""
    return RATING_PREFIX + check_rater_name(rater_name)


def rating_path(ws: Workspace, rater_name: str) -> Path:
    """``scores/rating_<rater>.parquet``: what DS2 curation reads (column ``overall``)."""
    return ws.path("scores", rating_score_name(rater_name) + ".parquet")


def responses_path(ws: Workspace, rater_name: str) -> Path:
    return ws.path(RATINGS_DIR, check_rater_name(rater_name), RESPONSES)


def rater_names(ws: Workspace) -> list[str]:
    """Raters with a rating file in ``ws``."""
    return [s[len(RATING_PREFIX):] for s in ws.score_names() if s.startswith(RATING_PREFIX)]


UNPARSEABLE = "unparseable"


def ratings_for_curation(ws: Workspace, rater_name: str) -> pd.Series:
    """A rater's overall ratings for DS2, one per sample in ``sample_id`` order.

    A parsed answer gives its number; an answer that could not be read gives the string
    ``"unparseable"`` (DS2 puts it in class 0 under the ds2-10 scale, as its reference does);
    a sample not rated, or whose request failed, gives NaN (missing: not a rating at all).
    """
    if rating_score_name(rater_name) not in ws.score_names():
        raise InputError(f"no ratings from rater {rater_name!r} yet; run `python -m core rate "
                         f"--workspace {ws.root} --name {rater_name} ...`",
                         file=str(rating_path(ws, rater_name)))
    frame = ws.read_score(rating_score_name(rater_name))[["sample_id", "overall",
                                                           "parse_error"]]
    values = frame["overall"].astype(object)
    values[frame["parse_error"].notna()] = UNPARSEABLE
    ids = np.sort(ws.samples(["sample_id"])["sample_id"].to_numpy(np.int64))
    out = pd.Series(values.to_numpy(), index=frame["sample_id"].to_numpy(np.int64),
                    dtype=object).reindex(ids)
    out.index.name = "sample_id"
    return out.rename("overall")


def _row(sample_id: int, content: str | None, error: str | None) -> dict:
    row = {"sample_id": int(sample_id), **{f: float("nan") for f in FIELDS},
           "parse_error": None, "request_error": error}
    if error is None:
        parsed = explain_rating(content)
        if parsed.rating is not None:
            row.update(parsed.rating)
        else:
            row["parse_error"] = parsed.error
    return row


def run_rate(ws: Workspace, backend, rater_name: str, sample_ids: Sequence[int] | None = None,
             progress: Progress | None = None, chunk_size: int = 128,
             retry_errors: bool = True, force: bool = False) -> StepResult:
    """Rate samples of ``ws`` with ``backend`` into ``scores/rating_<rater_name>.parquet``.

    ``sample_ids=None`` rates every sample; a later call with more ids extends the file.
    Answers are cached in ``ratings/<rater_name>/responses.jsonl``, so a killed or cancelled
    run resumes without asking twice. Rows whose request failed (``request_error``) are asked
    again on the next run unless ``retry_errors=False``. The sidecar records the backend,
    model, endpoint (without secrets), prompt version and hash, and the counts.
    """
    score = rating_score_name(rater_name)
    name = f"scores/{score}.parquet"
    samples = ws.samples(["sample_id", "instruction", "input", "output"])
    samples = samples.set_index("sample_id", drop=False).sort_index()
    if sample_ids is None:
        wanted = samples.index.to_numpy(np.int64)
    else:
        wanted = np.asarray(sorted({int(i) for i in sample_ids}), dtype=np.int64)
        missing = np.setdiff1d(wanted, samples.index.to_numpy(np.int64))
        if len(missing):
            raise InputError(f"{len(missing)} sample ids are not in the workspace (first: "
                             f"{int(missing[0])})", file=str(ws.root), field="sample_id")
    if chunk_size < 1:
        raise InputError("chunk size must be at least 1", field="chunk_size")

    identity = backend.identity()
    params = {"prompt_version": PROMPT_VERSION, "prompt_sha256": prompt_sha256(), **identity}
    step = Step(name, params, inputs={"samples": SAMPLES},
                meta={"rater": rater_name, "backend": backend.describe(),
                      "prompt_version": PROMPT_VERSION,
                      "prompt_sha256": prompt_sha256(), "scale": "1-10 (DS2)",
                      "responses": str(Path(RATINGS_DIR, rater_name, RESPONSES)),
                      "unparsed": "overall is NaN with the reason in parse_error; for DS2 "
                                  "it is 'unparseable' = class 0 under ds2-10, as in the "
                                  "reference",
                      "request_failed": "overall is NaN with the error in request_error: "
                                        "not a rating; rerun to ask again",
                      "ds2": {"rating_column": "overall", "scale": "ds2-10",
                              "values": "core.raters.run.ratings_for_curation(ws, rater)"}})
    if not force and retry_errors:
        stored = ws.stored_rows(step, ["request_error"])
        failed = stored.loc[stored["request_error"].notna(), "sample_id"] \
            if "request_error" in stored else stored["sample_id"].iloc[:0]
        if len(failed):
            # Recompute everything stored plus what is asked: answers come from the cache,
            # only the failed requests go out again.
            wanted = np.union1d(wanted, stored["sample_id"].to_numpy(np.int64))
            force = True

    cache = ResponseCache(responses_path(ws, rater_name))
    stats = {"requests": 0, "cached": 0, "attempts": 0, "request_errors": 0}

    def compute(chunk_ids: np.ndarray, chunk_progress) -> pd.DataFrame:
        rows = samples.loc[chunk_ids]
        messages = [rating_prompt(q, i, a) for q, i, a in
                    zip(rows["instruction"], rows["input"], rows["output"])]
        answers = ask_cached(backend, messages, cache,
                             lambda k: {"sample_id": int(chunk_ids[k]),
                                        "prompt_version": PROMPT_VERSION},
                             chunk_progress, stats)
        out = pd.DataFrame([_row(sid, *answers[k]) for k, sid in enumerate(chunk_ids)],
                           columns=list(COLUMNS))
        # one text dtype for the reasons, so chunks without any reason concatenate cleanly
        return out.astype({"parse_error": "str", "request_error": "str"})

    start = time.perf_counter()

    def summary(frame: pd.DataFrame) -> dict:
        return {"counts": {"rows": int(len(frame)),
                           "parsed": int(frame["overall"].notna().sum()),
                           "unparsed": int(frame["parse_error"].notna().sum()),
                           "request_errors": int(frame["request_error"].notna().sum())},
                "last_run": {**stats, "duration_s": round(time.perf_counter() - start, 3),
                             "finished": now_iso()}}

    return ws.run_chunked(step, wanted, compute, chunk_size=chunk_size, progress=progress,
                          force=force, summary=summary)


# ----- CLI -----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``rate`` to the ``python -m core`` argument parser."""
    from ..args import positive_int, seed

    p = subparsers.add_parser(
        "rate", help="rate samples with an LLM (DS2 prompt; OpenAI-compatible API or local)",
        description="Ask an LLM for DS2's Rarity/Complexity/Informativeness/Overall (1-10) "
                    "rating of each sample; writes scores/rating_NAME.parquet for DS2 "
                    "curation. Answers are cached in ratings/NAME/responses.jsonl, so a rerun "
                    "resumes and never pays for the same answer twice.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    p.add_argument("--name", required=True,
                   help="rater name (letters, digits, - or _): the output is "
                        "scores/rating_NAME.parquet")
    add_backend_arguments(p, "--backend", "default 128 for openai as in DS2, 60 for local")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sample", type=positive_int, metavar="N",
                       help="rate a random N samples")
    which.add_argument("--limit", type=positive_int, metavar="N", help="rate the first N samples")
    p.add_argument("--seed", type=seed, default=0, help="seed for --sample (default 0)")
    p.add_argument("--chunk-size", type=positive_int, default=128,
                   help="rows per chunk of the rating file (answers are cached one by one)")
    p.add_argument("--no-retry-errors", action="store_true",
                   help="keep failed requests from earlier runs instead of asking again")
    p.add_argument("--force", action="store_true",
                   help="rebuild the rating file (cached answers are still reused)")
    p.set_defaults(func=_cli_rate)


def add_backend_arguments(p, kind_flag: str, tokens_default: str) -> None:
    """The flags that configure a backend (``make_backend``), shared by every command that
    asks one (``rate --backend``, ``reflect --teacher``)."""
    from ..args import non_negative_int, positive_float, positive_int

    p.add_argument(kind_flag, choices=["openai", "local"], required=True,
                   help="openai = any OpenAI-compatible API; local = the small offline LM")
    p.add_argument("--base-url", default="https://api.openai.com/v1",
                   help="API base URL, up to /v1 (openai backend)")
    p.add_argument("--model", default=None,
                   help="model name for the API (required with the openai backend), or a "
                        "local Hugging Face folder (local backend; default "
                        "SmolLM2-135M-Instruct)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key ('' for none)")
    p.add_argument("--concurrency", type=positive_int, default=8,
                   help="requests at once (openai)")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds per request (openai)")
    p.add_argument("--max-retries", type=non_negative_int, default=5,
                   help="retries per request (openai)")
    p.add_argument("--max-tokens", type=positive_int, default=None,
                   help=f"answer length limit in tokens ({tokens_default})")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads while generating (local; 1 is faster on a busy CPU)")


def make_backend(kind: str, args, openai_tokens: int, local_tokens: int,
                 flag: str = "--backend"):
    """The backend the ``add_backend_arguments`` flags describe."""
    if kind == "openai":
        if not args.model:
            raise InputError(f"--model is required with {flag} openai (e.g. gpt-4o-mini)",
                             field="model")
        return OpenAIRater(args.base_url, args.model, api_key_env=args.api_key_env,
                           concurrency=args.concurrency, timeout=args.timeout,
                           max_retries=args.max_retries,
                           max_tokens=args.max_tokens or openai_tokens)
    return LocalRater(args.model, max_new_tokens=args.max_tokens or local_tokens,
                      threads=args.threads)


def _cli_rate(args) -> int:
    ws = Workspace.open(args.workspace)
    check_rater_name(args.name)
    backend = make_backend(args.backend, args, openai_tokens=128, local_tokens=60)
    ids = ws.pick_sample_ids(args.sample, args.seed, args.limit)
    with TqdmProgress(f"rate {args.name}", unit="sample") as bar:
        result = run_rate(ws, backend, args.name, sample_ids=ids, progress=bar,
                          chunk_size=args.chunk_size, retry_errors=not args.no_retry_errors,
                          force=args.force)
    frame = result.value
    counts = {"parsed": int(frame["overall"].notna().sum()),
              "unparsed": int(frame["parse_error"].notna().sum()),
              "errors": int(frame["request_error"].notna().sum())}
    run = (result.meta or {}).get("last_run", {})
    from ..text import terminal_safe

    what = "up to date" if result.cached else "wrote"
    print(terminal_safe(f"{what} {rating_path(ws, args.name)}: {len(frame):,} rows; parsed "
                        f"{counts['parsed']:,}, unparsed {counts['unparsed']:,}, request "
                        f"errors {counts['errors']:,}"))
    if not result.cached:
        print(f"  requests sent {run.get('requests', 0):,}, answers from cache "
              f"{run.get('cached', 0):,}")
    if counts["errors"]:
        print("  failed requests are kept as errors; rerun the same command to ask again")
    return 0
