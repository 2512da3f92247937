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

# On CUDA the default budget (a CPU figure: batches that stay in cache) is replaced by one
# sized to the GPU's free memory (``cuda_token_budget``); an explicit other budget is kept.
GPU_MEMORY_SHARE = 0.5        # of the free memory (weights already loaded) one batch may use
MAX_GPU_TOKEN_BUDGET = 65_536  # beyond this a batch is no faster per token


def activation_bytes_per_token(config, seq_len: int) -> int:
    """Peak bytes one token of a forward batch holds, read from the model's shapes (fp32 for
    every term, so an upper bound in bf16): the key/value cache transformers keeps through
    the forward (2 x layers x kv_heads x head_dim), the residual stream, norms and MLP of
    the layer being computed (4 x hidden + 3 x intermediate) and one layer's eager
    attention scores (heads x seq_len). The scored positions' logits go through the
    vocabulary LOGIT_ROWS at a time, so they do not grow with the budget."""
    hidden = int(getattr(config, "hidden_size", 4096))
    heads = int(getattr(config, "num_attention_heads", 32))
    layers = int(getattr(config, "num_hidden_layers", 32))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    inter = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    return 4 * (2 * layers * kv_heads * head_dim + 4 * hidden + 3 * inter + heads * seq_len)


def cuda_token_budget(model, seq_len: int, free_bytes: int | None = None) -> int:
    """Tokens per forward batch that fit in GPU_MEMORY_SHARE of the free GPU memory
    (``torch.cuda.mem_get_info`` unless ``free_bytes`` is given), a multiple of 256
    between 256 and MAX_GPU_TOKEN_BUDGET."""
    if free_bytes is None:
        import torch

        free_bytes, _ = torch.cuda.mem_get_info(next(model.parameters()).device)
    per_token = activation_bytes_per_token(model.config, seq_len)
    budget = int(GPU_MEMORY_SHARE * free_bytes // per_token) // 256 * 256
    return max(256, min(MAX_GPU_TOKEN_BUDGET, budget))


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
    ``progress(tokens_done, tokens_total)`` is called after each batch. On CUDA the default
    budget is scaled to the free GPU memory (``cuda_token_budget``).
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
    if device.type == "cuda" and token_budget == DEFAULT_TOKEN_BUDGET:
        token_budget = cuda_token_budget(model, lengths[0])
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


