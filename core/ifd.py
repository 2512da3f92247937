"""Causal-LM scores: IFD, IFD-ppl, r-IFD and RECOST-style relative entropy (METHODS §1, §2, §4).

All of them are ratios or differences of one quantity: the mean negative log-likelihood
(NLL, nats per token) that a causal LM assigns to some tokens (the *scored* tokens) after some
context. Every scored sequence here has its scored tokens at its end, so one engine,
``sequence_losses``, serves all the scorers:

- IFD (Cherry LLM, arXiv 2308.12032): s(A|Q) / s(A), answer A after prompt(Q) vs A alone;
  IFD_ppl = exp(s(A|Q) − s(A)) (Superfiltering, arXiv 2402.00530).
- r-IFD (Selective Reflection-Tuning, arXiv 2402.10110): s(Q|A) / s(Q), the instruction after
  a "guess the instruction" prompt built from A vs the instruction alone.
- RECOST (arXiv 2402.17355, our reading): H(A|Q) − H(A|demos, Q) with retrieved trusted
  examples as in-context demonstrations.

Rules fixed by METHODS §1 and implemented once here:

- Start token: every sequence begins with exactly one start token (BOS, else EOS); text is
  tokenised without special tokens and the start token prepended, unless the rendered text
  already begins with it (chat templates).
- Boundary: prompt and prompt+answer are tokenised; when the prompt's tokens are a prefix of
  the joint tokens, the answer tokens are the rest (the reference rule). When the tokenizer
  merges characters across the boundary, the prompt and the answer are tokenised separately
  and concatenated, so no token straddles the boundary and the direct pass scores the very
  same answer token ids.
- Truncation: the conditioned sequence is cut at ``max_length`` tokens; the direct pass scores
  exactly the answer tokens that survived.
- Missing scores carry a reason (``empty_answer``, ``answer_truncated_away``,
  ``non_finite_loss``, ...), never 0, never a crash.

Speed (bench/ifd.py, bench/README.md): sequences from all passes are pooled, sorted by length
and batched by a token budget with right padding. With right padding a causal model needs no
attention mask at all (a real token never sees a later pad), so the model runs its plain
causal attention path; the vocabulary projection is applied only on the positions whose NLL
is needed. ``dtype="bfloat16"`` is the explicit faster CPU option.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .progress import Progress, TqdmProgress, report
from .workspace import SAMPLES, Step

TEMPLATES = ("none", "alpaca", "chat")

# Cherry LLM's Alpaca prompt (data_analysis.py); the direct pass reads "### Response:" + A.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
ALPACA_DIRECT_PREFIX = "### Response:"

# Selective Reflection-Tuning's reversed prompt (METHODS §2), then "\n", then Q.
REVERSE_HEAD = ("Below is the response to an instruction, please guess the corresponding "
                "instruction for the given response.\n")
REVERSE_TAIL = "\nGenerate the instruction for the above response.\n"

DEFAULT_TOKEN_BUDGET = 2048   # tokens per forward batch (padded); see bench/README.md
LOGIT_ROWS = 512              # scored positions projected onto the vocabulary at a time
NLL_ROWS = 32                 # logit rows log-softmaxed at a time (stay in cache)
BATCH_COST_TOKENS = 64        # fixed cost of one forward, in padded tokens (plan_batches)

IFD_COLUMNS = ["loss_conditioned", "loss_direct", "ifd", "ifd_ppl", "answer_tokens",
               "truncated", "missing_reason"]
RIFD_COLUMNS = ["loss_reverse_conditioned", "loss_reverse_direct", "rifd", "rifd_ppl",
                "instruction_tokens", "reverse_truncated", "rifd_missing_reason"]
RECOST_COLUMNS = ["entropy_plain", "entropy_knowledge", "recost", "demo_rows",
                  "demo_tokens", "recost_missing_reason"]


# ----- texts --------------------------------------------------------------------------------
def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def question_text(instruction: Any, input: Any = "") -> str:
    """Q as plain text: the instruction, then "\\n" + input when the input is not empty."""
    instruction, input = _text(instruction), _text(input)
    return instruction + ("\n" + input if input.strip() else "")


def render_prompt(template: str, instruction: Any, input: Any = "", tokenizer=None) -> str:
    """prompt(Q) for a template (METHODS §1); the answer text follows it directly."""
    instruction, input = _text(instruction), _text(input)
    has_input = bool(input.strip())
    if template == "none":
        return f"{instruction}\n{input}\n" if has_input else f"{instruction}\n"
    if template == "alpaca":
        if has_input:
            return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
        return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
    if template == "chat":
        _require_chat_template(tokenizer)
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question_text(instruction, input)}],
            tokenize=False, add_generation_prompt=True)
    raise InputError(f"unknown prompt template {template!r}; use one of {', '.join(TEMPLATES)}",
                     field="template")


def direct_prefix(template: str, tokenizer=None) -> str:
    """What the direct pass reads before A: nothing (none), "### Response:" (alpaca), or the
    chat template's assistant header (the text its generation prompt adds)."""
    if template == "none":
        return ""
    if template == "alpaca":
        return ALPACA_DIRECT_PREFIX
    if template == "chat":
        _require_chat_template(tokenizer)
        msgs = [{"role": "user", "content": "x"}]
        with_gen = tokenizer.apply_chat_template(msgs, tokenize=False,
                                                 add_generation_prompt=True)
        without = tokenizer.apply_chat_template(msgs, tokenize=False,
                                                add_generation_prompt=False)
        return with_gen[len(without):] if with_gen.startswith(without) else ""
    raise InputError(f"unknown prompt template {template!r}; use one of {', '.join(TEMPLATES)}",
                     field="template")


def _require_chat_template(tokenizer) -> None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InputError("this model has no chat template; use --template none or alpaca",
                         field="template")


# ----- tokens -------------------------------------------------------------------------------
def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without any special tokens added by the tokenizer."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def split_prompt_answer(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int], bool]:
    """Token ids of prompt and answer as the model reads prompt+answer.

    Returns ``(prompt_ids, answer_ids, merged)``. When the tokens of the prompt alone are a
    prefix of the tokens of prompt+answer, the answer ids are the remaining joint tokens.
    Otherwise the tokenizer merged characters across the boundary (``merged=True``): the two
    texts are tokenised separately and concatenated, so every scored token is pure answer.
    """
    prompt_ids = encode(tokenizer, prompt)
    if not answer:
        return prompt_ids, [], False
    joint = encode(tokenizer, prompt + answer)
    n = len(prompt_ids)
    if joint[:n] == prompt_ids and len(joint) > n:
        return prompt_ids, joint[n:], False
    return prompt_ids, encode(tokenizer, answer), True


def with_start(start_id: int, ids: list[int]) -> list[int]:
    """Prepend the start token once (not again if the text already begins with it)."""
    return list(ids) if ids and ids[0] == start_id else [start_id] + list(ids)


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


def _ifd_pair(tokenizer, start_id: int, prompt: str, prefix_ids: list[int], answer: str,
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


# ----- the engine ---------------------------------------------------------------------------
def _needs_full_head(model) -> bool:
    """Models that post-process logits (soft-capping, scaling) take the plain forward path."""
    cfg = getattr(model, "config", None)
    return any(getattr(cfg, name, None) not in (None, 1, 1.0)
               for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"))


def plan_batches(lengths: Sequence[int], token_budget: int,
                 batch_cost: int = BATCH_COST_TOKENS) -> list[tuple[int, int]]:
    """Cut sequences sorted by length (longest first) into consecutive batches ``[lo, hi)``.

    A batch is padded to its first (longest) sequence and holds at most ``token_budget``
    padded tokens (a longer sequence goes alone). Of all such cuts this returns the one with
    the fewest padded tokens plus ``batch_cost`` tokens per batch (dynamic programming), so
    batches end where the lengths drop rather than wherever the budget runs out: on 200
    Alpaca rows padding falls from 9.6 % to about 3 % of the tokens read (bench/README.md).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    best = np.zeros(n + 1)
    first = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        # lengths[i] >= lengths[j - 1], so no batch ending at j holds more than this many
        lo = max(0, j - max(1, token_budget // max(1, int(lengths[j - 1]))))
        size = j - np.arange(lo, j)
        padded = lengths[lo:j] * size
        cost = np.where((padded <= token_budget) | (size == 1),
                        best[lo:j] + padded + batch_cost, np.inf)
        k = int(np.argmin(cost))
        best[j], first[j] = cost[k], lo + k
    cuts, j = [], n
    while j > 0:
        cuts.append((int(first[j]), j))
        j = int(first[j])
    return cuts[::-1]


def sequence_losses(lm, sequences: Sequence[tuple[Sequence[int], int]],
                    token_budget: int = DEFAULT_TOKEN_BUDGET,
                    progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Mean NLL of the last ``n`` tokens of each ``(ids, n)``, batched; NaN where n == 0.

    Sequences are sorted by length (longest first) and cut into batches of at most
    ``token_budget`` padded tokens with the least padding (``plan_batches``). Right padding
    without an attention mask is exact for a causal model: real positions only attend to
    earlier real positions. Only the positions predicting scored tokens go through the
    vocabulary projection, with an fp32 log-softmax (``_nll``).
    ``progress(tokens_done, tokens_total)`` is called after each batch.
    """
    import torch

    model = lm.model
    out = np.full(len(sequences), np.nan, dtype=np.float64)
    todo = [i for i, (ids, n) in enumerate(sequences) if n > 0 and len(ids) > n]
    if not todo:
        return out
    todo.sort(key=lambda i: -len(sequences[i][0]))
    lengths = [len(sequences[i][0]) for i in todo]
    total_tokens = sum(lengths)
    done_tokens = 0
    body = model.base_model
    head = model.get_output_embeddings()
    full_head = _needs_full_head(model) or head is None
    device = next(model.parameters()).device
    pad = int(lm.start_token_id)
    with torch.inference_mode():
        for lo, hi in plan_batches(lengths, token_budget):
            batch = todo[lo:hi]
            x = torch.full((len(batch), lengths[lo]), pad, dtype=torch.long)
            rows, cols, targets = [], [], []
            for r, i in enumerate(batch):
                ids, n = sequences[i]
                x[r, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
                rows.extend([r] * n)
                cols.extend(range(len(ids) - n - 1, len(ids) - 1))
                targets.extend(ids[len(ids) - n:])
            x = x.to(device)
            rows_t = torch.as_tensor(rows, device=device)
            cols_t = torch.as_tensor(cols, device=device)
            targets_t = torch.as_tensor(targets, device=device)
            if full_head:
                nll = _nll(model(input_ids=x).logits[rows_t, cols_t], targets_t)
            else:
                nll = _head_nll(head, body(input_ids=x).last_hidden_state[rows_t, cols_t],
                                targets_t)
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
            sums.index_add_(0, rows_t, nll.double())
            for r, i in enumerate(batch):
                out[i] = float(sums[r]) / sequences[i][1]
            done_tokens += sum(lengths[lo:hi])
            if progress is not None:
                progress(done_tokens, total_tokens)
    return out


def _head_nll(head, hidden, targets):
    """NLL of ``targets`` from final hidden states through the output projection, LOGIT_ROWS
    positions at a time (so the [positions, vocabulary] logits never exist all at once)."""
    import torch

    return torch.cat([_nll(head(hidden[s:s + LOGIT_ROWS]), targets[s:s + LOGIT_ROWS])
                      for s in range(0, hidden.shape[0], LOGIT_ROWS)])


def _nll(logits, targets):
    """Per-row NLL of ``targets`` under ``logits``, computed in fp32.

    On CPU the rows are reduced ``NLL_ROWS`` at a time, so the fp32 copy of a bf16 block
    (and the log-sum-exp's passes over it) stay in cache instead of streaming a
    [512, 49k] fp32 array through memory three times."""
    import torch

    step = NLL_ROWS if logits.device.type == "cpu" else max(1, len(targets))
    out = torch.empty(len(targets), dtype=torch.float32, device=logits.device)
    for s in range(0, len(targets), step):
        block = logits[s:s + step].float()
        out[s:s + step] = (torch.logsumexp(block, dim=-1)
                           - block.gather(1, targets[s:s + step, None])[:, 0])
    return out


def _token_progress(progress: Progress | None, n_samples: int, note: str):
    if progress is None:
        return None

    def inner(done_tokens: int, total_tokens: int) -> None:
        report(progress, int(round(n_samples * done_tokens / max(total_tokens, 1))),
               n_samples, note)

    return inner


def _ratio_columns(cond: np.ndarray, direct: np.ndarray, missing: list[str | None]):
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


def _check_lengths(*columns: Sequence) -> int:
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
    losses = sequence_losses(lm, seqs, token_budget, _token_progress(progress, len(pairs),
                                                                     label))
    cond, direct = losses[0::2].copy(), losses[1::2].copy()
    missing = [p.missing for p in pairs]
    return (cond, direct, missing, *_ratio_columns(cond, direct, missing))


def ifd_scores(lm, instructions: Sequence, inputs: Sequence | None, outputs: Sequence,
               template: str = "none", max_length: int = 512,
               token_budget: int = DEFAULT_TOKEN_BUDGET,
               progress: Progress | None = None) -> pd.DataFrame:
    """IFD per sample (METHODS §1): columns loss_conditioned = s(A|Q), loss_direct = s(A),
    ifd = s(A|Q)/s(A), ifd_ppl = exp(s(A|Q) − s(A)), answer_tokens (scored), truncated,
    missing_reason. Rows are in input order."""
    inputs = inputs if inputs is not None else [""] * len(instructions)
    n = _check_lengths(instructions, inputs, outputs)
    if max_length < 2:
        raise InputError("max_length must be at least 2", field="max_length")
    tok, start = lm.tokenizer, int(lm.start_token_id)
    prefix_ids = encode(tok, direct_prefix(template, tok))
    pairs = [_ifd_pair(tok, start, render_prompt(template, instructions[i], inputs[i], tok),
                       prefix_ids, _text(outputs[i]), max_length) for i in range(n)]
    cond, direct, missing, ratio, ppl = _pair_ratios(lm, pairs, token_budget, progress, "IFD")
    return pd.DataFrame({
        "loss_conditioned": cond, "loss_direct": direct, "ifd": ratio, "ifd_ppl": ppl,
        "answer_tokens": np.array([p.n_scored for p in pairs], dtype=np.int64),
        "truncated": np.array([p.truncated for p in pairs], dtype=bool),
        "missing_reason": pd.array(missing, dtype="string"),
    })


# ----- r-IFD --------------------------------------------------------------------------------
def reverse_prompt(answer: str) -> str:
    """The reversed prompt built from a response (METHODS §2), ending in the "\\n" before Q."""
    return REVERSE_HEAD + answer + REVERSE_TAIL


def _rifd_pair(tok, start: int, question: str, answer: str, max_length: int) -> _Pair:
    if not question.strip():
        return _Pair(None, None, 0, False, False, "empty_instruction")
    prompt_ids, q_ids, merged = split_prompt_answer(tok, reverse_prompt(answer), question)
    if not q_ids:
        return _Pair(None, None, 0, False, merged, "empty_instruction")
    cut = False
    if len(with_start(start, prompt_ids)) + len(q_ids) > max_length:
        # Cut A from its end so that all of Q is scored; give up if Q does not fit at all.
        p0, q0, _ = split_prompt_answer(tok, reverse_prompt(""), question)
        if len(with_start(start, p0)) + len(q0) > max_length:
            return _Pair(None, None, 0, True, merged, "instruction_too_long")
        a_ids = encode(tok, answer)

        def attempt(keep: int):
            text = tok.decode(a_ids[:keep], skip_special_tokens=False,
                              clean_up_tokenization_spaces=False) if keep else ""
            p_ids, qq, mm = split_prompt_answer(tok, reverse_prompt(text), question)
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
                progress: Progress | None = None) -> pd.DataFrame:
    """Reversed IFD per sample (METHODS §2): loss_reverse_conditioned = s(Q|A),
    loss_reverse_direct = s(Q), rifd = s(Q|A)/s(Q), rifd_ppl, instruction_tokens,
    reverse_truncated (A was cut from its end to fit), rifd_missing_reason."""
    inputs = inputs if inputs is not None else [""] * len(instructions)
    n = _check_lengths(instructions, inputs, outputs)
    tok, start = lm.tokenizer, int(lm.start_token_id)
    pairs = [_rifd_pair(tok, start, question_text(instructions[i], inputs[i]),
                        _text(outputs[i]), max_length) for i in range(n)]
    cond, direct, missing, ratio, ppl = _pair_ratios(lm, pairs, token_budget, progress,
                                                     "r-IFD")
    return pd.DataFrame({
        "loss_reverse_conditioned": cond, "loss_reverse_direct": direct, "rifd": ratio,
        "rifd_ppl": ppl,
        "instruction_tokens": np.array([p.n_scored for p in pairs], dtype=np.int64),
        "reverse_truncated": np.array([p.truncated for p in pairs], dtype=bool),
        "rifd_missing_reason": pd.array(missing, dtype="string"),
    })


# ----- RECOST -------------------------------------------------------------------------------
def demonstration_text(template: str, demos: Sequence[tuple], tokenizer=None) -> str:
    """The in-context demonstrations, least similar first (so the most similar example sits
    next to the question and left truncation drops the least similar first). ``demos`` is in
    retrieval order (most similar first), each ``(instruction, input, output)``. Demos use the
    sample's template for none/alpaca and the plain (none) layout for chat."""
    layout = template if template in ("none", "alpaca") else "none"
    parts = [render_prompt(layout, d[0], d[1] if len(d) > 1 else "", tokenizer)
             + _text(d[2] if len(d) > 2 else "") + "\n\n" for d in reversed(list(demos))]
    return "".join(parts)


_NO_ANSWER = ("empty_answer", "answer_truncated_away")


def recost_scores(lm, instructions: Sequence, inputs: Sequence | None, outputs: Sequence,
                  demos: Sequence[Sequence[tuple]], template: str = "none",
                  max_length: int = 512, knowledge_max_length: int | None = None,
                  entropy_plain: Sequence[float] | None = None,
                  token_budget: int = DEFAULT_TOKEN_BUDGET,
                  progress: Progress | None = None) -> pd.DataFrame:
    """RECOST-style relative predictive entropy (METHODS §4, our reading of arXiv 2402.17355).

    entropy_plain = H(A | prompt(Q)) (the same quantity and truncation as IFD's
    loss_conditioned, reused when given), entropy_knowledge = H(A | demos + prompt(Q)) over
    the same answer tokens, recost = plain − knowledge (nats/token; high = consistent with the
    trusted data). The demonstrations are cut from the left so the knowledge sequence fits in
    ``knowledge_max_length`` (default 2 × ``max_length``, so a long answer leaves room);
    ``demo_tokens`` = demonstration tokens read. Columns: entropy_plain, entropy_knowledge,
    recost, demo_tokens, recost_missing_reason (with ``no_demonstrations`` or
    ``no_room_for_demonstrations`` entropy_plain is kept and recost is NaN).
    """
    inputs = inputs if inputs is not None else [""] * len(instructions)
    n = _check_lengths(instructions, inputs, outputs, demos)
    if entropy_plain is not None and len(entropy_plain) != n:
        raise InputError("entropy_plain must have one value per sample")
    kmax = int(knowledge_max_length or 2 * max_length)
    tok, start = lm.tokenizer, int(lm.start_token_id)
    seqs, missing, demo_tokens = [], [], []
    for i in range(n):
        pair = _ifd_pair(tok, start, render_prompt(template, instructions[i], inputs[i], tok),
                         [], _text(outputs[i]), max_length)
        reason, know, k_len = pair.missing, None, 0
        if reason is None and not demos[i]:
            reason = "no_demonstrations"
        if reason is None:
            k_ids = encode(tok, demonstration_text(template, demos[i], tok))
            room = kmax - 1 - len(pair.prompt_ids) - pair.n_scored
            if room <= 0 or not k_ids:
                reason = "no_room_for_demonstrations"
            else:
                k_ids = k_ids[-room:]
                k_len = len(k_ids)
                know = [start] + k_ids + list(pair.prompt_ids) + list(pair.answer_ids)
        missing.append(reason)
        demo_tokens.append(k_len)
        # H_plain stays meaningful when only the demonstrations are missing
        plain_needed = pair.missing is None and entropy_plain is None
        seqs.append((pair.conditioned if plain_needed else [], pair.n_scored if plain_needed
                     else 0))
        seqs.append((know or [], pair.n_scored if reason is None else 0))
    losses = sequence_losses(lm, seqs, token_budget, _token_progress(progress, n, "RECOST"))
    plain = np.asarray(entropy_plain, dtype=np.float64).copy() if entropy_plain is not None \
        else losses[0::2].copy()
    knowledge = losses[1::2].copy()
    for i in range(n):
        if missing[i] is None and not (np.isfinite(plain[i]) and np.isfinite(knowledge[i])):
            missing[i] = "non_finite_loss"
        if not np.isfinite(plain[i]) or missing[i] in _NO_ANSWER:
            plain[i] = np.nan
    knowledge[np.array([m is not None for m in missing], dtype=bool)] = np.nan
    return pd.DataFrame({
        "entropy_plain": plain, "entropy_knowledge": knowledge, "recost": plain - knowledge,
        "demo_tokens": np.array(demo_tokens, dtype=np.int64),
        "recost_missing_reason": pd.array(missing, dtype="string"),
    })


def retrieve_demos(sample_emb: np.ndarray, ref_emb: np.ndarray, k: int = 5,
                   sample_texts: Sequence[str] | None = None,
                   ref_texts: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar reference rows for each sample (cosine on unit vectors, faiss
    ``IndexFlatIP``), excluding references whose text equals the sample's own text (exact
    duplicates of the sample). Returns ``(indices, similarities)`` of shape [N, k], most
    similar first; -1 / NaN pad rows that have fewer than ``k`` eligible references."""
    import faiss

    sample_emb = np.ascontiguousarray(sample_emb, dtype=np.float32)
    ref_emb = np.ascontiguousarray(ref_emb, dtype=np.float32)
    n, m = len(sample_emb), len(ref_emb)
    idx_out = np.full((n, k), -1, dtype=np.int64)
    sim_out = np.full((n, k), np.nan, dtype=np.float32)
    if n == 0 or m == 0 or k <= 0:
        return idx_out, sim_out
    if sample_emb.shape[1] != ref_emb.shape[1]:
        raise InputError("sample and reference embeddings have different dimensions")
    check = sample_texts is not None and ref_texts is not None
    ref_by_text: dict[str, list[int]] = {}
    if check:
        for j, t in enumerate(ref_texts):
            ref_by_text.setdefault(t, []).append(j)
    index = faiss.IndexFlatIP(ref_emb.shape[1])
    index.add(ref_emb)
    extra = max((len(ref_by_text.get(t, ())) for t in sample_texts), default=0) if check else 0
    want = min(m, k + extra)
    sims, idx = index.search(sample_emb, want)
    for i in range(n):
        same = set(ref_by_text.get(sample_texts[i], ())) if check else set()
        picked = [(j, s) for j, s in zip(idx[i], sims[i]) if j >= 0 and j not in same][:k]
        for c, (j, s) in enumerate(picked):
            idx_out[i, c] = j
            sim_out[i, c] = s
    return idx_out, sim_out


def row_text(instruction: Any, input: Any, output: Any) -> str:
    """The exact-duplicate key of a row (instruction, input, output)."""
    return "\x1f".join((_text(instruction), _text(input), _text(output)))


# ----- workspace steps ----------------------------------------------------------------------
IFD_NAME = "ifd"
IFD_SCORE = "scores/ifd.parquet"
RIFD_SCORE = "scores/rifd.parquet"
RECOST_SCORE = "scores/recost.parquet"


def _load(model, dtype: str):
    from .lm import LoadedLM, load_causal_lm

    if isinstance(model, LoadedLM):
        return model
    return load_causal_lm(model, dtype=dtype)


def lm_params(lm, **extra) -> dict:
    """What determines LM scores (the cache key): model identity and dtype, plus ``extra``."""
    return {"model": lm.name, "model_identity": lm.identity, "dtype": lm.dtype,
            **({"compute": lm.compute} if getattr(lm, "compute", None) else {}),
            "start_token_id": int(lm.start_token_id), "scorer_version": 1, **extra}


def _samples(ws, sample_ids):
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
            token_budget: int = DEFAULT_TOKEN_BUDGET, force: bool = False) -> dict:
    """Score samples of a workspace into scores/ifd.parquet (and scores/rifd.parquet with
    ``with_reverse``), resumably. ``model`` is None (default SmolLM2), a folder path, or a
    ``LoadedLM``. Returns ``{"ifd": StepResult, "rifd": StepResult | None}``."""
    if template not in TEMPLATES:
        raise InputError(f"unknown prompt template {template!r}; use one of "
                         f"{', '.join(TEMPLATES)}", field="template")
    lm = _load(model, dtype)
    frame, ids = _samples(ws, sample_ids)
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
                                     progress=progress, force=force), "rifd": None}
    if with_reverse:
        def compute_rifd(chunk: np.ndarray, chunk_progress) -> pd.DataFrame:
            rows = frame.loc[chunk]
            scores = rifd_scores(lm, rows["instruction"].tolist(), rows["input"].tolist(),
                                 rows["output"].tolist(), max_length=max_length,
                                 token_budget=token_budget, progress=chunk_progress)
            scores.insert(0, "sample_id", np.asarray(chunk, dtype=np.int64))
            return scores

        rifd_step = Step(RIFD_SCORE, lm_params(lm, max_length=int(max_length)), inputs=inputs,
                         meta=lm.meta())
        results["rifd"] = ws.run_chunked(rifd_step, ids, compute_rifd, chunk_size=chunk_size,
                                         progress=progress, force=force)
    return results


def _reference_frame(ws, reference: str):
    """Reference rows and a fingerprint: a dataset file, or a saved selection's name."""
    from pathlib import Path

    from .workspace import sha256_file

    path = Path(reference)
    if path.is_file():
        from .io import read_dataset

        samples = read_dataset(path).samples
        return samples, {"reference": str(path.resolve()), "sha256": sha256_file(path)}
    sel = ws.path("selections", f"{reference}.json")
    if sel.is_file():
        from .atomic import read_json

        chosen = [int(i) for i in read_json(sel).get("sample_ids", [])]
        samples = ws.samples(["sample_id", "instruction", "input", "output"])
        samples = samples[samples["sample_id"].isin(chosen)].reset_index(drop=True)
        return samples, {"reference": f"selection:{reference}", "sha256": sha256_file(sel)}
    raise InputError(f"reference {reference!r} is neither a dataset file nor a saved selection "
                     f"(looked for {sel})", field="reference")


def run_recost(ws, reference: str, k: int = 5, model=None, template: str = "none",
               max_length: int = 512, knowledge_max_length: int | None = None,
               dtype: str = "auto", embed_model=None,
               progress: Progress | None = None, chunk_size: int = 256,
               token_budget: int = DEFAULT_TOKEN_BUDGET, force: bool = False):
    """RECOST scores of every sample into scores/recost.parquet against a trusted reference
    set (a dataset file or a saved selection). Reuses IFD's loss_conditioned as entropy_plain
    when scores/ifd.parquet was made with the same model, dtype, template and max_length."""
    from .embed import embed_texts, embedding_text

    if k < 1:
        raise InputError("k must be at least 1", field="k")
    lm = _load(model, dtype)
    frame, ids = _samples(ws, None)
    ref, ref_fp = _reference_frame(ws, reference)
    if len(ref) == 0:
        raise InputError("the reference set is empty", field="reference")
    for col in ("input", "output"):
        if col not in ref:
            ref[col] = ""
    ref_emb = embed_texts(embedding_text(ref, "instruction"), model=embed_model)
    ref_rows = list(zip(ref["instruction"].map(_text), ref["input"].map(_text),
                        ref["output"].map(_text)))
    ref_keys = [row_text(*r) for r in ref_rows]
    plain_params = lm_params(lm, template=template, max_length=int(max_length))
    reuse = None
    meta = ws.meta(IFD_SCORE)
    if meta is not None and ws.exists(IFD_SCORE) and meta.get("params") == plain_params \
            and meta.get("inputs", {}).get("samples") == ws.samples_fingerprint():
        prev = ws.read_score(IFD_NAME, ["sample_id", "loss_conditioned"])
        reuse = dict(zip(prev["sample_id"].tolist(), prev["loss_conditioned"].tolist()))
    def compute(chunk: np.ndarray, chunk_progress) -> pd.DataFrame:
        rows = frame.loc[chunk]
        emb = embed_texts(embedding_text(rows, "instruction"), model=embed_model)
        keys = [row_text(a, b, c) for a, b, c in zip(rows["instruction"], rows["input"],
                                                      rows["output"])]
        idx, _ = retrieve_demos(emb, ref_emb, k, keys, ref_keys)
        demos = [[ref_rows[j] for j in r if j >= 0] for r in idx]
        plain = None
        if reuse is not None and all(int(i) in reuse for i in chunk):
            plain = [reuse[int(i)] for i in chunk]
        scores = recost_scores(lm, rows["instruction"].tolist(), rows["input"].tolist(),
                               rows["output"].tolist(), demos, template=template,
                               max_length=max_length,
                               knowledge_max_length=knowledge_max_length,
                               entropy_plain=plain,
                               token_budget=token_budget, progress=chunk_progress)
        scores.insert(0, "sample_id", np.asarray(chunk, dtype=np.int64))
        scores.insert(len(scores.columns) - 1, "demo_rows",
                      pd.Series([[int(j) for j in r if j >= 0] for r in idx], dtype=object,
                                index=scores.index))
        return scores

    params = {**plain_params, "k": int(k), "embed_model": str(embed_model or "default"),
              "knowledge_max_length": int(knowledge_max_length or 2 * max_length),
              "demo_layout": "template, least similar first, left-truncated"}
    step = Step(RECOST_SCORE, params, inputs={"samples": SAMPLES},
                external={"reference": ref_fp},
                meta={**lm.meta(), "reference": ref_fp, "reused_ifd_entropy": reuse is not None})
    return ws.run_chunked(step, ids, compute, chunk_size=chunk_size, progress=progress,
                          force=force)


# ----- CLI ----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``score ifd`` and ``score recost`` to ``python -m core``."""
    from .args import positive_int, seed

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
    p.set_defaults(func=_cli_recost)


def _lm_arguments(p) -> None:
    from .args import positive_int

    p.add_argument("--model", default=None, metavar="PATH",
                   help="local Hugging Face causal-LM folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--template", choices=TEMPLATES, default="none",
                   help="prompt template (default none, as Superfiltering)")
    p.add_argument("--max-length", type=positive_int, default=512,
                   help="tokens per sequence (512)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto = fp32 on CPU (exact); bfloat16 is faster on CPU with AMX")
    p.add_argument("--chunk-size", type=positive_int, default=256,
                   help="samples per resumable chunk")
    p.add_argument("--force", action="store_true", help="recompute even if up to date")


def _pick_ids(ws, sample: int | None, seed: int, limit: int | None):
    ids = np.sort(ws.samples(["sample_id"])["sample_id"].to_numpy())
    if limit is not None:
        return ids[:max(0, limit)]
    if sample is not None:
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(ids, size=min(sample, len(ids)), replace=False))
    return ids


def _summary(frame: pd.DataFrame, score: str, reason: str) -> str:
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
    from .text import terminal_safe
    from .workspace import Workspace

    ws = Workspace.open(args.workspace)
    ids = _pick_ids(ws, args.sample, args.seed, args.limit)
    start = time.perf_counter()
    with TqdmProgress("IFD", unit="sample") as bar:
        results = run_ifd(ws, ids, model=args.model, template=args.template,
                          max_length=args.max_length, with_reverse=args.with_reverse,
                          dtype=args.dtype, progress=bar, chunk_size=args.chunk_size,
                          force=args.force)
    took = time.perf_counter() - start
    for name, score, reason in (("ifd", "ifd", "missing_reason"),
                                ("rifd", "rifd", "rifd_missing_reason")):
        res = results.get(name)
        if res is None:
            continue
        frame = res.value[res.value["sample_id"].isin(ids)]
        state = "up to date" if res.cached else "wrote"
        print(terminal_safe(f"{state} {ws.path('scores', name + '.parquet')}"))
        print(terminal_safe(_summary(frame, score, reason), keep_newlines=True))
    print(f"done in {took:.1f}s")
    return 0


def _cli_recost(args) -> int:
    from .text import terminal_safe
    from .workspace import Workspace

    ws = Workspace.open(args.workspace)
    start = time.perf_counter()
    with TqdmProgress("RECOST", unit="sample") as bar:
        res = run_recost(ws, args.reference, k=args.k, model=args.model,
                         template=args.template, max_length=args.max_length,
                         knowledge_max_length=args.knowledge_length, dtype=args.dtype,
                         progress=bar, chunk_size=args.chunk_size, force=args.force)
    state = "up to date" if res.cached else "wrote"
    print(terminal_safe(f"{state} {ws.path('scores', 'recost.parquet')}"))
    print(terminal_safe(_summary(res.value, "recost", "recost_missing_reason"),
                        keep_newlines=True))
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0
