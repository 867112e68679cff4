"""The client of a project's upstream: the rented OpenAI-compatible model that editloop sits in front of.

One aiohttp `ClientSession` per process and event loop (one connection pool for every upstream: aiohttp, because
httpx's async client spent five times the CPU per request, the largest share of the gateway's own cost;
benchmarks/README.md, gateway). A call is retried by tenacity on 429,
5xx and connection errors, waiting the upstream's `Retry-After` when it sends one (one longer than
`upstream_retry_max_wait_s` is not waited for: the answer would come too late to be of use), else an exponential
backoff with jitter. A stream is retried only until its response headers arrive: once its body is being read, a
byte may have reached the editor, and a second generation would not continue the first. Whatever fails in the end
is an `UpstreamUnavailable` (502) or `UpstreamTimeout` (504) that names the cause; the key, read from the serving
process's environment, is cut out of every message."""

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from core.errors import EditloopError, InvalidInput, UpstreamTimeout, UpstreamUnavailable
from core.settings import Settings
from trainers.config import UpstreamSettings

UPSTREAM = "upstream"
RETRYABLE_STATUS = frozenset((408, 409, 429, 500, 502, 503, 504))
DROPPED = ("model", "metadata", "stream", "stream_options")  # ours to set, or editloop's own (metadata)


class _Retryable(Exception):
    """A failed attempt worth another: a retryable status (with the upstream's Retry-After) or a connection error."""

    def __init__(self, cause: str, retry_after: float | None = None, timeout: bool = False) -> None:
        super().__init__(cause)
        self.cause, self.retry_after, self.timeout = cause, retry_after, timeout


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished upstream generation, as the gateway records it."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    provider_model: str


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace")
    inner = data.get("error") if isinstance(data, dict) else None
    if isinstance(inner, dict):
        return str(inner.get("message", inner))[:300]
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("message") or inner or data)[:300]
    return str(data)[:300]


@dataclass(frozen=True, slots=True)
class _Request:
    url: str
    body: bytes
    headers: dict[str, str]


class Upstream:
    """One per process, made on first use. `call` returns the whole answer; `stream` yields parsed SSE chunks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # No total limit: a stream may last as long as it keeps sending; each read waits at most the read timeout.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.upstream_connect_timeout_s,
            sock_connect=settings.upstream_connect_timeout_s,
            sock_read=settings.upstream_read_timeout_s,
        )

    def _client(self) -> aiohttp.ClientSession:
        """The session of the running event loop (a session is bound to the loop it was made in)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.settings.upstream_max_connections, limit_per_host=0)
            # trust_env: HTTPS_PROXY / NO_PROXY are honoured, as they were with httpx.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, skip_auto_headers=("User-Agent",), trust_env=True
            )
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    # -- requests ------------------------------------------------------------------------------------------------

    def _request(self, upstream: UpstreamSettings, chat: bool, body: dict[str, Any], stream: bool) -> _Request:
        if not upstream.configured:
            raise InvalidInput("model: `upstream` needs the project's settings upstream.url and upstream.model")
        assert upstream.url is not None
        forwarded = {k: v for k, v in body.items() if k not in DROPPED and v is not None}
        forwarded["model"] = upstream.model
        if stream:
            forwarded["stream"] = True
            forwarded["stream_options"] = {"include_usage": True}  # the token counts that cost comes from
        headers = {"content-type": "application/json"}
        key = self._key(upstream)
        if key:
            headers["authorization"] = f"Bearer {key}"
        path = "/chat/completions" if chat else "/completions"
        return _Request(upstream.url.rstrip("/") + path, orjson.dumps(forwarded), headers)

    def _key(self, upstream: UpstreamSettings) -> str | None:
        if not upstream.api_key_env:
            return None
        key = os.environ.get(upstream.api_key_env)
        if not key:
            raise UpstreamUnavailable(
                f"upstream: the environment variable {upstream.api_key_env} named by upstream.api_key_env is not set"
                " in the serving process"
            )
        return key

    def _redact(self, upstream: UpstreamSettings, text: str) -> str:
        key = os.environ.get(upstream.api_key_env or "") if upstream.api_key_env else None
        return text.replace(key, "<upstream-key>") if key else text

    def _where(self, upstream: UpstreamSettings) -> str:
        return f"upstream {urlsplit(upstream.url or '').netloc}"

    async def _send(self, request: _Request, stream: bool) -> "Response":
        """One attempt: a 2xx response (its body not read when streaming), else an error (retryable or not)."""
        read_timeout = f"no answer within {self.settings.upstream_read_timeout_s:g}s"
        try:
            response = await self._client().post(request.url, data=request.body, headers=request.headers)
        except aiohttp.ConnectionTimeoutError:  # a connection error, worth another attempt
            raise _Retryable("connection timed out", timeout=True) from None
        except (aiohttp.ServerTimeoutError, TimeoutError):
            # a hang before the headers: waiting again would double it
            raise UpstreamTimeout(read_timeout) from None
        except aiohttp.ClientError as exc:
            raise _Retryable(f"connection failed ({type(exc).__name__}: {exc})") from None
        if 200 <= response.status < 300:
            if stream:
                return Response(response, b"")
            try:
                return Response(response, await response.read())
            except (aiohttp.ServerTimeoutError, TimeoutError):
                response.close()
                raise UpstreamTimeout(read_timeout) from None
            except aiohttp.ClientError as exc:  # nothing reached the editor yet: worth another attempt
                response.close()
                raise _Retryable(f"connection dropped ({type(exc).__name__})") from None
        try:
            body = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            body = b""
        finally:
            response.release()
        cause = f"HTTP {response.status}: {_message(body)}"
        if response.status in RETRYABLE_STATUS:
            raise _Retryable(cause, retry_after(response.headers.get("retry-after")))
        if response.status in (400, 422):  # the request itself: the editor's to fix
            raise InvalidInput(f"upstream refused the request: {_message(body)}")
        raise UpstreamUnavailable(cause)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return exc.retry_after
        return float(wait_exponential_jitter(initial=0.2, max=self.settings.upstream_retry_max_wait_s)(state))

    def _worth_retrying(self, exc: BaseException) -> bool:
        if not isinstance(exc, _Retryable):
            return False
        return exc.retry_after is None or exc.retry_after <= self.settings.upstream_retry_max_wait_s

    async def _open(self, upstream: UpstreamSettings, request: _Request, stream: bool) -> "Response":
        attempts = self.settings.upstream_retries + 1
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=self._wait,
            retry=retry_if_exception(self._worth_retrying),
            reraise=True,
        )
        where = self._where(upstream)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._send(request, stream)
        except _Retryable as exc:
            tries = attempt.retry_state.attempt_number
            detail = self._redact(upstream, f"{where}: {exc.cause} (after {tries} attempt{'s' * (tries > 1)})")
            raise (UpstreamTimeout if exc.timeout else UpstreamUnavailable)(detail) from None
        except EditloopError as exc:
            exc.detail = self._redact(upstream, f"{where}: {exc.detail}")
            exc.args = (exc.detail,)
            raise
        raise AssertionError("unreachable")

    # -- generation ----------------------------------------------------------------------------------------------

    async def call(self, upstream: UpstreamSettings, chat: bool, body: dict[str, Any]) -> Answer:
        response = await self._open(upstream, self._request(upstream, chat, body, stream=False), stream=False)
        try:
            data = orjson.loads(response.body)
            choice = data["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise UpstreamUnavailable(f"{self._where(upstream)}: an answer that is not an OpenAI completion") from None
        usage = data.get("usage") or {}
        return Answer(
            text=text or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            provider_model=str(data.get("model") or upstream.model),
        )

    async def open_stream(self, upstream: UpstreamSettings, chat: bool, body: dict[str, Any]) -> "Stream":
        """The upstream's stream, once its response headers say 200 (retried until then, never after)."""
        response = await self._open(upstream, self._request(upstream, chat, body, stream=True), stream=True)
        return Stream(response, chat, upstream, self._where(upstream), self.settings.upstream_read_timeout_s)


@dataclass(frozen=True, slots=True)
class Response:
    """A successful upstream response: its body when read whole, else the open stream."""

    raw: aiohttp.ClientResponse
    body: bytes


class Stream:
    """An open upstream stream: iterate it for text pieces; then `answer` holds the totals."""

    def __init__(
        self, response: Response, chat: bool, upstream: UpstreamSettings, where: str, timeout_s: float
    ) -> None:
        self.response, self.chat, self.upstream, self.where, self.timeout_s = (
            response.raw,
            chat,
            upstream,
            where,
            timeout_s,
        )
        self.pieces: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.provider_model = upstream.model or ""

    async def texts(self) -> AsyncIterator[str]:
        done = False
        try:
            async for raw in self.response.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    return
                chunk = orjson.loads(data)
                if "error" in chunk:
                    error = chunk["error"]
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise UpstreamUnavailable(f"{self.where}: {message}")
                self.provider_model = str(chunk.get("model") or self.provider_model)
                self.usage = chunk.get("usage") or self.usage
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
                    self.finish_reason = choice.get("finish_reason") or self.finish_reason
                    if text:
                        self.pieces.append(text)
                        yield text
        except (aiohttp.ServerTimeoutError, TimeoutError):
            raise UpstreamTimeout(f"{self.where}: no byte within {self.timeout_s:g}s, mid-stream") from None
        except (aiohttp.ClientError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise UpstreamUnavailable(f"{self.where}: the stream broke off ({type(exc).__name__})") from None
        finally:
            # A stream read to its end gives its connection back to the pool; one left midway closes it.
            if done or self.response.content.at_eof():
                self.response.release()
            else:
                self.response.close()
        if self.finish_reason is None:
            raise UpstreamUnavailable(f"{self.where}: the stream ended without [DONE] or a finish reason")

    async def aclose(self) -> None:
        self.response.close()

    @property
    def answer(self) -> Answer:
        return Answer(
            text="".join(self.pieces),
            finish_reason=self.finish_reason,
            prompt_tokens=int(self.usage.get("prompt_tokens") or 0),
            completion_tokens=int(self.usage.get("completion_tokens") or 0),
            provider_model=self.provider_model,
        )
