"""The teacher's two reflection prompts (docs/methods.md §2a), in our own words.

Selective Reflection-Tuning (arXiv 2402.10110, tianyi-lab/Reflection_Tuning
``reflection_code/reflect_instruction.py`` and ``reflect_response.py``) asks a teacher LLM two
things, each as a system message (the teacher's role) and a user message (the sample, then
the task):

- **instruction reflection**: criticise the instruction (complexity of the topic, level of
  detail required, knowledge required, ambiguity, logical reasoning or problem solving), the
  answer (helpfulness, relevance, accuracy, level of details) and how the one led to the
  other; then write a new, complete instruction, relevant to but independent of the original
  and hard to answer directly, between ``[New Instruction]`` and ``[End]``, and answer it in
  detail between ``[New Answer]`` and ``[End]``;
- **response reflection**: criticise the answer by the same four answer criteria and write a
  better, complete, detailed answer between ``[Better Answer]`` and ``[End]``.

The bracket markers are the method's answer format (``parse.py`` reads them). The sample is
laid out as the reference does: ``[Instruction]``, the input in its own section when it is
not empty, the answer between start and end lines, then ``[System]`` and the task. One
difference, on purpose: the reference's instruction reflection leaves the input out (the
teacher sees an instruction such as "Summarise this text" without the text); we show it in
its own section as response reflection does. ``PROMPT_VERSION`` names this wording; its hash
is recorded with every answer.
"""

from __future__ import annotations

import hashlib

PROMPT_VERSION = "reflect-v1"

INSTRUCTION_SYSTEM = ("You are a helpful, precise and picky assistant who checks the quality "
                      "of an instruction given to an AI assistant.")
RESPONSE_SYSTEM = ("You are a helpful, precise and picky assistant who checks the quality of "
                   "the answer an AI assistant gave to an instruction.")

INSTRUCTION_TASK = (
    "Answer the following questions about the quality of the instruction above.\n"
    "1. Why is this instruction not good? First analyse it by the Complexity of the Topic, "
    "the Level of Detail Required, the Knowledge Required, the Ambiguity of the Instruction, "
    "and the Logical Reasoning or Problem-Solving Involved. Then analyse why the answer is "
    "not good for this instruction, by its Helpfulness, Relevance, Accuracy and Level of "
    "Details. Finally, analyse how the weak instruction led to the weak answer.\n"
    "2. Using your analysis, write a new and complete instruction that is complex and hard "
    "to answer directly. It must be relevant to the original instruction but independent "
    "of it: someone who never saw the original must be able to answer it. Write it as "
    "[New Instruction] your instruction [End]\n"
    "3. Answer your new instruction in as much detail as you can. Write it as "
    "[New Answer] your answer [End]\n")

RESPONSE_TASK = (
    "Answer the following questions about the quality of the answer above.\n"
    "1. Why is this answer not good for the instruction{and_input}? Analyse it by its "
    "Helpfulness, Relevance, Accuracy and Level of Details.\n"
    "2. Using your analysis, write a better answer: new, complete and as detailed as "
    "possible. Write it as [Better Answer] your answer [End]\n")


def _sample_block(instruction: str, input_text: str, output: str) -> str:
    parts = [f"[Instruction]\n{instruction}\n\n"]
    if input_text:
        parts.append(f"[The Start of Input]\n{input_text}\n\n[The End of Input]\n\n")
    parts.append(f"[The Start of Answer]\n{output}\n\n[The End of Answer]\n\n")
    return "".join(parts)


def _text(value) -> str:
    return value.strip() if isinstance(value, str) else ""


def instruction_reflection(instruction, input_text, output) -> list[dict]:
    """Chat messages asking the teacher for a new instruction and its answer."""
    block = _sample_block(_text(instruction), _text(input_text), _text(output))
    return [{"role": "system", "content": INSTRUCTION_SYSTEM},
            {"role": "user", "content": f"{block}[System]\n{INSTRUCTION_TASK}\n"}]


def response_reflection(instruction, input_text, output) -> list[dict]:
    """Chat messages asking the teacher for a better answer to the same instruction."""
    inp = _text(input_text)
    block = _sample_block(_text(instruction), inp, _text(output))
    task = RESPONSE_TASK.format(and_input=" and its input" if inp else "")
    return [{"role": "system", "content": RESPONSE_SYSTEM},
            {"role": "user", "content": f"{block}[System]\n{task}\n"}]


def prompt_sha256() -> str:
    """Hash of every prompt text: recorded with the versions, part of their cache key."""
    blob = "\x00".join([PROMPT_VERSION, INSTRUCTION_SYSTEM, RESPONSE_SYSTEM, INSTRUCTION_TASK,
                        RESPONSE_TASK])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
