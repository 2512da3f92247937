"""A plain, per-sample reference for the LM scores, written apart from core/scores/ifd.py.

One Hugging Face forward pass per sequence, the full logits, and torch's CrossEntropyLoss on
the answer positions (labels −100 elsewhere), the way Cherry LLM's loop computes its losses.
The prompt templates are restated here from docs/methods.md so a typo in the engine's copy shows
up as a test failure. Used by tests/test_ifd.py and bench/ifd.py as the baseline.
"""

from __future__ import annotations

import math

import torch

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
WIZARD_WITH_INPUT = "{instruction}\n{input}\n\n### Response:"
WIZARD_WITHOUT_INPUT = "{instruction}\n\n### Response:"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's "
                 "questions.")
VICUNA_WITH_INPUT = VICUNA_SYSTEM + " USER: {instruction}\nInput:\n{input} ASSISTANT:"
VICUNA_WITHOUT_INPUT = VICUNA_SYSTEM + " USER: {instruction} ASSISTANT:"
# Reflection-Tuning's reversed instruction, without any template around it.
REVERSED = ("Below is the response to an instruction, please guess the corresponding "
            "instruction for the given response.\n{answer}\nGenerate the instruction for the "
            "above response.")


def start_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
        else tokenizer.eos_token_id


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def prompt_for(template: str, instruction: str, input: str, tokenizer) -> str:
    if template == "none":
        return instruction + "\n" + (input + "\n" if input.strip() else "")
    if template == "alpaca":
        if input.strip():
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
        return ALPACA_WITHOUT_INPUT.format(instruction=instruction)
    if template == "wiz":
        if input.strip():
            return WIZARD_WITH_INPUT.format(instruction=instruction, input=input)
        return WIZARD_WITHOUT_INPUT.format(instruction=instruction)
    if template == "vicuna":
        if input.strip():
            return VICUNA_WITH_INPUT.format(instruction=instruction, input=input)
        return VICUNA_WITHOUT_INPUT.format(instruction=instruction)
    user = instruction + ("\n" + input if input.strip() else "")
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


def direct_prefix_for(template: str, tokenizer) -> str:
    if template == "none":
        return ""
    if template in ("alpaca", "wiz"):
        return "### Response:"
    if template == "vicuna":
        return "ASSISTANT:"
    # the chat template's generation prompt: render with and without it, keep the difference
    msgs = [{"role": "user", "content": "y"}]
    a = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    b = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    return a[len(b):]


def begin(tokenizer, ids: list[int]) -> list[int]:
    s = start_id(tokenizer)
    return ids if ids[:1] == [s] else [s] + ids


def answer_ids(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): joint tokenisation unless it merges across the boundary."""
    p = ids_of(tokenizer, prompt)
    whole = ids_of(tokenizer, prompt + answer)
    if whole[:len(p)] == p:
        return p, whole[len(p):]
    return p, ids_of(tokenizer, answer)


def mean_nll_of_tail(model, ids: list[int], n_tail: int) -> float:
    """Mean NLL of the last n_tail tokens: one forward, full logits, CrossEntropyLoss."""
    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, :len(ids) - n_tail] = -100
    with torch.no_grad():
        logits = model(x).logits.float()
    loss = torch.nn.CrossEntropyLoss(ignore_index=-100)(logits[0, :-1], labels[0, 1:])
    return float(loss)


def ifd_one(model, tokenizer, instruction: str, input: str, output: str, template: str,
            max_length: int) -> dict:
    if not output.strip():
        return {"missing_reason": "empty_answer"}
    p, a = answer_ids(tokenizer, prompt_for(template, instruction, input, tokenizer), output)
    cond = begin(tokenizer, p) + a
    cond = cond[:max_length]
    n = len(cond) - len(begin(tokenizer, p))
    if n <= 0:
        return {"missing_reason": "answer_truncated_away"}
    direct = begin(tokenizer, ids_of(tokenizer, direct_prefix_for(template, tokenizer))) \
        + a[:n]
    lc = mean_nll_of_tail(model, cond, n)
    ld = mean_nll_of_tail(model, direct, n)
    return {"loss_conditioned": lc, "loss_direct": ld, "ifd": lc / ld,
            "ifd_ppl": math.exp(lc - ld), "answer_tokens": n, "truncated": n < len(a),
            "missing_reason": None}


def rifd_one(model, tokenizer, instruction: str, input: str, output: str,
             max_length: int, template: str = "none") -> dict:
    """Reflection-Tuning's data_analysis.py: the reversed instruction rendered as a template's
    no-input prompt, then instruction + input glued together."""
    q = instruction + (input if input.strip() else "")
    answer = output
    answer_tokens = ids_of(tokenizer, output)
    keep = len(answer_tokens)
    cut = False
    while True:
        reversed_prompt = prompt_for(template, REVERSED.format(answer=answer), "", tokenizer)
        p, qi = answer_ids(tokenizer, reversed_prompt, q)
        if len(begin(tokenizer, p)) + len(qi) <= max_length:
            break
        if keep == 0:
            return {"rifd_missing_reason": "instruction_too_long"}
        keep -= 1  # one token at a time: slow and obviously right
        cut = True
        answer = tokenizer.decode(answer_tokens[:keep], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)
    lc = mean_nll_of_tail(model, begin(tokenizer, p) + qi, len(qi))
    ld = mean_nll_of_tail(model, begin(tokenizer, []) + qi, len(qi))
    return {"loss_reverse_conditioned": lc, "loss_reverse_direct": ld, "rifd": lc / ld,
            "rifd_ppl": math.exp(lc - ld), "instruction_tokens": len(qi),
            "reverse_truncated": cut, "rifd_missing_reason": None}


def recost_one(model, tokenizer, instruction: str, input: str, output: str, demos: list,
               template: str, max_length: int) -> dict:
    """demos: (instruction, input, output) most similar first; placed least similar first."""
    p, a = answer_ids(tokenizer, prompt_for(template, instruction, input, tokenizer), output)
    n = min(len(a), max_length - len(begin(tokenizer, p)))
    layout = template if template in ("none", "alpaca") else "none"
    text = "".join(prompt_for(layout, d[0], d[1], tokenizer) + d[2] + "\n\n"
                   for d in demos[::-1])
    k = ids_of(tokenizer, text)
    room = max_length - 1 - len(p) - n
    k = k[len(k) - room:] if room < len(k) else k
    plain = mean_nll_of_tail(model, begin(tokenizer, p) + a[:n], n)
    know = mean_nll_of_tail(model, [start_id(tokenizer)] + k + p + a[:n], n)
    return {"entropy_plain": plain, "entropy_knowledge": know, "recost": plain - know,
            "demo_tokens": len(k)}
