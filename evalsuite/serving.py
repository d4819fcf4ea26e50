"""Generation through an OpenAI-compatible server (vLLM, TGI, llama.cpp's server, hosted APIs).

``evalsuite run --server URL`` (or a ``server:`` block in the suite) sends each prompt of a generate task to
``{base_url}/chat/completions`` instead of generating in-process:

- the task's generation settings become the request: ``max_tokens`` = ``max_new_tokens``; greedy is
  ``temperature: 0``; sampling sends ``temperature``, ``top_p``; ``seed`` is always sent (servers that
  honour it give the same sample again). The server applies its own chat template, so a server run records
  no template hash and is comparable only with other server runs;
- an example that offers tools sends them (``tools``, OpenAI's shape) and the task's ``tool_choice`` when it
  sets one; a reply whose message holds ``tool_calls`` is kept with them, and its output text is
  ``{"content": ..., "tool_calls": [...]}`` as JSON (:func:`reply_output`), which the tool-call metric reads;
- at most ``concurrency`` requests in flight (a thread pool: the work is waiting on sockets);
- a 408, 429 or 5xx reply, a refused or dropped connection or a timeout is retried ``retries`` times with
  exponential backoff (``backoff_s`` doubled per attempt, at most ``MAX_BACKOFF_S``; a ``Retry-After``
  header is honoured within that bound); any other 4xx (bad key, unknown model) fails at once;
- every successful reply is kept in a response cache on disk, keyed by the sha256 of the request without
  its URL (model, messages, settings): a re-run, or the rest of an interrupted run, pays only for what it
  has not asked yet. Moving the server to another host keeps the cache valid; changing the model name, a
  prompt or a setting does not hit it.

Before any work :func:`connect` asks ``/models`` once: an unreachable server, a rejected key or an unknown
model name is a :class:`ServerUnreachable` (``evalsuite run`` exits 2 before loading or generating
anything; a server without ``/models`` is accepted when the model is named). A request that still fails
after its retries is a :class:`ServerError` naming the example.

The cache trusts the model name: a different model served under the same name would get the old replies,
so give it another name (or another ``cache`` folder).

:class:`ChatClient` (one POST with retries) is also what the LLM judge's ``openai`` backend sends through.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_BACKOFF_S = 30.0
RETRYABLE_STATUS = (408, 429)  # and every 5xx


class ServerError(ValueError):
    """A request failed after its retries, or the server is misconfigured; the message is one line.
    ``status``: the last HTTP status the server answered with (None: no HTTP answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServerUnreachable(ServerError):
    """The server cannot be used at all (no answer, rejected key, unknown model): found before any work."""


class ServerConfig(BaseModel):
    """Where and how to generate: an OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="the server's base URL up to /v1, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(default=None, description="the served model's name (default: the one model the server lists)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (sent as a Bearer token when set)")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    retries: int = Field(4, ge=0, description="retries of a request after a 408/429/5xx reply, a connection error or a timeout")
    backoff_s: float = Field(1.0, ge=0, description="wait before the first retry; doubled for each further one (at most 30 s)")
    timeout_s: float = Field(300, gt=0, description="seconds to wait for one reply")
    cache: str | None = Field("evals/server-cache", description="response cache folder (relative to the suite file); null: no cache")


# ---------------------------------------------------------------------------------------------- HTTP


class ChatClient:
    """POSTs to an OpenAI-compatible endpoint with retries; stdlib only (urllib), safe to share between threads.

    ``attempts`` counts HTTP requests actually sent (a test reads it to see that retries happened)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300, retries: int = 4,
                 backoff_s: float = 1.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.attempts = 0
        self._lock = threading.Lock()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _send(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        with self._lock:
            self.attempts += 1
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, headers=self._headers(),
                                         method="GET" if body is None else "POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
            return json.loads(resp.read())

    def get(self, path: str) -> dict[str, Any]:
        """One GET, no retry (a preflight: a dead server should fail at once); ServerError with the reason."""
        try:
            return self._send(path, None)
        except urllib.error.HTTPError as exc:
            raise ServerError(_http_error(exc), exc.code) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise ServerError(_connection_error(exc)) from None

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON reply to one POST, retried on 408/429/5xx, connection errors, timeouts and unreadable
        replies; ServerError ("HTTP 503: ... after 5 attempts") when every attempt failed, at once on another 4xx."""
        error, status = "", None
        for attempt in range(self.retries + 1):
            wait_s = self.backoff_s * 2**attempt
            try:
                return self._send(path, body)
            except urllib.error.HTTPError as exc:
                error, status = _http_error(exc), exc.code
                if exc.code not in RETRYABLE_STATUS and exc.code < 500:
                    raise ServerError(error, status) from None  # a client error does not heal by retrying (bad key, unknown model)
                after = exc.headers.get("Retry-After") if exc.headers else None
                if after and after.strip().isdigit():
                    wait_s = max(wait_s, float(after))
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                error, status = _connection_error(exc), None
            except ValueError as exc:  # a 200 whose body is not JSON (a proxy's error page)
                error, status = f"unreadable reply: {exc}", None
            if attempt < self.retries:
                time.sleep(min(wait_s, MAX_BACKOFF_S))
        raise ServerError(f"{error} (after {self.retries + 1} attempts)", status)

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/chat/completions`` with ``body``; the reply's first choice ``{"content", "finish_reason"}``, plus
        ``tool_calls`` (OpenAI's shape, as the server sent them) when its message has any."""
        reply = self.post("/chat/completions", body)
        try:
            choice = reply["choices"][0]
            out = {"content": choice["message"].get("content") or "", "finish_reason": choice.get("finish_reason")}
            if choice["message"].get("tool_calls"):
                out["tool_calls"] = choice["message"]["tool_calls"]
            return out
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ServerError(f"a reply without choices[0].message: {json.dumps(reply)[:200]}") from None


def reply_output(reply: dict[str, Any]) -> str:
    """The output text of one reply: its content, or, when it holds ``tool_calls``, the JSON text
    ``{"content": ..., "tool_calls": [...]}`` (the calls as the server sent them), so the calls reach the metrics
    and examples.parquet as text (:func:`evalsuite.metrics.toolcall.parse_tool_calls` reads it)."""
    if not reply.get("tool_calls"):
        return reply.get("content") or ""
    return json.dumps({"content": reply.get("content") or None, "tool_calls": reply["tool_calls"]}, ensure_ascii=False)


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read()[:200].decode(errors="replace")
    except OSError:
        text = ""
    return f"HTTP {exc.code}: {' '.join(text.split())}"


def _connection_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return f"{type(exc).__name__}: {reason}"


# ---------------------------------------------------------------------------------------------- cache


class ResponseCache:
    """Replies on disk, one JSON file per request key (``<folder>/<2 hex>/<sha256>.json``), written atomically
    (a run killed mid-write leaves no half file). ``hits`` and ``misses`` count lookups of this instance."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored reply of ``key``, or None (also for a file that does not read back as JSON)."""
        try:
            value = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            value = None
        with self._lock:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` as the reply of ``key`` (written to a temporary file, then renamed: readers never see
        half a file)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


def request_key(body: dict[str, Any]) -> str:
    """The cache key of a request body: sha256 of its canonical JSON (the URL is not part of it)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def request_body(model: str, messages: Sequence[dict[str, Any]], max_new_tokens: int, sample: bool = False,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, tools: list[dict[str, Any]] | None = None,
                 tool_choice: str | dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``/chat/completions`` body for one conversation under a task's generation settings; ``tools`` (and
    ``tool_choice``, only with tools) are sent when given, so a request without them is what it always was
    (and hits the same cache entry)."""
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], "max_tokens": max_new_tokens, "seed": seed}
    if sample:
        body.update(temperature=temperature, top_p=top_p)
    else:
        body["temperature"] = 0  # greedy
    if tools:
        body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
    return body


# ---------------------------------------------------------------------------------------------- generation


class Server:
    """A connected server: the client, the model name it serves, the cache (or None)."""

    def __init__(self, cfg: ServerConfig, client: ChatClient, model: str, cache: ResponseCache | None):
        self.cfg, self.client, self.model, self.cache = cfg, client, model, cache
        self.answered = 0  # replies the server gave (after any retries)
        self.cached = 0  # replies read from the cache instead
        self._lock = threading.Lock()

    @property
    def description(self) -> dict[str, Any]:
        """What results.json records: ``{"base_url", "model"}``."""
        return {"base_url": self.client.base_url, "model": self.model}

    def generate(self, conversations: Sequence[Sequence[dict[str, Any]]], max_new_tokens: int = 256, sample: bool = False,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, names: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None, tools: Sequence[list[dict[str, Any]] | None] | None = None,
                 tool_choice: Sequence[str | dict[str, Any] | None] | None = None) -> list[dict[str, Any]]:
        """``{"content", "finish_reason"}`` (and ``tool_calls`` when the reply has them) per conversation, in input
        order; cached replies are not asked again. ``tools[i]`` / ``tool_choice[i]``: what conversation ``i``
        offers and how it must choose (see :func:`request_body`). ``progress(1)`` is called as each reply
        arrives. The first request that fails after its retries stops the run: ServerError naming the example
        (``names[i]``, else its index)."""
        n = len(conversations)
        offered = list(tools) if tools is not None else [None] * n
        choices = list(tool_choice) if tool_choice is not None else [None] * n
        if not len(offered) == len(choices) == n:
            raise ValueError(f"{n} conversations, {len(offered)} tool lists, {len(choices)} tool choices")
        bodies = [request_body(self.model, c, max_new_tokens, sample, temperature, top_p, seed, t, k)
                  for c, t, k in zip(conversations, offered, choices)]
        out: list[dict[str, Any] | None] = [None] * len(bodies)

        def one(i: int) -> None:
            key = request_key(bodies[i])
            reply = self.cache.get(key) if self.cache else None
            if reply is None:
                try:
                    reply = self.client.chat(bodies[i])
                except ServerError as exc:
                    raise ServerError(f"example {names[i] if names else i}: {exc}") from None
                if self.cache:
                    self.cache.put(key, reply)
                with self._lock:
                    self.answered += 1
            else:
                with self._lock:
                    self.cached += 1
            out[i] = reply
            if progress:
                progress(1)

        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            futures = [pool.submit(one, i) for i in range(len(bodies))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                for f in futures:
                    f.cancel()  # what has not started is not sent
                raise failed.exception()  # type: ignore[misc]
        return out  # type: ignore[return-value]


def connect(cfg: ServerConfig, base_dir: str | Path | None = None) -> Server:
    """A :class:`Server` for ``cfg``, after one ``GET /models``: ServerUnreachable when the server does not
    answer, rejects the key, or does not serve ``cfg.model`` (or, without a model, serves several)."""
    client = ChatClient(cfg.base_url, os.environ.get(cfg.api_key_env), cfg.timeout_s, cfg.retries, cfg.backoff_s)
    try:
        listing = client.get("/models")
    except ServerError as exc:
        if exc.status != 404 or cfg.model is None:
            raise ServerUnreachable(f"server {client.base_url} cannot be used: {exc}") from None
        listing = {}  # a gateway without /models: it answered, and the model is named; the first request will tell
    served = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)] if isinstance(listing, dict) else []
    model = cfg.model
    if model is None:
        if len(served) != 1:
            raise ServerUnreachable(f"server {client.base_url} serves {served or 'no model'}: name one with --server-model (or `model:` under `server:`)")
        model = served[0]
    elif served and model not in served:
        # some gateways list nothing useful; a list that does not name the model is a typo worth stopping for
        raise ServerUnreachable(f"server {client.base_url} does not serve model {model!r} (it serves {served})")
    cache = None
    if cfg.cache:
        folder = Path(cfg.cache)
        cache = ResponseCache(folder if folder.is_absolute() or base_dir is None else Path(base_dir) / folder)
    return Server(cfg, client, model, cache)
