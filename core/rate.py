"""LLM ratings for DS2: ask a rater model to score every sample, keep every answer.

The rating follows DS2 (METHODS.md §3; arXiv 2410.10877, repo UCSC-REAL/DS2,
``LLM_scoring/``): the rater judges a sample on Rarity, Complexity and Informativeness, each
1–10, and gives an Overall rating 1–10, answered as a JSON object with exactly DS2's keys
(``"Rarity"``, ``"Complexity"``, ``"Informativeness"``, ``"Overall rating"``). The prompt text
below is our own wording of the same request. Like DS2 it

- puts the task and criteria in the system message and the sample plus the answer format
  in the user message (as DS2's local-model script does);
- renders the sample as a conversation, one ``### <role>: <text>`` line per turn;
- asks the rater to spread its scores rather than pile them on one value;
- reads the *last* JSON object in the answer;
- treats an answer it cannot read as unrated. DS2 stores ``[0, 0, 0, 0]`` for it, which its
  score compression (clip the overall to [4, 9], minus 4) turns into class 0. We record the
  raw overall as NaN with the reason in ``parse_error``; ``ratings_for_curation`` hands DS2
  the value ``"unparseable"`` for it, which the ``ds2-10`` scale puts in class 0 (the same
  class) while the file keeps "unreadable" visible. A request that failed (``request_error``)
  or a sample not rated is no rating at all: missing for DS2.

Where we differ, on purpose: decoding is greedy (temperature 0) so a rerun asks the same
question and gets the same answer; DS2's API script re-asks up to 3 times when no JSON is
found, which at temperature 0 would return the same text, so we do not. The parser is more
forgiving than DS2's ``json.loads`` + ``int()`` (fenced blocks, single quotes, numbers as
strings, ``"7/10"``, a truncated object); a missing or invalid Rarity/Complexity/
Informativeness leaves that field NaN instead of discarding the overall rating, which is the
only field DS2 uses.

Two backends share the prompt and the parser:

- ``OpenAIRater``: any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM,
  llama.cpp server, ...), with bounded concurrency, retries with exponential backoff and
  jitter on timeouts, HTTP 429 (honouring Retry-After) and 5xx; other 4xx are not retried.
  The API key is read from an environment variable and is never written anywhere.
- ``LocalRater``: the local default LM (SmolLM2-135M-Instruct) with its chat template and
  greedy decoding: weak, but real and offline, for a few hundred rows.

Every raw answer is appended to ``ratings/<rater>/responses.jsonl`` in the workspace, keyed by
a hash of the exact request, so a rerun (after a kill, a cancel or a crash) never asks for an
answer it already has. The rating column file ``scores/rating_<rater>.parquet`` (sample_id,
rarity, complexity, informativeness, overall, parse_error, request_error) is written through
``Workspace.run_chunked``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from . import atomic
from .errors import InputError
from .progress import Progress, TqdmProgress, report
from .workspace import StepResult, Workspace, cache_key, now_iso

# ----- the prompt ----------------------------------------------------------------------------
PROMPT_VERSION = "ds2-rating-v1"
FIELDS = ("rarity", "complexity", "informativeness", "overall")
# The JSON keys the rater is asked for: DS2's own, so answers stay comparable to its ratings.
ANSWER_KEYS = {"rarity": "Rarity", "complexity": "Complexity",
               "informativeness": "Informativeness", "overall": "Overall rating"}
SCALE = (1.0, 10.0)
RATING_PREFIX = "rating_"
RATINGS_DIR = "ratings"
RESPONSES = "responses.jsonl"

SYSTEM_PROMPT = (
    "You judge the quality of training data for instruction-tuned language models. "
    "Look at one data sample and rate it on three criteria: Rarity, Complexity and "
    "Informativeness, each on a scale from 1 to 10. Then give an overall rating from 1 to 10; "
    "a higher number means a higher-quality sample.\n"
    "Use the whole scale. Do not give most samples the same score: when samples are of "
    "similar quality, let small differences between them show in your scores.")

USER_TEMPLATE = (
    "Rate the data sample below.\n\n"
    "## Data sample (conversation)\n"
    "{conversation}\n"
    "## Your answer\n"
    "Reply with whole numbers in this JSON format and nothing else:\n"
    + "{{" + ", ".join(f'"{key}": <1-10>' for key in ANSWER_KEYS.values()) + "}}")


def prompt_sha256() -> str:
    """Hash of the prompt wording: recorded with every rating file and request."""
    blob = json.dumps([PROMPT_VERSION, SYSTEM_PROMPT, USER_TEMPLATE])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _text(value: Any) -> str:
    """A text field as a string; missing values (None, NaN, pd.NA) are empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _conversation(instruction: str, input: str, output: str) -> str:
    """DS2's rendering of a sample: one ``### role: text`` line per turn."""
    user = _text(instruction)
    if _text(input).strip():
        user += "\n\n" + _text(input)
    return f"### user: {user}\n### assistant: {_text(output)}\n"


def rating_prompt(instruction: str, input: str, output: str) -> list[dict]:
    """The chat messages asking for a DS2 rating of one sample (system + user)."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(
                conversation=_conversation(instruction, input, output))}]


# ----- parsing the answer --------------------------------------------------------------------
@dataclass
class ParsedRating:
    """A parsed answer: the four fields (NaN where missing), or why it could not be read."""

    rating: dict | None
    error: str | None


_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:(?:/|out of)\s*10(?:\.0+)?)?\s*$",
                     re.IGNORECASE)
# "Overall rating": 7  |  'Rarity': '5'  |  Complexity = 6/10  (inside one object's text)
_PAIR_TEXT = (r"""["']?([A-Za-z][A-Za-z _-]{1,40}?)["']?\s*[:=]\s*["']?\s*"""
              r"""([-+]?\d+(?:\.\d+)?)(?:\s*/\s*10)?""")
_PAIR = re.compile(_PAIR_TEXT)
# In an object cut off by the token limit, a number at the very end may itself be cut
# ("1" of "10"): only pairs followed by a separator count there.
_PAIR_FINISHED = re.compile(_PAIR_TEXT + r"""(?=\s*["']?\s*[,;}\n])""")


def _field_of(key: str) -> str | None:
    """Which of the four fields a JSON key names (case, spaces and underscores ignored)."""
    k = re.sub(r"[^a-z]", "", str(key).lower())
    if k in ("rarity",):
        return "rarity"
    if k in ("complexity",):
        return "complexity"
    if k in ("informativeness", "informative", "informativity"):
        return "informativeness"
    if k in ("overallrating", "overall", "overallscore", "overallquality"):
        return "overall"
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        m = _NUMBER.match(value)
        if not m:
            return None
        number = float(m.group(1))
    else:
        return None
    return number if math.isfinite(number) else None


def _json_objects(text: str) -> list[tuple[str, bool]]:
    """Top-level ``({...}, True)`` spans of ``text`` in order (strings respected), plus an
    unclosed trailing ``({..., False)`` (an answer cut off by the token limit)."""
    spans, depth, start, quote, escaped = [], 0, -1, None, False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote or ch == "\n":
                quote = None
            continue
        if ch == '"' or (ch == "'" and depth > 0 and not text[i - 1].isalnum()):
            if depth > 0:
                quote = ch
            continue
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((text[start:i + 1], True))
    if depth > 0 and start >= 0:
        spans.append((text[start:], False))
    return spans


def _fields_from_json(obj: Any, found: dict) -> None:
    """Collect the four fields from a decoded object (nested objects searched too)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = _field_of(key)
            if name is not None and name not in found:
                if isinstance(value, dict):  # {"Overall rating": {"score": 7}}
                    inner = [v for v in value.values() if _number(v) is not None]
                    value = inner[0] if len(inner) == 1 else value
                found[name] = value
            elif isinstance(value, (dict, list)):
                _fields_from_json(value, found)
    elif isinstance(obj, list):
        for item in obj:
            _fields_from_json(item, found)


def _fields_of(candidate: str, closed: bool) -> dict:
    """The fields named in one object: real JSON first, else ``key: number`` pairs."""
    if closed:
        try:
            found: dict = {}
            _fields_from_json(json.loads(candidate), found)
            if found:
                return found
        except (json.JSONDecodeError, RecursionError):
            pass
    found = {}
    for key, value in (_PAIR if closed else _PAIR_FINISHED).findall(candidate):
        name = _field_of(key)
        if name is not None and name not in found:
            found[name] = value
    return found


def explain_rating(text: str | None) -> ParsedRating:
    """Parse a rater's answer, saying why when it cannot (``parse_rating`` without reason)."""
    if text is None or not str(text).strip():
        return ParsedRating(None, "empty answer")
    candidates = _json_objects(str(text))
    if not candidates:
        return ParsedRating(None, "no JSON object in the answer")
    error = "no overall rating in the JSON" if candidates[-1][1] else \
        "answer cut off before a complete overall rating"
    for candidate, closed in reversed(candidates):  # DS2 reads the last object
        found = _fields_of(candidate, closed)
        if "overall" not in found:
            continue
        overall = _number(found["overall"])
        if overall is None:
            error = f"overall rating is not a number: {str(found['overall'])[:40]!r}"
            continue
        if not SCALE[0] <= overall <= SCALE[1]:
            error = f"overall rating {overall:g} is outside 1-10"
            continue
        rating = {}
        for name in FIELDS:
            value = _number(found.get(name))
            ok = value is not None and SCALE[0] <= value <= SCALE[1]
            rating[name] = value if ok else float("nan")
        return ParsedRating(rating, None)
    return ParsedRating(None, error)


def parse_rating(text: str | None) -> dict | None:
    """The four fields of a DS2-style answer as floats (NaN where a criterion is missing),
    or None when no valid overall rating 1-10 can be read."""
    return explain_rating(text).rating


# ----- backends ------------------------------------------------------------------------------
@dataclass
class Completion:
    """One answer from a backend: its text and raw body, or the error that stopped it."""

    content: str | None = None
    raw: Any = None
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def public_url(url: str) -> str:
    """``url`` without user:password and query string: safe to record in files."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a 429/503 answer asks us to wait (``retry-after-ms`` or ``Retry-After`` as
    seconds or an HTTP date), or None when it does not say."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIRater:
    """Rates through an OpenAI-compatible ``POST {base_url}/chat/completions``.

    ``concurrency`` requests run at once (threads sharing one ``httpx.Client``). A request is
    retried up to ``max_retries`` times on a timeout, a connection error, HTTP 429, HTTP 5xx
    or an unreadable body, waiting ``backoff * 2**attempt`` seconds (at most
    ``max_backoff``) with jitter, or what Retry-After asks. Other 4xx answers are final and
    recorded as the row's error. The key comes from ``api_key_env`` (pass None or "" for a
    server without keys) and is never written to disk or put in an error message.
    """

    kind = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 60.0, max_retries: int = 5,
                 backoff: float = 1.0, max_backoff: float = 60.0, max_tokens: int = 128,
                 temperature: float = 0.0, max_retry_after: float = 600.0, seed: int = 0):
        parts = urlsplit(str(base_url or ""))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"base URL must look like https://host/v1, got {base_url!r}",
                             field="base_url")
        if not model:
            raise InputError("name the rater model (e.g. --model gpt-4o-mini)", field="model")
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or max_tokens < 1:
            raise InputError("concurrency and max_tokens must be >= 1, max_retries >= 0 and "
                             "timeout > 0", field="concurrency")
        self.base_url = str(base_url).rstrip("/")
        self.model = str(model)
        self.api_key_env = api_key_env or None
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.max_retry_after = float(max_retry_after)
        self._random = random.Random(seed)
        self._api_key = None
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise InputError(f"environment variable {self.api_key_env} is not set; export "
                                 "the API key there (or pass --api-key-env '' for a server "
                                 "that needs none)", field="api_key_env")
            self._api_key = key

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIRater(base_url={public_url(self.base_url)!r}, model={self.model!r})"

    def identity(self) -> dict:
        """What determines the answers: part of every request hash and of the cache key."""
        return {"backend": self.kind, "base_url": public_url(self.base_url),
                "model": self.model, "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    def describe(self) -> dict:
        """Identity plus how it was run (recorded in the sidecar; no secrets)."""
        return {**self.identity(), "api_key_env": self.api_key_env,
                "concurrency": self.concurrency, "timeout_s": self.timeout,
                "max_retries": self.max_retries}

    # -- one request --
    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _delay(self, attempt: int) -> float:
        cap = min(self.max_backoff, self.backoff * (2 ** attempt))
        return cap * (0.5 + 0.5 * self._random.random())  # jitter in [cap/2, cap]

    def _complete_one(self, client, messages: list[dict], stop: threading.Event) -> Completion:
        import httpx

        payload = {"model": self.model, "messages": messages,
                   "temperature": self.temperature, "max_tokens": self.max_tokens}
        url = self.base_url + "/chat/completions"
        start = time.perf_counter()
        error = "cancelled"
        for attempt in range(self.max_retries + 1):
            if stop.is_set():
                return Completion(error="cancelled", attempts=attempt)
            wait = None
            try:
                resp = client.post(url, json=payload)
            except httpx.TimeoutException:
                error = f"timed out after {self.timeout:g}s"
            except httpx.TransportError as err:
                error = f"connection failed ({type(err).__name__})"
            else:
                snippet = self._redact(resp.text[:300].replace("\n", " "))
                if resp.status_code == 200:
                    try:
                        body = resp.json()
                        content = body["choices"][0]["message"]["content"]
                        if content is not None and not isinstance(content, str):
                            raise TypeError("content is not text")
                    except (ValueError, KeyError, IndexError, TypeError) as err:
                        error = f"unreadable response body ({type(err).__name__}): {snippet}"
                    else:
                        return Completion(content=content or "", raw=body,
                                          attempts=attempt + 1,
                                          seconds=time.perf_counter() - start)
                elif resp.status_code == 429 or resp.status_code >= 500:
                    error = f"HTTP {resp.status_code}: {snippet}"
                    wait = retry_after_seconds(resp.headers)
                else:  # the request itself is wrong: asking again will not help
                    return Completion(error=f"HTTP {resp.status_code}: {snippet}",
                                      attempts=attempt + 1,
                                      seconds=time.perf_counter() - start)
            if attempt == self.max_retries:
                break
            delay = min(wait, self.max_retry_after) if wait is not None else self._delay(attempt)
            if stop.wait(delay):
                return Completion(error="cancelled", attempts=attempt + 1)
        return Completion(error=f"{error} (gave up after {self.max_retries + 1} attempts)",
                          attempts=self.max_retries + 1, seconds=time.perf_counter() - start)

    def complete_many(self, requests: Sequence[list[dict]],
                      on_result: Callable[[int, Completion], None],
                      progress: Progress | None = None) -> None:
        """Ask for every message list; ``on_result(i, completion)`` runs in the calling thread
        as each finishes. If ``progress`` raises (cancel), requests not yet started are
        dropped, those in flight are finished and handed to ``on_result``, then it re-raises.
        """
        import httpx

        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        stop = threading.Event()
        total = len(requests)
        handled: set[int] = set()
        with httpx.Client(timeout=self.timeout, headers=headers) as client, \
                ThreadPoolExecutor(max_workers=self.concurrency,
                                   thread_name_prefix="rate") as pool:
            futures = {pool.submit(self._complete_one, client, messages, stop): i
                       for i, messages in enumerate(requests)}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    handled.add(i)
                    on_result(i, future.result())
                    report(progress, len(handled), total, "")
            except BaseException:
                stop.set()
                for future in futures:
                    future.cancel()
                for future, i in futures.items():  # keep answers already paid for
                    if i in handled or future.cancelled():
                        continue
                    try:
                        on_result(i, future.result())
                    except Exception:  # pragma: no cover - cleanup must not mask the cause
                        pass
                raise


class LocalRater:
    """Rates with a local causal LM (default SmolLM2-135M-Instruct), greedy, offline.

    ``model`` is None (the default LM), a local Hugging Face folder, or an already loaded
    ``core.lm.LoadedLM``. The prompt goes through the tokenizer's chat template; generation
    stops at ``max_new_tokens`` (DS2's JSON answer needs about 40).
    """

    kind = "local"

    def __init__(self, model: Any = None, max_new_tokens: int = 60, device: str = "auto",
                 dtype: str = "auto", threads: int | None = None):
        if max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1", field="max_new_tokens")
        if threads is not None and threads < 1:
            raise InputError("threads must be at least 1", field="threads")
        self.model = model
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self.dtype = dtype
        self.threads = threads
        self._lm = model if hasattr(model, "tokenizer") and hasattr(model, "model") else None

    def __repr__(self) -> str:
        return f"LocalRater(model={self.lm.name if self._lm else self.model!r})"

    @property
    def lm(self):
        if self._lm is None:
            from .lm import load_causal_lm

            self._lm = load_causal_lm(self.model, device=self.device, dtype=self.dtype)
        return self._lm

    def identity(self) -> dict:
        lm = self.lm
        template = getattr(lm.tokenizer, "chat_template", None) or ""
        return {"backend": self.kind, "model": lm.name, "model_identity": lm.identity,
                "dtype": lm.dtype, "decoding": "greedy",
                "max_new_tokens": self.max_new_tokens,
                "chat_template_sha256": hashlib.sha256(
                    str(template).encode("utf-8")).hexdigest()[:16]}

    def describe(self) -> dict:
        return {**self.identity(), "model_path": self.lm.path, "device": self.lm.device,
                "threads": self.threads}

    def _generate(self, messages: list[dict]) -> Completion:
        import torch

        lm = self.lm
        tok = lm.tokenizer
        start = time.perf_counter()
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        limit = int(getattr(lm.model.config, "max_position_embeddings", 0) or 0)
        n_prompt = int(enc["input_ids"].shape[1])
        if limit and n_prompt + self.max_new_tokens > limit:
            return Completion(error=f"prompt too long for the model ({n_prompt} tokens + "
                                    f"{self.max_new_tokens} new > {limit})")
        enc = {k: v.to(lm.device) for k, v in enc.items()}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = lm.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                    pad_token_id=pad)
        new = out[0, n_prompt:]
        content = tok.decode(new, skip_special_tokens=True)
        return Completion(content=content, raw={"prompt_tokens": n_prompt,
                                                "completion_tokens": int(new.shape[0])},
                          seconds=time.perf_counter() - start)

    def complete_many(self, requests: Sequence[list[dict]],
                      on_result: Callable[[int, Completion], None],
                      progress: Progress | None = None) -> None:
        """Generate one answer at a time; ``on_result`` then ``progress`` after each.

        ``threads`` (if set) applies to torch only while generating and is restored after:
        on a busy CPU one thread decodes several times faster than two fighting for cores.
        """
        import torch

        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for i, messages in enumerate(requests):
                on_result(i, self._generate(messages))
                report(progress, i + 1, len(requests), "")
        finally:
            if self.threads:
                torch.set_num_threads(before)


# ----- the response cache --------------------------------------------------------------------
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


# ----- the workspace step --------------------------------------------------------------------
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
COLUMNS = ("sample_id", *FIELDS, "parse_error", "request_error")


def check_rater_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"rater name {name!r} must be letters, digits, '-' or '_' (no dots; "
                         "at most 64 characters), e.g. gpt4o-mini", field="name")
    return name


def rating_score_name(rater_name: str) -> str:
    """The score name of a rater's ratings: ``rating_<rater>``."""
    return RATING_PREFIX + check_rater_name(rater_name)


def rating_path(ws: Workspace, rater_name: str) -> Path:
    """``scores/rating_<rater>.parquet``: what DS2 curation reads (column ``overall``)."""
    return ws.path("scores", rating_score_name(rater_name) + ".parquet")


def responses_path(ws: Workspace, rater_name: str) -> Path:
    return ws.path(RATINGS_DIR, check_rater_name(rater_name), RESPONSES)


def rater_names(ws: Workspace) -> list[str]:
    """Raters with a rating file in ``ws``."""
    return [s[len(RATING_PREFIX):] for s in ws.score_names() if s.startswith(RATING_PREFIX)]


UNPARSEABLE = "unparseable"


def ratings_for_curation(ws: Workspace, rater_name: str) -> pd.Series:
    """A rater's overall ratings for DS2, one per sample in ``sample_id`` order.

    A parsed answer gives its number; an answer that could not be read gives the string
    ``"unparseable"`` (DS2 puts it in class 0 under the ds2-10 scale, as its reference does);
    a sample not rated, or whose request failed, gives NaN (missing: not a rating at all).
    """
    path = rating_path(ws, rater_name)
    if not path.exists():
        raise InputError(f"no ratings from rater {rater_name!r} yet; run `python -m core rate "
                         f"--workspace {ws.root} --name {rater_name} ...`", file=str(path))
    frame = ws.read_score(rating_score_name(rater_name))[["sample_id", "overall",
                                                           "parse_error"]]
    values = frame["overall"].astype(object)
    values[frame["parse_error"].notna()] = UNPARSEABLE
    ids = np.sort(ws.samples(["sample_id"])["sample_id"].to_numpy(np.int64))
    out = pd.Series(values.to_numpy(), index=frame["sample_id"].to_numpy(np.int64),
                    dtype=object).reindex(ids)
    out.index.name = "sample_id"
    return out.rename("overall")


def _row(sample_id: int, content: str | None, error: str | None) -> dict:
    row = {"sample_id": int(sample_id), **{f: float("nan") for f in FIELDS},
           "parse_error": None, "request_error": error}
    if error is None:
        parsed = explain_rating(content)
        if parsed.rating is not None:
            row.update(parsed.rating)
        else:
            row["parse_error"] = parsed.error
    return row


def _rows_with_request_errors(ws: Workspace, name: str, key: str) -> set[int]:
    """Ids whose stored rating (final file or unfinished chunks, same key) is a failed
    request: these are asked again."""
    def read(path: Path) -> pd.DataFrame:
        return pd.read_parquet(path, columns=["sample_id", "request_error"])

    frames = []
    meta = ws.meta(name)
    if meta is not None and meta.get("key") == key:
        frames.append(ws.read_cached(ws.path(name), read))
    parts = ws.path(name + ".parts", key)
    if parts.exists():
        frames += [ws.read_cached(p, read) for p in sorted(parts.glob("chunk-*.parquet"))]
    ids: set[int] = set()
    for f in frames:
        if f is not None:  # absent, or damaged (deleted: run_chunked asks again)
            ids.update(int(i) for i in f.loc[f["request_error"].notna(), "sample_id"])
    return ids


def run_rate(ws: Workspace, backend, rater_name: str, sample_ids: Sequence[int] | None = None,
             progress: Progress | None = None, chunk_size: int = 128,
             retry_errors: bool = True, force: bool = False) -> StepResult:
    """Rate samples of ``ws`` with ``backend`` into ``scores/rating_<rater_name>.parquet``.

    ``sample_ids=None`` rates every sample; a later call with more ids extends the file.
    Answers are cached in ``ratings/<rater_name>/responses.jsonl``, so a killed or cancelled
    run resumes without asking twice. Rows whose request failed (``request_error``) are asked
    again on the next run unless ``retry_errors=False``. The sidecar records the backend,
    model, endpoint (without secrets), prompt version and hash, and the counts.
    """
    score = rating_score_name(rater_name)
    name = f"scores/{score}.parquet"
    samples = ws.samples(["sample_id", "instruction", "input", "output"])
    samples = samples.set_index("sample_id", drop=False).sort_index()
    if sample_ids is None:
        wanted = samples.index.to_numpy(np.int64)
    else:
        wanted = np.asarray(sorted({int(i) for i in sample_ids}), dtype=np.int64)
        missing = np.setdiff1d(wanted, samples.index.to_numpy(np.int64))
        if len(missing):
            raise InputError(f"{len(missing)} sample ids are not in the workspace (first: "
                             f"{int(missing[0])})", file=str(ws.root), field="sample_id")
    if chunk_size < 1:
        raise InputError("chunk size must be at least 1", field="chunk_size")

    identity = backend.identity()
    params = {"prompt_version": PROMPT_VERSION, "prompt_sha256": prompt_sha256(), **identity}
    inputs = {"samples": ws.samples_fingerprint()}
    key = cache_key(params, inputs)
    if not force and retry_errors:
        failed = _rows_with_request_errors(ws, name, key)
        if failed:
            # Recompute everything stored plus what is asked: answers come from the cache,
            # only the failed requests go out again.
            meta = ws.meta(name)
            if ws.path(name).exists() and meta is not None and meta.get("key") == key:
                stored = pd.read_parquet(ws.path(name), columns=["sample_id"])["sample_id"]
                wanted = np.union1d(wanted, stored.to_numpy(np.int64))
            wanted = np.union1d(wanted, np.asarray(sorted(failed), dtype=np.int64))
            force = True

    cache = ResponseCache(responses_path(ws, rater_name))
    stats = {"requests": 0, "cached": 0, "attempts": 0, "request_errors": 0}
    state = {"done": 0, "total": len(wanted)}

    def outer(done: int, total: int, note: str = "") -> None:
        state["done"], state["total"] = done, total
        report(progress, done, total, note)

    def inner(done: int, total: int, note: str = "") -> None:
        if done < total:  # the chunk's last answer is reported once the chunk is on disk
            report(progress, state["done"] + done, state["total"], note)

    def compute(chunk_ids: np.ndarray) -> pd.DataFrame:
        rows = samples.loc[chunk_ids]
        messages = [rating_prompt(q, i, a) for q, i, a in
                    zip(rows["instruction"], rows["input"], rows["output"])]
        hashes = [request_hash(identity, m) for m in messages]
        answers: dict[int, tuple[str | None, str | None]] = {}
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
                cache.add({"request_hash": hashes[k], "sample_id": int(chunk_ids[k]),
                           "created": now_iso(), "backend": identity["backend"],
                           "model": identity.get("model"), "prompt_version": PROMPT_VERSION,
                           "content": done.content, "response": done.raw,
                           "attempts": done.attempts, "seconds": round(done.seconds, 3)})
            else:
                stats["request_errors"] += 1

        if todo:
            backend.complete_many([messages[k] for k in todo], on_result,
                                  progress=lambda d, t, n="": inner(
                                      len(chunk_ids) - len(todo) + d, len(chunk_ids), n))
        out = pd.DataFrame([_row(sid, *answers[k]) for k, sid in enumerate(chunk_ids)],
                           columns=list(COLUMNS))
        # one text dtype for the reasons, so chunks without any reason concatenate cleanly
        return out.astype({"parse_error": "str", "request_error": "str"})

    start = time.perf_counter()
    result = ws.run_chunked(
        name, params=params, inputs=inputs, sample_ids=wanted, compute=compute,
        chunk_size=chunk_size, progress=outer if progress is not None else None, force=force,
        extra_meta={"rater": rater_name, "backend": backend.describe(),
                    "prompt_version": PROMPT_VERSION,
                    "prompt_sha256": prompt_sha256(), "scale": "1-10 (DS2)",
                    "responses": str(Path(RATINGS_DIR, rater_name, RESPONSES)),
                    "unparsed": "overall is NaN with the reason in parse_error; for DS2 "
                                "it is 'unparseable' = class 0 under ds2-10, as in the "
                                "reference",
                    "request_failed": "overall is NaN with the error in request_error: not "
                                      "a rating; rerun to ask again",
                    "ds2": {"rating_column": "overall", "scale": "ds2-10",
                            "values": "core.rate.ratings_for_curation(ws, rater)"}})
    if result.cached:
        return result
    frame = result.value
    meta = dict(result.meta)
    meta["counts"] = {"rows": int(len(frame)), "parsed": int(frame["overall"].notna().sum()),
                      "unparsed": int(frame["parse_error"].notna().sum()),
                      "request_errors": int(frame["request_error"].notna().sum())}
    meta["last_run"] = {**stats, "duration_s": round(time.perf_counter() - start, 3),
                        "finished": now_iso()}
    atomic.write_json(ws.sidecar_path(ws.path(name)), meta)
    return StepResult(frame, meta, False)


# ----- CLI -----------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    """Add ``rate`` to the ``python -m core`` argument parser."""
    from .args import non_negative_int, positive_float, positive_int, seed

    p = subparsers.add_parser(
        "rate", help="rate samples with an LLM (DS2 prompt; OpenAI-compatible API or local)",
        description="Ask an LLM for DS2's Rarity/Complexity/Informativeness/Overall (1-10) "
                    "rating of each sample; writes scores/rating_NAME.parquet for DS2 "
                    "curation. Answers are cached in ratings/NAME/responses.jsonl, so a rerun "
                    "resumes and never pays for the same answer twice.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    p.add_argument("--backend", choices=["openai", "local"], required=True,
                   help="openai = any OpenAI-compatible API; local = the small offline LM")
    p.add_argument("--name", required=True,
                   help="rater name (letters, digits, - or _): the output is "
                        "scores/rating_NAME.parquet")
    p.add_argument("--base-url", default="https://api.openai.com/v1",
                   help="API base URL, up to /v1 (openai backend)")
    p.add_argument("--model", default=None,
                   help="model name for the API (required with --backend openai), or a local "
                        "Hugging Face folder (local backend; default SmolLM2-135M-Instruct)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key ('' for none)")
    p.add_argument("--concurrency", type=positive_int, default=8,
                   help="requests at once (openai)")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds per request (openai)")
    p.add_argument("--max-retries", type=non_negative_int, default=5,
                   help="retries per request (openai)")
    p.add_argument("--max-tokens", type=positive_int, default=None,
                   help="answer length limit in tokens (default 128 for openai as in DS2, "
                        "60 for local)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads while generating (local; 1 is faster on a busy CPU)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sample", type=positive_int, metavar="N",
                       help="rate a random N samples")
    which.add_argument("--limit", type=positive_int, metavar="N", help="rate the first N samples")
    p.add_argument("--seed", type=seed, default=0, help="seed for --sample (default 0)")
    p.add_argument("--chunk-size", type=positive_int, default=128,
                   help="rows per chunk of the rating file (answers are cached one by one)")
    p.add_argument("--no-retry-errors", action="store_true",
                   help="keep failed requests from earlier runs instead of asking again")
    p.add_argument("--force", action="store_true",
                   help="rebuild the rating file (cached answers are still reused)")
    p.set_defaults(func=_cli_rate)


def choose_sample_ids(ws: Workspace, sample: int | None = None, seed: int = 0,
                      limit: int | None = None) -> np.ndarray | None:
    """Ids for ``--sample N --seed S`` (random, seeded) or ``--limit N`` (first N)."""
    if sample is None and limit is None:
        return None
    ids = np.sort(ws.samples(["sample_id"])["sample_id"].to_numpy(np.int64))
    n = sample if sample is not None else limit
    if n < 1:
        raise InputError("--sample/--limit must be at least 1", field="sample")
    if limit is not None:
        return ids[:n]
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=min(n, len(ids)), replace=False))


def _cli_rate(args) -> int:
    ws = Workspace.open(args.workspace)
    check_rater_name(args.name)
    if args.backend == "openai":
        if not args.model:
            raise InputError("--model is required with --backend openai (e.g. gpt-4o-mini)",
                             field="model")
        backend = OpenAIRater(args.base_url, args.model, api_key_env=args.api_key_env,
                              concurrency=args.concurrency, timeout=args.timeout,
                              max_retries=args.max_retries,
                              max_tokens=args.max_tokens or 128)
    else:
        backend = LocalRater(args.model, max_new_tokens=args.max_tokens or 60,
                             threads=args.threads)
    ids = choose_sample_ids(ws, args.sample, args.seed, args.limit)
    with TqdmProgress(f"rate {args.name}", unit="sample") as bar:
        result = run_rate(ws, backend, args.name, sample_ids=ids, progress=bar,
                          chunk_size=args.chunk_size, retry_errors=not args.no_retry_errors,
                          force=args.force)
    frame = result.value
    counts = {"parsed": int(frame["overall"].notna().sum()),
              "unparsed": int(frame["parse_error"].notna().sum()),
              "errors": int(frame["request_error"].notna().sum())}
    run = (result.meta or {}).get("last_run", {})
    from .text import terminal_safe

    what = "up to date" if result.cached else "wrote"
    print(terminal_safe(f"{what} {rating_path(ws, args.name)}: {len(frame):,} rows; parsed "
                        f"{counts['parsed']:,}, unparsed {counts['unparsed']:,}, request "
                        f"errors {counts['errors']:,}"))
    if not result.cached:
        print(f"  requests sent {run.get('requests', 0):,}, answers from cache "
              f"{run.get('cached', 0):,}")
    if counts["errors"]:
        print("  failed requests are kept as errors; rerun the same command to ask again")
    return 0
