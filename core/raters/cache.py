"""The response cache: every answer a backend gave, kept so it is never asked for twice.

Answers are appended to a JSONL file in the workspace (``ratings/<rater>/responses.jsonl``
for ``rate``), keyed by a hash of the exact request (backend identity + messages), so a
rerun after a kill, a cancel or a crash never asks for an answer it already has.
``ask_cached`` is the loop every step that asks a backend uses: cached answers first, the
rest from the backend, each new answer on disk as soon as it arrives.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

from ..workspace import now_iso
from .backends import Completion


def request_hash(identity: dict, messages: list[dict]) -> str:
    """Hash of one exact request (backend identity + messages): the response cache key."""
    blob = json.dumps({"identity": identity, "messages": messages}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Append-only JSONL of raw answers, one line per answered sample, keyed by request hash.

    Only successful answers are kept (a failed request is asked again next run); in memory
    only the answer text is held (the raw bodies stay on disk). Each line is
    written with one ``write`` and flushed, so a kill can at worst cut the last line, which is
    skipped on reading and never glued to the next one. Appending cannot go through the
    atomic whole-file writes without rewriting the file per answer.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.entries: dict[str, str | None] = {}  # request hash -> answer text
        self.skipped_lines = 0
        if self.path.exists():
            with open(self.path, "rb") as fh:  # bytes: a cut line may end inside a character
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        entry = json.loads(line)
                        self.entries[entry["request_hash"]] = entry.get("content")
                    except (ValueError, KeyError, TypeError):
                        self.skipped_lines += 1

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def content(self, key: str) -> str | None:
        """The cached answer text for a request hash (check ``in`` first)."""
        return self.entries.get(key)

    def add(self, entry: dict) -> None:
        data = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+") as fh:
                end = fh.seek(0, os.SEEK_END)
                if end > 0:  # a killed write may have left a line without its newline
                    fh.seek(end - 1)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data
                fh.write(data)  # append mode: always at the end, in one write
                fh.flush()
            self.entries[entry["request_hash"]] = entry.get("content")


def ask_cached(backend, requests: Sequence[list[dict]], cache: ResponseCache,
               record: Callable[[int], dict], progress: Callable[..., None] | None = None,
               stats: dict | None = None) -> list[tuple[str | None, str | None]]:
    """``(text, error)`` for every request: from ``cache`` when it was answered before, else
    from ``backend.complete_many``. Each new successful answer is appended to ``cache`` at
    once, with ``record(i)`` saying what request ``i`` was about (its sample id, the prompt
    version), so a kill or a cancel never loses an answer already paid for; a failed request
    is not cached and is asked again next time. ``progress(done, total, note)`` counts cached
    answers as done; ``stats`` counts ``requests``, ``cached``, ``attempts`` and
    ``request_errors``."""
    stats = {} if stats is None else stats
    for counter in ("requests", "cached", "attempts", "request_errors"):
        stats.setdefault(counter, 0)
    identity = backend.identity()
    hashes = [request_hash(identity, m) for m in requests]
    answers: list[tuple | None] = [None] * len(requests)
    todo = []
    for k, h in enumerate(hashes):
        if h in cache:
            answers[k] = (cache.content(h), None)
            stats["cached"] += 1
        else:
            todo.append(k)

    def on_result(j: int, done: Completion) -> None:
        k = todo[j]
        if done.error == "cancelled":
            return
        stats["requests"] += 1
        stats["attempts"] += done.attempts
        answers[k] = (done.content, done.error)
        if done.ok:
            cache.add({"request_hash": hashes[k], **record(k), "created": now_iso(),
                       "backend": identity["backend"], "model": identity.get("model"),
                       "content": done.content, "response": done.raw,
                       "attempts": done.attempts, "seconds": round(done.seconds, 3)})
        else:
            stats["request_errors"] += 1

    if todo:
        cached = len(requests) - len(todo)
        backend.complete_many([requests[k] for k in todo], on_result,
                              progress=None if progress is None else
                              lambda d, t, n="": progress(cached + d, len(requests), n))
    return [a if a is not None else (None, "cancelled") for a in answers]
