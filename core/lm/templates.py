"""Prompt templates and the token rules every LM score shares (docs/methods.md §1).

- Templates: ``none`` (Superfiltering: "{instruction}\n{input}\n"), ``alpaca`` (Cherry LLM's
  Alpaca prompt), ``wiz`` (Cherry LLM and Reflection-Tuning: "{instruction}\n{input}\n\n###
  Response:"), ``vicuna`` (Reflection-Tuning's default: "... USER: {instruction}\nInput:\n{input}
  ASSISTANT:") and the model's own ``chat`` template. The direct pass reads the template's
  answer header before A ("### Response:" for alpaca and wiz, "ASSISTANT:" for vicuna, as
  Cherry LLM's ``data_analysis_vic.py``; nothing for none). The template is recorded with
  every score.
- Start token: every sequence begins with exactly one start token (BOS, else EOS); text is
  tokenised without special tokens and the start token prepended, unless the rendered text
  already begins with it (chat templates).
- Boundary: prompt and prompt+answer are tokenised; when the prompt's tokens are a prefix of
  the joint tokens, the answer tokens are the rest (the reference rule). When the tokenizer
  merges characters across the boundary, the prompt and the answer are tokenised separately
  and concatenated, so no token straddles the boundary and the direct pass scores the very
  same answer token ids.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import InputError

TEMPLATES = ("none", "alpaca", "wiz", "vicuna", "chat")

# Cherry LLM's Alpaca prompt (data_analysis.py); the direct pass reads "### Response:" + A.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
ALPACA_DIRECT_PREFIX = "### Response:"

# WizardLM's prompt as Cherry LLM (data_analysis_vic.py) and Reflection-Tuning
# (data_analysis.py) write it; the direct pass reads "### Response:" + A.
WIZ_PROMPT_INPUT = "{instruction}\n{input}\n\n### Response:"
WIZ_PROMPT_NO_INPUT = "{instruction}\n\n### Response:"
WIZ_DIRECT_PREFIX = "### Response:"

# Vicuna's prompt (Reflection-Tuning's default); the direct pass reads "ASSISTANT:" + A.
VICUNA_PROMPT_INPUT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions. "
    "USER: {instruction}\nInput:\n{input} ASSISTANT:")
VICUNA_PROMPT_NO_INPUT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions. "
    "USER: {instruction} ASSISTANT:")
VICUNA_DIRECT_PREFIX = "ASSISTANT:"

# Text templates: (with input, without input, direct-pass prefix).
TEXT_TEMPLATES = {
    "alpaca": (ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, ALPACA_DIRECT_PREFIX),
    "wiz": (WIZ_PROMPT_INPUT, WIZ_PROMPT_NO_INPUT, WIZ_DIRECT_PREFIX),
    "vicuna": (VICUNA_PROMPT_INPUT, VICUNA_PROMPT_NO_INPUT, VICUNA_DIRECT_PREFIX),
}

# ----- texts --------------------------------------------------------------------------------
def as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def question_text(instruction: Any, input: Any = "") -> str:
    """Q as plain text: the instruction, then "\\n" + input when the input is not empty."""
    instruction, input = as_text(instruction), as_text(input)
    return instruction + ("\n" + input if input.strip() else "")


def render_prompt(template: str, instruction: Any, input: Any = "", tokenizer=None) -> str:
    """prompt(Q) for a template (docs/methods.md §1); the answer text follows it directly."""
    instruction, input = as_text(instruction), as_text(input)
    has_input = bool(input.strip())
    if template == "none":
        return f"{instruction}\n{input}\n" if has_input else f"{instruction}\n"
    if template in TEXT_TEMPLATES:
        with_input, without_input, _ = TEXT_TEMPLATES[template]
        if has_input:
            return with_input.format(instruction=instruction, input=input)
        return without_input.format(instruction=instruction)
    if template == "chat":
        require_chat_template(tokenizer)
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question_text(instruction, input)}],
            tokenize=False, add_generation_prompt=True)
    raise InputError(f"unknown prompt template {template!r}; use one of {', '.join(TEMPLATES)}",
                     field="template")


def direct_prefix(template: str, tokenizer=None) -> str:
    """What the direct pass reads before A: nothing (none), "### Response:" (alpaca, wiz),
    "ASSISTANT:" (vicuna), or the chat template's assistant header (the text its generation
    prompt adds)."""
    if template == "none":
        return ""
    if template in TEXT_TEMPLATES:
        return TEXT_TEMPLATES[template][2]
    if template == "chat":
        require_chat_template(tokenizer)
        msgs = [{"role": "user", "content": "x"}]
        with_gen = tokenizer.apply_chat_template(msgs, tokenize=False,
                                                 add_generation_prompt=True)
        without = tokenizer.apply_chat_template(msgs, tokenize=False,
                                                add_generation_prompt=False)
        return with_gen[len(without):] if with_gen.startswith(without) else ""
    raise InputError(f"unknown prompt template {template!r}; use one of {', '.join(TEMPLATES)}",
                     field="template")


def require_chat_template(tokenizer) -> None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InputError("this model has no chat template; use --template none, alpaca, "
                         "wiz or vicuna", field="template")


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


