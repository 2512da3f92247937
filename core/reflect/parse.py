"""Reading the teacher's answers: the text between the bracket markers (docs/methods.md §2a).

Instruction reflection answers ``[New Instruction] ... [End]`` and ``[New Answer] ... [End]``;
response reflection answers ``[Better Answer] ... [End]``. Like the reference's postprocess
scripts (Reflection_Tuning ``reflection_code/*_postprocess.py``) we also accept the colon
spellings (``New Instruction:``, ``New Answer:``), end the instruction at ``[End]`` or at the
answer's marker, and let an answer run to the end of the text when ``[End]`` is missing (a
teacher cut off by its token limit). Every parse returns a status, never raises:

- ``ok``: the version exists;
- ``no_markers``: none of the markers is in the text;
- ``no_instruction`` / ``no_answer`` (instruction reflection), ``empty_answer`` (response
  reflection): a marker is there but what follows is empty or only the prompt's own
  placeholder ("your instruction", "your answer", "N/A").

Where we differ from the reference, on purpose: it keeps a half-parsed pair by putting the
original instruction or answer in the missing half (a new instruction with the old answer is
not a pair anyone wrote), we make no version; it reads only the first marker, we skip a
segment that merely repeats the prompt's placeholder and read the next; it drops an answer
that contains "N/A" anywhere, we only one that is nothing else; it ends a better answer at
the word "End" anywhere (so "Endpoints" would cut it), we only at ``[End]``; and when several
``[Better Answer]`` segments are given it keeps none, we keep the last real one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OK = "ok"
NO_MARKERS = "no_markers"
NO_INSTRUCTION = "no_instruction"
NO_ANSWER = "no_answer"
EMPTY_ANSWER = "empty_answer"
STATUSES = (OK, NO_MARKERS, NO_INSTRUCTION, NO_ANSWER, EMPTY_ANSWER)

_PLACEHOLDERS = {"", "your instruction", "your answer", "your new instruction",
                 "your new answer", "your better answer", "n/a", "none", "..."}
_END = r"\[\s*end\s*\]"
_NEW_INSTRUCTION = re.compile(r"\[\s*new instruction\s*\]|new instruction\s*:", re.I)
_NEW_ANSWER = re.compile(r"\[\s*new answer\s*\]|new answer\s*:", re.I)
_BETTER_ANSWER = re.compile(r"\[\s*better answer\s*\]|better answer\s*:", re.I)
_INSTRUCTION_END = re.compile(rf"{_END}|\[\s*new answer\s*\]|new answer\s*:", re.I)
_ANSWER_END = re.compile(_END, re.I)
_BETTER_END = re.compile(rf"{_END}|\[\s*better answer\s*\]|better answer\s*:", re.I)
_TRAILING_NUMBER = re.compile(r"\n\s*\d+\.\s*$")  # "...\n\n3." left before the next part
_DECORATION = re.compile(r"^[\s*_#:]+|[\s*_#]+$")  # markdown bold around a marker


@dataclass(frozen=True)
class InstructionReflection:
    instruction: str | None
    answer: str | None
    status: str


@dataclass(frozen=True)
class ResponseReflection:
    answer: str | None
    status: str


def _clean(segment: str) -> str:
    text = _TRAILING_NUMBER.sub("", segment)
    return _DECORATION.sub("", text).strip()


def _is_placeholder(text: str) -> bool:
    return " ".join(text.lower().split()).strip(".:") in _PLACEHOLDERS | {""}


def _segments(text: str, start: re.Pattern, end: re.Pattern, need_end: bool) -> list[str]:
    """Text after each ``start`` marker up to the next ``end`` marker (or the end of the
    text unless ``need_end``), cleaned, placeholders left out."""
    found = []
    for match in start.finditer(text):
        stop = end.search(text, match.end())
        if stop is None and need_end:
            continue
        segment = _clean(text[match.end():stop.start() if stop else len(text)])
        if not _is_placeholder(segment):
            found.append(segment)
    return found


def parse_instruction_reflection(text: str | None) -> InstructionReflection:
    """The new instruction and its answer from an instruction-reflection answer."""
    text = text if isinstance(text, str) else ""
    has_q, has_a = _NEW_INSTRUCTION.search(text), _NEW_ANSWER.search(text)
    if not has_q and not has_a:
        return InstructionReflection(None, None, NO_MARKERS)
    instructions = _segments(text, _NEW_INSTRUCTION, _INSTRUCTION_END, need_end=True)
    if not instructions:
        return InstructionReflection(None, None, NO_INSTRUCTION)
    answers = _segments(text, _NEW_ANSWER, _ANSWER_END, need_end=False)
    if not answers:
        return InstructionReflection(instructions[0], None, NO_ANSWER)
    return InstructionReflection(instructions[0], answers[0], OK)


def parse_response_reflection(text: str | None) -> ResponseReflection:
    """The better answer from a response-reflection answer (the last real segment)."""
    text = text if isinstance(text, str) else ""
    if not _BETTER_ANSWER.search(text):
        return ResponseReflection(None, NO_MARKERS)
    answers = _segments(text, _BETTER_ANSWER, _BETTER_END, need_end=False)
    if not answers:
        return ResponseReflection(None, EMPTY_ANSWER)
    return ResponseReflection(answers[-1], OK)
