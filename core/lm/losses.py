"""The batched engine behind every LM score: mean NLL of the last n tokens of sequences.

IFD, r-IFD and RECOST are all ratios or differences of one quantity, the mean negative
log-likelihood (nats per token) a causal LM assigns to the tokens at the end of a sequence
(docs/methods.md §1). ``sequence_losses`` computes it for many sequences at once: sorted by
length, cut into batches of a token budget with the least padding, right padding with no
attention mask (exact for a causal model: a real token never sees a later pad), and the
vocabulary projection only on the positions whose NLL is needed, with an fp32 log-softmax.
Speed and its measurement: bench/ifd.py, bench/README.md.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..progress import Progress, report

DEFAULT_TOKEN_BUDGET = 2048   # tokens per forward batch (padded); see bench/README.md
LOGIT_ROWS = 512              # scored positions projected onto the vocabulary at a time
NLL_ROWS = 32                 # logit rows log-softmaxed at a time (stay in cache)
BATCH_COST_TOKENS = 64        # fixed cost of one forward, in padded tokens (plan_batches)

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


def token_progress(progress: Progress | None, n_samples: int, note: str):
    if progress is None:
        return None

    def inner(done_tokens: int, total_tokens: int) -> None:
        report(progress, int(round(n_samples * done_tokens / max(total_tokens, 1))),
               n_samples, note)

    return inner


