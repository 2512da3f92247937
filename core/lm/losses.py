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

import contextlib
import ctypes
import ctypes.util
import functools
import sys
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


# glibc malloc serves a block above its mmap threshold (dynamic, at most 32 MB) with a fresh
# mmap and gives it back on free, and trims the heap's free top above twice that: every
# forward then page-faults its activations in again (550-740k minor faults per 200 rows).
# Raising both keeps the freed blocks for the next batch (steady_heap).
HEAP_MMAP_THRESHOLD = 256 << 20   # bytes: smaller blocks come from the heap
HEAP_TRIM_THRESHOLD = 512 << 20   # bytes: free heap kept at the top before it is returned
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>


@functools.cache
def steady_heap() -> bool:
    """Let glibc keep freed activation memory for reuse instead of unmapping it, so a
    forward does not fault its pages in again; True when set (Linux glibc only).

    Process-wide and once: afterwards up to HEAP_TRIM_THRESHOLD of free memory stays
    mapped. Measured on 200 real Alpaca rows in bf16 (bench/README.md): minor page faults
    560-740k -> under 50k per run, CPU time 32-38 s -> 28-33 s; the scores are the same bits.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: leave it alone
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))


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
    ``token_budget`` padded tokens with the least padding (``plan_batches``); each batch is
    one forward (``batch_losses``). With CPU workers (``lm.workers`` > 1) the batches run
    in single-thread worker processes, one per core (core/lm/pool.py).
    ``progress(tokens_done, tokens_total)`` is called after each batch. On CUDA the default
    budget is scaled to the free GPU memory (``cuda_token_budget``).
    """
    out = np.full(len(sequences), np.nan, dtype=np.float64)
    todo = [i for i, (ids, n) in enumerate(sequences) if n > 0 and len(ids) > n]
    if not todo:
        return out
    todo.sort(key=lambda i: -len(sequences[i][0]))
    lengths = [len(sequences[i][0]) for i in todo]
    total_tokens = sum(lengths)
    if next(lm.model.parameters()).device.type == "cuda" \
            and token_budget == DEFAULT_TOKEN_BUDGET:
        token_budget = cuda_token_budget(lm.model, lengths[0])
    cuts = plan_batches(lengths, token_budget)
    batches = [[(list(sequences[i][0]), int(sequences[i][1])) for i in todo[lo:hi]]
               for lo, hi in cuts]
    done_tokens = 0
    for k, losses in _computed(lm, batches):
        lo, hi = cuts[k]
        out[todo[lo:hi]] = losses
        done_tokens += sum(lengths[lo:hi])
        if progress is not None:
            progress(done_tokens, total_tokens)
    return out


def _computed(lm, batches):
    """``(index, losses)`` of every batch: from the worker pool when ``lm`` has one worth
    using, else here; with workers every batch runs on one thread wherever it runs."""
    from .pool import pool_for

    def here(batch):
        with _torch_threads(1 if getattr(lm, "workers", 1) > 1 else None):
            return batch_losses(lm, batch)

    pool = pool_for(lm, len(batches))
    if pool is not None:
        yield from pool.imap(batches, here=here)
    else:
        for k, batch in enumerate(batches):
            yield k, here(batch)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batch_losses(lm, batch: Sequence[tuple[Sequence[int], int]]) -> np.ndarray:
    """Mean NLL of the last ``n`` tokens of each ``(ids, n)`` of one batch (every n > 0 and
    shorter than its sequence), in one forward.

    Right padding without an attention mask is exact for a causal model: real positions
    only attend to earlier real positions. Only the positions predicting scored tokens go
    through the vocabulary projection, with an fp32 log-softmax (``_head_nll``)."""
    import torch

    model = lm.model
    device = next(model.parameters()).device
    if device.type == "cpu":
        steady_heap()
    head = model.get_output_embeddings()
    full_head = _needs_full_head(model) or head is None
    width = max(len(ids) for ids, _ in batch)
    x = torch.full((len(batch), width), int(lm.start_token_id), dtype=torch.long)
    rows, cols, targets = [], [], []
    for r, (ids, n) in enumerate(batch):
        x[r, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        rows.extend([r] * n)
        cols.extend(range(len(ids) - n - 1, len(ids) - 1))
        targets.extend(ids[len(ids) - n:])
    with torch.inference_mode():
        x = x.to(device)
        rows_t = torch.as_tensor(rows, device=device)
        cols_t = torch.as_tensor(cols, device=device)
        targets_t = torch.as_tensor(targets, device=device)
        if full_head:
            nll = _nll(model(input_ids=x).logits[rows_t, cols_t], targets_t)
        else:
            nll = _head_nll(head, model.base_model(input_ids=x).last_hidden_state[rows_t, cols_t],
                            targets_t)
        sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
        sums.index_add_(0, rows_t, nll.double())
    return sums.cpu().numpy() / np.array([n for _, n in batch], dtype=np.float64)


def _head_nll(head, hidden, targets):
    """NLL of ``targets`` from final hidden states through the output projection, LOGIT_ROWS
    positions at a time (so the [positions, vocabulary] logits never exist all at once).

    The logits land in one buffer reused for every block (``torch.mm(out=)``), cast to the
    head's dtype first as autocast would: a fresh [512, 49k] array per block is an ``mmap``
    of 50 MB whose pages fault in on first write, which made the vocabulary matmul run at
    40 % of its roofline (bench/README.md). A head that is not a plain linear layer is
    called as it is."""
    import torch

    if not isinstance(head, torch.nn.Linear):
        return torch.cat([_nll(head(hidden[s:s + LOGIT_ROWS]), targets[s:s + LOGIT_ROWS])
                          for s in range(0, hidden.shape[0], LOGIT_ROWS)])
    with torch.no_grad():  # a score, never a gradient: out= buffers need no autograd
        return _linear_head_nll(head.weight, head.bias, hidden, targets)


def _linear_head_nll(weight, bias, hidden, targets):
    import torch

    rows = min(LOGIT_ROWS, hidden.shape[0])
    logits = torch.empty(rows, weight.shape[0], dtype=weight.dtype, device=hidden.device)
    scratch = _scratch(logits)
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[0], LOGIT_ROWS):
        h = hidden[s:s + LOGIT_ROWS].to(weight.dtype)
        block = logits[:len(h)]
        if bias is None:
            torch.mm(h, weight.t(), out=block)
        else:
            torch.addmm(bias.to(weight.dtype), h, weight.t(), out=block)
        _nll(block, targets[s:s + LOGIT_ROWS], out=out[s:s + LOGIT_ROWS], scratch=scratch)
    return out


def _scratch(logits):
    """The fp32 block ``_nll`` works in: NLL_ROWS rows on CPU (they stay in cache), all
    rows at once elsewhere."""
    import torch

    rows = NLL_ROWS if logits.device.type == "cpu" else logits.shape[0]
    return torch.empty(min(rows, logits.shape[0]), logits.shape[-1], dtype=torch.float32,
                       device=logits.device)


def _nll(logits, targets, out=None, scratch=None):
    """Per-row NLL of ``targets`` under ``logits``, computed in fp32.

    Rows are copied into one fp32 ``scratch`` block (NLL_ROWS rows on CPU, so the copy of a
    bf16 block and the log-sum-exp's passes over it stay in cache) and reduced in place:
    max, subtract, exp, sum. No pass allocates a new [rows, vocabulary] array."""
    import torch

    if out is None:
        out = torch.empty(len(targets), dtype=torch.float32, device=logits.device)
    if scratch is None:
        scratch = _scratch(logits)
    step = scratch.shape[0]
    for s in range(0, len(targets), step):
        block = scratch[:min(step, len(targets) - s)]
        block.copy_(logits[s:s + step])
        target = block.gather(1, targets[s:s + step, None])[:, 0]
        peak = block.amax(dim=-1, keepdim=True)
        block.sub_(peak).exp_()
        out[s:s + step] = block.sum(dim=-1).log_() + peak[:, 0] - target
    return out


def token_progress(progress: Progress | None, n_samples: int, note: str):
    if progress is None:
        return None

    def inner(done_tokens: int, total_tokens: int) -> None:
        report(progress, int(round(n_samples * done_tokens / max(total_tokens, 1))),
               n_samples, note)

    return inner


