"""The vocabulary step of the LM engine (core/lm/losses.py) against torch's cross-entropy."""

import torch
import torch.nn.functional as F

from core.lm import losses


def _case(rows=70, hidden=16, vocab=300, bias=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(rows + vocab)
    head = torch.nn.Linear(hidden, vocab, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g))
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=g))
    h = torch.randn(rows, hidden, generator=g) * 3
    t = torch.randint(0, vocab, (rows,), generator=g)
    return head, h, t


def test_nll_matches_cross_entropy_over_several_blocks(monkeypatch):
    monkeypatch.setattr(losses, "LOGIT_ROWS", 32)  # 70 rows: three logit blocks, uneven
    monkeypatch.setattr(losses, "NLL_ROWS", 8)
    for bias in (False, True):
        head, h, t = _case(bias=bias)
        got = losses._head_nll(head, h, t)
        want = F.cross_entropy(head(h).float(), t, reduction="none")
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-5), bias


def test_nll_of_a_head_that_is_not_linear(monkeypatch):
    monkeypatch.setattr(losses, "LOGIT_ROWS", 32)
    head, h, t = _case()
    wrapped = torch.nn.Sequential(head)
    want = F.cross_entropy(head(h), t, reduction="none")
    assert torch.allclose(losses._head_nll(wrapped, h, t), want, atol=1e-4, rtol=1e-5)


def test_bf16_head_casts_like_autocast():
    head, h, t = _case(dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(h, head.weight)
    want = F.cross_entropy(logits.float(), t, reduction="none")
    assert torch.allclose(losses._head_nll(head, h, t), want, atol=1e-4, rtol=1e-4)


def test_steady_heap_is_set_once():
    first = losses.steady_heap()
    assert losses.steady_heap() is first
