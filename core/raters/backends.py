"""Backends that answer chat requests: any OpenAI-compatible endpoint, or the local LM.

A backend is what a step asks (``rate`` with the DS2 rating prompt, later ``reflect`` with a
teacher's prompts; docs/architecture.md). It knows nothing of prompts, parsing or
workspaces; each has

- ``identity()``: what determines its answers (part of every request hash and cache key);
- ``describe()``: identity plus how it was run, for the sidecar (no secrets);
- ``complete_many(requests, on_result, progress)``: answer every message list, calling
  ``on_result(i, Completion)`` in the calling thread as each finishes.

``OpenAIRater``: any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM,
llama.cpp server, ...), with bounded concurrency, retries with exponential backoff and jitter
on timeouts, HTTP 429 (honouring Retry-After) and 5xx; other 4xx are not retried. The API key
is read from an environment variable and is never written anywhere (redacted from errors).
``LocalRater``: the local default LM (SmolLM2-135M-Instruct) with its chat template and
greedy decoding: weak, but real and offline, for a few hundred rows.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from ..errors import InputError
from ..progress import Progress, report


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
            from ..lm import load_causal_lm

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

