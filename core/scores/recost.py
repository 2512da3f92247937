"""RECOST-style relative predictive entropy against trusted data (arXiv 2402.17355, our
reading; docs/methods.md §4): H(A|Q) − H(A|demos, Q), with the k most similar trusted
examples retrieved by instruction embeddings as in-context demonstrations. High = the trusted
knowledge makes this response more predictable = consistent with trusted data.

``run_recost`` is the workspace step (scores/recost.parquet); it reuses IFD's conditioned
loss as the plain entropy when scores/ifd.parquet was made with the same model and prompt.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..lm import (DEFAULT_TOKEN_BUDGET, as_text, encode, render_prompt, sequence_losses,
                  token_progress)
from ..progress import Progress, TqdmProgress
from ..workspace import SAMPLES, Step
from .ifd import (IFD_NAME, IFD_SCORE, check_lengths, ifd_pair, lm_params, load_scoring_lm,
                  score_summary, scoring_frame)

RECOST_COLUMNS = ["entropy_plain", "entropy_knowledge", "recost", "demo_rows",
                  "demo_tokens", "recost_missing_reason"]


def demonstration_text(template: str, demos: Sequence[tuple], tokenizer=None) -> str:
    """The in-context demonstrations, least similar first (so the most similar example sits
    next to the question and left truncation drops the least similar first). ``demos`` is in
    retrieval order (most similar first), each ``(instruction, input, output)``. Demos use the
    sample's template for none/alpaca and the plain (none) layout for chat."""
    layout = template if template in ("none", "alpaca") else "none"
    parts = [render_prompt(layout, d[0], d[1] if len(d) > 1 else "", tokenizer)
             + as_text(d[2] if len(d) > 2 else "") + "\n\n" for d in reversed(list(demos))]
    return "".join(parts)


_NO_ANSWER = ("empty_answer", "answer_truncated_away")


def recost_scores(lm, instructions: Sequence, inputs: Sequence | None, outputs: Sequence,
                  demos: Sequence[Sequence[tuple]], template: str = "none",
                  max_length: int = 512, knowledge_max_length: int | None = None,
                  entropy_plain: Sequence[float] | None = None,
                  token_budget: int = DEFAULT_TOKEN_BUDGET,
                  progress: Progress | None = None) -> pd.DataFrame:
    """RECOST-style relative predictive entropy (docs/methods.md §4, our reading of arXiv
    2402.17355).

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
    n = check_lengths(instructions, inputs, outputs, demos)
    if entropy_plain is not None and len(entropy_plain) != n:
        raise InputError("entropy_plain must have one value per sample")
    kmax = int(knowledge_max_length or 2 * max_length)
    tok, start = lm.tokenizer, int(lm.start_token_id)
    seqs, missing, demo_tokens = [], [], []
    for i in range(n):
        pair = ifd_pair(tok, start, render_prompt(template, instructions[i], inputs[i], tok),
                         [], as_text(outputs[i]), max_length)
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
    losses = sequence_losses(lm, seqs, token_budget, token_progress(progress, n, "RECOST"))
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


def demonstrations(rows: pd.DataFrame, ref_rows: Sequence[tuple], ref_emb: np.ndarray, k: int,
                   embed_model=None) -> tuple[list[list[tuple]], list[list[int]]]:
    """The ``k`` trusted (Q, X, A) rows retrieved for each row of ``rows`` by instruction
    embedding, never the row itself (docs/methods.md §4), and their reference positions."""
    from ..embed import embed_texts, embedding_text

    emb = embed_texts(embedding_text(rows, "instruction"), model=embed_model)
    keys = [row_text(a, b, c) for a, b, c in zip(rows["instruction"], rows["input"],
                                                  rows["output"])]
    idx, _ = retrieve_demos(emb, ref_emb, k, keys, [row_text(*r) for r in ref_rows])
    picked = [[int(j) for j in r if j >= 0] for r in idx]
    return [[ref_rows[j] for j in r] for r in picked], picked


def row_text(instruction: Any, input: Any, output: Any) -> str:
    """The exact-duplicate key of a row (instruction, input, output)."""
    return "\x1f".join((as_text(instruction), as_text(input), as_text(output)))


RECOST_SCORE = "scores/recost.parquet"
REFERENCE_EMBEDDINGS = "recost_reference.npy"


def _reference_frame(ws, reference: str):
    """Reference rows and a fingerprint: a dataset file, or a saved selection's name (read
    and checked by ``core.select.load_selection``; its fingerprint is the chosen ids)."""
    import hashlib
    import json
    from pathlib import Path

    from ..paths import is_valid_name
    from ..select import list_selections, load_selection
    from ..workspace import sha256_file

    path = Path(reference)
    if path.is_file():
        from ..io import read_dataset

        samples = read_dataset(path).samples
        return samples, {"reference": str(path.resolve()), "sha256": sha256_file(path)}
    if is_valid_name(reference) and reference in list_selections(ws):
        chosen = sorted(int(i) for i in load_selection(ws, reference)["sample_ids"])
        samples = ws.samples(["sample_id", "instruction", "input", "output"])
        samples = samples[samples["sample_id"].isin(chosen)].reset_index(drop=True)
        digest = hashlib.sha256(json.dumps(chosen).encode("utf-8")).hexdigest()
        return samples, {"reference": f"selection:{reference}", "sample_ids_sha256": digest}
    raise InputError(f"reference {reference!r} is neither a dataset file nor a saved selection "
                     f"(saved: {', '.join(list_selections(ws)) or 'none'})",
                     field="reference")


def reference_embeddings(ws, reference_fp: dict, texts: Sequence[str], embed_model=None
                         ) -> np.ndarray:
    """The trusted set's instruction embeddings, cached in the workspace
    (``recost_reference.npy``) under the reference's fingerprint and the embedding model, so
    a rerun of RECOST against the same reference does not embed it again."""
    from ..embed import embed_texts
    from ..workspace import NPY

    step = Step(REFERENCE_EMBEDDINGS, {"embed_model": str(embed_model or "default"),
                                       "text": "instruction", "precision": "fp32"},
                external={"reference": reference_fp}, codec=NPY)
    return ws.run_whole(step, lambda: embed_texts(texts, model=embed_model)).value


def run_recost(ws, reference: str, k: int = 5, model=None, template: str = "none",
               max_length: int = 512, knowledge_max_length: int | None = None,
               dtype: str = "auto", embed_model=None,
               progress: Progress | None = None, chunk_size: int = 256,
               token_budget: int = DEFAULT_TOKEN_BUDGET, force: bool = False,
               executor=None):
    """RECOST scores of every sample into scores/recost.parquet against a trusted reference
    set (a dataset file or a saved selection). Reuses IFD's loss_conditioned as entropy_plain
    when scores/ifd.parquet was made with the same model, dtype, template and max_length.
    ``executor`` computes the chunks (core/executors: local, or Ray)."""
    from ..embed import embedding_text

    if k < 1:
        raise InputError("k must be at least 1", field="k")
    from ..lm.models import resolve_model

    lm = load_scoring_lm(resolve_model(model, ws), dtype,  # "brief": the workspace's model
                         executor)
    frame, ids = scoring_frame(ws, None)
    ref, ref_fp = _reference_frame(ws, reference)
    if len(ref) == 0:
        raise InputError("the reference set is empty", field="reference")
    for col in ("input", "output"):
        if col not in ref:
            ref[col] = ""
    ref_emb = reference_embeddings(ws, ref_fp, embedding_text(ref, "instruction"), embed_model)
    ref_rows = list(zip(ref["instruction"].map(as_text), ref["input"].map(as_text),
                        ref["output"].map(as_text)))
    plain_params = lm_params(lm, template=template, max_length=int(max_length))
    reuse = None
    meta = ws.meta(IFD_SCORE)
    if meta is not None and ws.exists(IFD_SCORE) and meta.get("params") == plain_params \
            and meta.get("inputs", {}).get("samples") == ws.samples_fingerprint():
        prev = ws.read_score(IFD_NAME, ["sample_id", "loss_conditioned"])
        reuse = dict(zip(prev["sample_id"].tolist(), prev["loss_conditioned"].tolist()))
    def compute(chunk: np.ndarray, chunk_progress) -> pd.DataFrame:
        rows = frame.loc[chunk]
        demos, picked = demonstrations(rows, ref_rows, ref_emb, k, embed_model)
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
                      pd.Series(picked, dtype=object, index=scores.index))
        return scores

    params = {**plain_params, "k": int(k), "embed_model": str(embed_model or "default"),
              "knowledge_max_length": int(knowledge_max_length or 2 * max_length),
              "demo_layout": "template, least similar first, left-truncated"}
    step = Step(RECOST_SCORE, params, inputs={"samples": SAMPLES},
                external={"reference": ref_fp},
                meta={**lm.meta(), "reference": ref_fp, "reused_ifd_entropy": reuse is not None})
    return ws.run_chunked(step, ids, compute, chunk_size=chunk_size, progress=progress,
                          force=force, executor=executor)


def cli_recost(args) -> int:
    from ..text import terminal_safe
    from ..workspace import Workspace

    from ..executors import executor_from_args

    executor = executor_from_args(args)
    ws = Workspace.open(args.workspace)
    start = time.perf_counter()
    with TqdmProgress("RECOST", unit="sample") as bar:
        res = run_recost(ws, args.reference, k=args.k, model=args.model,
                         template=args.template, max_length=args.max_length,
                         knowledge_max_length=args.knowledge_length, dtype=args.dtype,
                         progress=bar, chunk_size=args.chunk_size, force=args.force,
                         executor=executor)
    state = "up to date" if res.cached else "wrote"
    print(terminal_safe(f"{state} {ws.path('scores', 'recost.parquet')}"))
    print(terminal_safe(score_summary(res.value, "recost", "recost_missing_reason"),
                        keep_newlines=True))
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0
