"""IFD and r-IFD: how much an instruction helps a model predict its answer, and back.

- IFD (Cherry LLM, arXiv 2308.12032; docs/methods.md §1): s(A|Q) / s(A), the mean NLL of the
  answer A after prompt(Q) over A read alone; IFD_ppl = exp(s(A|Q) − s(A)) (Superfiltering,
  arXiv 2402.00530).
- r-IFD (Selective Reflection-Tuning, arXiv 2402.10110; docs/methods.md §2): s(Q|A) / s(Q),
  Q_r = instruction + input after a "guess the instruction" prompt built from A and put
  through the IFD template, over Q_r alone.
- Truncation: the conditioned sequence is cut at ``max_length`` tokens; the direct pass scores
  exactly the answer tokens that survived. Missing scores carry a reason (``empty_answer``,
  ``answer_truncated_away``, ``non_finite_loss``, ...), never 0, never a crash.

Both passes of every sample go through one call of ``core.lm.sequence_losses``. ``run_ifd``
is the workspace step (scores/ifd.parquet, scores/rifd.parquet); the ``score`` CLI command
(ifd and recost) is registered here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..lm import (DEFAULT_TOKEN_BUDGET, TEMPLATES, as_text, direct_prefix, encode,
                  render_prompt, sequence_losses, split_prompt_answer,
                  token_progress, with_start)
from ..progress import Progress, TqdmProgress
from ..workspace import SAMPLES, Step

IFD_COLUMNS = ["loss_conditioned", "loss_direct", "ifd", "ifd_ppl", "answer_tokens",
               "truncated", "missing_reason"]
RIFD_COLUMNS = ["loss_reverse_conditioned", "loss_reverse_direct", "rifd", "rifd_ppl",
                "instruction_tokens", "reverse_truncated", "rifd_missing_reason"]
@dataclass
class _Pair:
    """The two sequences of one sample (or why there are none)."""

    conditioned: list[int] | None
    direct: list[int] | None
    n_scored: int
    truncated: bool
    merged: bool
    missing: str | None
    prompt_ids: list[int] | None = None
    answer_ids: list[int] | None = None


def ifd_pair(tokenizer, start_id: int, prompt: str, prefix_ids: list[int], answer: str,
              max_length: int, empty_reason: str = "empty_answer",
              truncated_reason: str = "answer_truncated_away") -> _Pair:
    if not answer.strip():
        return _Pair(None, None, 0, False, False, empty_reason)
    prompt_ids, answer_ids, merged = split_prompt_answer(tokenizer, prompt, answer)
    if not answer_ids:
        return _Pair(None, None, 0, False, merged, empty_reason)
    head = with_start(start_id, prompt_ids)
    keep = min(len(answer_ids), max_length - len(head))
    if keep <= 0:
        return _Pair(None, None, 0, True, merged, truncated_reason)
    kept = answer_ids[:keep]
    return _Pair(head + kept, with_start(start_id, prefix_ids) + kept, keep,
                 keep < len(answer_ids), merged, None, prompt_ids, kept)


def ratio_columns(cond: np.ndarray, direct: np.ndarray, missing: list[str | None]):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = cond / direct
        ppl = np.exp(cond - direct)
    for i in range(len(cond)):
        if missing[i] is None and not (np.isfinite(cond[i]) and np.isfinite(direct[i])
                                       and np.isfinite(ratio[i]) and np.isfinite(ppl[i])):
            missing[i] = "non_finite_loss"
    bad = np.array([m is not None for m in missing], dtype=bool)
    for arr in (cond, direct, ratio, ppl):
        arr[bad] = np.nan
    return ratio, ppl


def check_lengths(*columns: Sequence) -> int:
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise InputError("instructions, inputs and outputs must have the same length")
    return n


# ----- IFD ----------------------------------------------------------------------------------
def _pair_ratios(lm, pairs, token_budget: int, progress, label: str):
    """Score both passes of every pair in one batched run; return the two mean losses, the
    missing reasons, and the loss and perplexity ratios (shared by IFD and r-IFD)."""
    seqs = []
    for p in pairs:
        seqs.append((p.conditioned or [], p.n_scored))
        seqs.append((p.direct or [], p.n_scored))
    losses = sequence_losses(lm, seqs, token_budget, token_progress(progress, len(pairs),
                                                                     label))
    cond, direct = losses[0::2].copy(), losses[1::2].copy()
    missing = [p.missing for p in pairs]
    return (cond, direct, missing, *ratio_columns(cond, direct, missing))


def ifd_scores(lm, instructions: Sequence, inputs: Sequence | None, outputs: Sequence,
               template: str = "none", max_length: int = 512,
               token_budget: int = DEFAULT_TOKEN_BUDGET,
               progress: Progress | None = None) -> pd.DataFrame:
    """IFD per sample (docs/methods.md §1): columns loss_conditioned = s(A|Q), loss_direct = s(A),
    ifd = s(A|Q)/s(A), ifd_ppl = exp(s(A|Q) − s(A)), answer_tokens (scored), truncated,
    missing_reason. Rows are in input order."""
    inputs = inputs if inputs is not None else [""] * len(instructions)
    n = check_lengths(instructions, inputs, outputs)
    if max_length < 2:
        raise InputError("max_length must be at least 2", field="max_length")
    tok, start = lm.tokenizer, int(lm.start_token_id)
    prefix_ids = encode(tok, direct_prefix(template, tok))
    pairs = [ifd_pair(tok, start, render_prompt(template, instructions[i], inputs[i], tok),
                       prefix_ids, as_text(outputs[i]), max_length) for i in range(n)]
    cond, direct, missing, ratio, ppl = _pair_ratios(lm, pairs, token_budget, progress, "IFD")
    return pd.DataFrame({
        "loss_conditioned": cond, "loss_direct": direct, "ifd": ratio, "ifd_ppl": ppl,
        "answer_tokens": np.array([p.n_scored for p in pairs], dtype=np.int64),
        "truncated": np.array([p.truncated for p in pairs], dtype=bool),
        "missing_reason": pd.array(missing, dtype="string"),
    })


# ----- r-IFD --------------------------------------------------------------------------------
# Selective Reflection-Tuning's reversed instruction R (docs/methods.md §2), put through the
# IFD template as an instruction with no input; Q_r follows the rendered prompt directly.
REVERSE_HEAD = ("Below is the response to an instruction, please guess the corresponding "
                "instruction for the given response.\n")
REVERSE_TAIL = "\nGenerate the instruction for the above response."
# Raised when the r-IFD rule changes, so cached r-IFD files from an older rule are recomputed
# (2: reversed prompt through the template, Q_r = instruction + input without a separator).
RIFD_SCORER_VERSION = 2


def reverse_prompt(answer: str, template: str = "none", tokenizer=None) -> str:
    """The reversed prompt built from a response: R through ``template`` with no input
    (for ``none``: R + "\n"), as Reflection-Tuning's ``data_analysis.py`` builds it."""
    return render_prompt(template, REVERSE_HEAD + answer + REVERSE_TAIL, "", tokenizer)


def reverse_target(instruction, input="") -> str:
    """Q_r, the text r-IFD scores: instruction + input with no separator, as the reference
    concatenates them (a whitespace-only input counts as empty, as everywhere)."""
    instruction, input = as_text(instruction), as_text(input)
    return instruction + (input if input.strip() else "")


def _rifd_pair(tok, start: int, question: str, answer: str, max_length: int,
               template: str = "none") -> _Pair:
    if not question.strip():
        return _Pair(None, None, 0, False, False, "empty_instruction")

    def split(answer_text: str):
        return split_prompt_answer(tok, reverse_prompt(answer_text, template, tok), question)

    prompt_ids, q_ids, merged = split(answer)
    if not q_ids:
        return _Pair(None, None, 0, False, merged, "empty_instruction")
    cut = False
    if len(with_start(start, prompt_ids)) + len(q_ids) > max_length:
        # Cut A from its end so that all of Q is scored; give up if Q does not fit at all.
        p0, q0, _ = split("")
        if len(with_start(start, p0)) + len(q0) > max_length:
            return _Pair(None, None, 0, True, merged, "instruction_too_long")
        a_ids = encode(tok, answer)

        def attempt(keep: int):
            text = tok.decode(a_ids[:keep], skip_special_tokens=False,
                              clean_up_tokenization_spaces=False) if keep else ""
            p_ids, qq, mm = split(text)
            return len(with_start(start, p_ids)) + len(qq) - max_length, (p_ids, qq, mm)

        # Jump down by the overflow (token counts are nearly additive), then climb back to
        # the longest cut of A that still fits.
        keep, over = len(a_ids), len(with_start(start, prompt_ids)) + len(q_ids) - max_length
        found = None
        while over > 0 and keep > 0:
            keep = max(0, keep - over)
            over, found = attempt(keep)
        while found is not None and keep < len(a_ids):
            over_up, up = attempt(keep + 1)
            if over_up > 0:
                break
            keep, found = keep + 1, up
        if found is None or over > 0 and keep == 0:
            over, found = attempt(0)
        prompt_ids, q_ids, merged = found
        cut = True
        if len(with_start(start, prompt_ids)) + len(q_ids) > max_length:
            return _Pair(None, None, 0, True, merged, "instruction_too_long")
    return _Pair(with_start(start, prompt_ids) + q_ids, with_start(start, []) + q_ids,
                 len(q_ids), cut, merged, None)


def rifd_scores(lm, instructions: Sequence, inputs: Sequence | None, outputs: Sequence,
                max_length: int = 512, token_budget: int = DEFAULT_TOKEN_BUDGET,
                progress: Progress | None = None, *, template: str = "none") -> pd.DataFrame:
    """Reversed IFD per sample (docs/methods.md §2): loss_reverse_conditioned = s(Q|A),
    loss_reverse_direct = s(Q), rifd = s(Q|A)/s(Q), rifd_ppl, instruction_tokens,
    reverse_truncated (A was cut from its end to fit), rifd_missing_reason. The reversed
    prompt goes through ``template`` (the one IFD uses)."""
    inputs = inputs if inputs is not None else [""] * len(instructions)
    n = check_lengths(instructions, inputs, outputs)
    tok, start = lm.tokenizer, int(lm.start_token_id)
    pairs = [_rifd_pair(tok, start, reverse_target(instructions[i], inputs[i]),
                        as_text(outputs[i]), max_length, template) for i in range(n)]
    cond, direct, missing, ratio, ppl = _pair_ratios(lm, pairs, token_budget, progress,
                                                     "r-IFD")
    return pd.DataFrame({
        "loss_reverse_conditioned": cond, "loss_reverse_direct": direct, "rifd": ratio,
        "rifd_ppl": ppl,
        "instruction_tokens": np.array([p.n_scored for p in pairs], dtype=np.int64),
        "reverse_truncated": np.array([p.truncated for p in pairs], dtype=bool),
        "rifd_missing_reason": pd.array(missing, dtype="string"),
    })


# ----- workspace steps ----------------------------------------------------------------------
IFD_NAME = "ifd"
IFD_SCORE = "scores/ifd.parquet"
RIFD_SCORE = "scores/rifd.parquet"
def load_scoring_lm(model, dtype: str, executor=None):
    """The LM a scoring step uses. With an executor that computes elsewhere (Ray), this
    process only needs the model's identity: the weights load on the actors."""
    from ..lm import LoadedLM, load_causal_lm

    if isinstance(model, LoadedLM):
        return model
    here = getattr(executor, "name", "local") == "local"
    return load_causal_lm(model, dtype=dtype, weights=here)


def lm_params(lm, **extra) -> dict:
    """What determines LM scores (the cache key): model identity and dtype, plus ``extra``."""
    return {"model": lm.name, "model_identity": lm.identity, "dtype": lm.dtype,
            **({"compute": lm.compute} if getattr(lm, "compute", None) else {}),
            "start_token_id": int(lm.start_token_id), "scorer_version": 1, **extra}


def scoring_frame(ws, sample_ids):
    frame = ws.samples(["sample_id", "instruction", "input", "output"])
    frame = frame.set_index("sample_id", drop=False).sort_index()
    ids = frame.index.to_numpy() if sample_ids is None else np.asarray(sample_ids, dtype=np.int64)
    unknown = np.setdiff1d(ids, frame.index.to_numpy())
    if len(unknown):
        raise InputError(f"unknown sample ids, e.g. {unknown[:5].tolist()}", field="sample_id")
    return frame, ids


def run_ifd(ws, sample_ids: Sequence[int] | None = None, model=None, template: str = "none",
            max_length: int = 512, with_reverse: bool = False, dtype: str = "auto",
            progress: Progress | None = None, chunk_size: int = 256,
            token_budget: int = DEFAULT_TOKEN_BUDGET, force: bool = False,
            executor=None) -> dict:
    """Score samples of a workspace into scores/ifd.parquet (and scores/rifd.parquet with
    ``with_reverse``), resumably. ``model`` is None (default SmolLM2), a folder path, or a
    ``LoadedLM``; ``executor`` computes the chunks (core/executors: local, or Ray).
    Returns ``{"ifd": StepResult, "rifd": StepResult | None}``."""
    if template not in TEMPLATES:
        raise InputError(f"unknown prompt template {template!r}; use one of "
                         f"{', '.join(TEMPLATES)}", field="template")
    from ..lm.models import resolve_model

    lm = load_scoring_lm(resolve_model(model, ws), dtype,  # "brief": the workspace's model
                         executor)
    frame, ids = scoring_frame(ws, sample_ids)
    inputs = {"samples": SAMPLES}

    def compute_ifd(chunk: np.ndarray, chunk_progress) -> pd.DataFrame:
        rows = frame.loc[chunk]
        scores = ifd_scores(lm, rows["instruction"].tolist(), rows["input"].tolist(),
                            rows["output"].tolist(), template=template, max_length=max_length,
                            token_budget=token_budget, progress=chunk_progress)
        scores.insert(0, "sample_id", np.asarray(chunk, dtype=np.int64))
        return scores

    ifd_step = Step(IFD_SCORE, lm_params(lm, template=template, max_length=int(max_length)),
                    inputs=inputs, meta=lm.meta())
    results = {"ifd": ws.run_chunked(ifd_step, ids, compute_ifd, chunk_size=chunk_size,
                                     progress=progress, force=force, executor=executor),
               "rifd": None}
    if with_reverse:
        def compute_rifd(chunk: np.ndarray, chunk_progress) -> pd.DataFrame:
            rows = frame.loc[chunk]
            scores = rifd_scores(lm, rows["instruction"].tolist(), rows["input"].tolist(),
                                 rows["output"].tolist(), max_length=max_length,
                                 token_budget=token_budget, progress=chunk_progress,
                                 template=template)
            scores.insert(0, "sample_id", np.asarray(chunk, dtype=np.int64))
            return scores

        rifd_step = Step(RIFD_SCORE, lm_params(lm, template=template,
                                               max_length=int(max_length),
                                               scorer_version=RIFD_SCORER_VERSION),
                         inputs=inputs, meta=lm.meta())
        results["rifd"] = ws.run_chunked(rifd_step, ids, compute_rifd, chunk_size=chunk_size,
                                         progress=progress, force=force, executor=executor)
    return results


# ----- CLI ----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``score ifd`` and ``score recost`` to ``python -m core``."""
    from ..args import positive_int, seed

    score = subparsers.add_parser("score", help="LM scores: IFD / r-IFD, RECOST",
                                  description="Score samples with a causal language model.")
    sub = score.add_subparsers(dest="scorer", metavar="SCORER", required=True)

    p = sub.add_parser("ifd", help="IFD (and r-IFD) with a small causal LM, resumable",
                       description="Instruction-Following Difficulty (Cherry LLM / "
                                   "Superfiltering) into scores/ifd.parquet; --with-reverse "
                                   "adds r-IFD into scores/rifd.parquet. A killed run resumes.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    _lm_arguments(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sample", type=positive_int, metavar="N",
                       help="score a random subset of N")
    group.add_argument("--limit", type=positive_int, metavar="N",
                       help="score the first N samples")
    p.add_argument("--seed", type=seed, default=0, help="seed for --sample (default 0)")
    p.add_argument("--with-reverse", action="store_true", help="also compute r-IFD")
    p.set_defaults(func=_cli_ifd)

    p = sub.add_parser("recost", help="RECOST relative entropy against a trusted set",
                       description="H(A|Q) − H(A|k trusted examples, Q) into "
                                   "scores/recost.parquet.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    p.add_argument("--reference", required=True, metavar="PATH_OR_SELECTION",
                   help="trusted examples: a dataset file or a saved selection name")
    p.add_argument("--k", type=positive_int, default=5,
                   help="demonstrations per sample (default 5)")
    p.add_argument("--knowledge-length", type=positive_int, default=None, metavar="N",
                   help="longest demonstrations+sample sequence (default 2 x --max-length)")
    _lm_arguments(p)
    from .recost import cli_recost

    p.set_defaults(func=cli_recost)


def _lm_arguments(p) -> None:
    from ..args import positive_int

    p.add_argument("--model", default=None, metavar="PATH",
                   help="local Hugging Face causal-LM folder, or `brief` for the workspace's "
                        "brief model (brief-model); default: SmolLM2-135M-Instruct")
    p.add_argument("--template", choices=TEMPLATES, default="none",
                   help="prompt template (default none, as Superfiltering)")
    p.add_argument("--max-length", type=positive_int, default=512,
                   help="tokens per sequence (512)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto = fp32 on CPU (exact), bf16 on CUDA (fp16 without bf16); "
                        "bfloat16 is faster on CPU with AMX")
    p.add_argument("--chunk-size", type=positive_int, default=256,
                   help="samples per resumable chunk")
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    from ..executors import add_executor_arguments

    add_executor_arguments(p)


def score_summary(frame: pd.DataFrame, score: str, reason: str) -> str:
    values = frame[score].dropna()
    missing = frame[reason].dropna().value_counts()
    lines = [f"  scored {len(values):,} of {len(frame):,}"]
    if len(missing):
        lines.append("  missing: " + ", ".join(f"{k} {v:,}" for k, v in missing.items()))
    if len(values):
        q = values.quantile([0.05, 0.25, 0.5, 0.75, 0.95])
        lines.append(f"  {score} quantiles 5/25/50/75/95%: "
                     + " / ".join(f"{v:.3f}" for v in q.to_numpy()))
        if score in ("ifd", "rifd"):
            lines.append(f"  {score} < 1: {(values < 1).sum():,}")
    return "\n".join(lines)


def _cli_ifd(args) -> int:
    from ..text import terminal_safe
    from ..workspace import Workspace

    from ..executors import executor_from_args

    executor = executor_from_args(args)
    ws = Workspace.open(args.workspace)
    ids = ws.pick_sample_ids(args.sample, args.seed, args.limit)
    start = time.perf_counter()
    with TqdmProgress("IFD", unit="sample") as bar:
        results = run_ifd(ws, ids, model=args.model, template=args.template,
                          max_length=args.max_length, with_reverse=args.with_reverse,
                          dtype=args.dtype, progress=bar, chunk_size=args.chunk_size,
                          force=args.force, executor=executor)
    took = time.perf_counter() - start
    for name, score, reason in (("ifd", "ifd", "missing_reason"),
                                ("rifd", "rifd", "rifd_missing_reason")):
        res = results.get(name)
        if res is None:
            continue
        frame = res.value[res.value["sample_id"].isin(ids)]
        state = "up to date" if res.cached else "wrote"
        print(terminal_safe(f"{state} {ws.path('scores', name + '.parquet')}"))
        print(terminal_safe(score_summary(frame, score, reason), keep_newlines=True))
    print(f"done in {took:.1f}s")
    return 0


