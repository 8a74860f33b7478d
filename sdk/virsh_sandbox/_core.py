"""The engine under both clients: HTTP with retries, and a tiny sans-IO protocol so each
API method is written once and runs synchronously (``VirshSandbox``) or asynchronously
(``AsyncVirshSandbox``).

An API method is a generator that yields steps and gets their results back:

* ``Call``  - one HTTP request; the generator receives the decoded JSON body, or the
  exception is thrown into it (so it may catch ``NotFound`` and go on);
* ``Sleep`` - wait between polls;
* ``Emit``  - hand a value to the caller (only in streaming methods).

The generator's return value is the method's result. ``_Base.run`` carries out that
protocol once (retries, errors, answers) and asks only for I/O in return: ``Send`` one HTTP
attempt, ``Sleep``, ``Emit``. ``SyncEngine`` and ``AsyncEngine`` are the two thin faces that
do that I/O, blocking or awaited.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from . import errors
from ._version import __version__

API_KEY_ENV = "VIRSH_SANDBOX_API_KEY"
URL_ENV = "VIRSH_SANDBOX_URL"
DEFAULT_URL = "http://localhost:8080"

# Methods whose repetition has the same effect as one call: safe to retry on any transient
# failure. POST is not: a create or a command retried after a lost answer could run twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Answers that mean "try again later". 503 is the server's "not now" (no worker with room,
# port allocation busy): nothing was done, so it is retried for every method. 502 and 504 may
# come after the work started, so only idempotent requests (and POSTs marked as carrying an
# idempotency key) are retried on them.
RETRY_ALWAYS = frozenset({503})
RETRY_IF_IDEMPOTENT = frozenset({502, 504})
# A 429 with this code is the key's request rate: refused before anything was done, so it
# is retried for every method (after Retry-After). A 429 `quota_exceeded` (commands in
# flight) is not: they may run for an hour.
RETRY_CODES_429 = frozenset({"throttled"})
# A 502 or 504 in the server's own error shape with one of these codes is a final outcome
# (a slow step failed, a command may still run): never retried.
FINAL_CODES = frozenset({"operation_failed", "timeout", "worker_timeout"})


@dataclass
class Call:
    method: str
    route: str  # template, e.g. "/v1/sandboxes/{sandbox_id}/command"
    path: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    params: dict[str, Any] | None = None
    timeout: float | None = None  # read timeout for calls the server holds open (waits)
    idempotent: bool | None = None  # None: from the method
    retry: bool = True  # False: one attempt, whatever happens
    content: bytes | None = None  # a raw body instead of JSON (uploads)
    raw: bool = False  # answer with (body bytes, headers) instead of decoded JSON

    def url_path(self) -> str:
        return self.route.format(**{k: quote(str(v), safe="") for k, v in self.path.items()})


@dataclass
class Sleep:
    seconds: float


@dataclass
class Emit:
    value: Any


@dataclass
class Send:
    """One HTTP attempt, for the engine to make (a `Call` becomes one or more, with retries)."""

    method: str
    path: str
    kwargs: dict[str, Any]


Op = Generator[Any, Any, Any]


def _clean_params(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if not params:
        return None
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else value
    return out


class RetryPolicy:
    """Bounded exponential backoff with full jitter; a server's Retry-After wins (capped)."""

    def __init__(self, retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0):
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.max_backoff = max(0.0, float(max_backoff))

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        if response is not None:
            after = response.headers.get("Retry-After")
            if after:
                try:
                    return min(max(0.0, float(after)), self.max_backoff)
                except ValueError:
                    pass
        ceiling = min(self.max_backoff, self.backoff * (2**attempt))
        return random.uniform(ceiling / 2, ceiling) if ceiling else 0.0

    def should_retry_response(self, call: Call, response: httpx.Response, body: Any) -> bool:
        if not call.retry:
            return False
        status = response.status_code
        if errors.is_server_error_shape(body) and body["error"].get("code") in FINAL_CODES:
            return False
        if status in RETRY_ALWAYS:
            return True
        if status == 429:
            return (
                errors.is_server_error_shape(body) and body["error"].get("code") in RETRY_CODES_429
            )
        return status in RETRY_IF_IDEMPOTENT and _idempotent(call)

    def should_retry_exception(self, call: Call, exc: Exception) -> bool:
        if not call.retry:
            return False
        # A connection never made means the request was never sent: safe for every method.
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return True
        return isinstance(exc, httpx.TransportError) and _idempotent(call)


def _idempotent(call: Call) -> bool:
    return call.idempotent if call.idempotent is not None else call.method in IDEMPOTENT_METHODS


def _decode(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    ctype = response.headers.get("content-type", "")
    if "json" in ctype:
        try:
            return response.json()
        except ValueError:
            pass
    text = response.text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _timeout_for(call: Call, default: httpx.Timeout) -> httpx.Timeout | None:
    if call.timeout is None:
        return None
    return httpx.Timeout(default.connect, read=call.timeout, write=default.write, pool=default.pool)


class _Base:
    """What both clients share: configuration, and the protocol (`run`): how an API method's
    calls become HTTP attempts with retries, and answers become results or errors. The
    engines below only do the I/O it asks for."""

    _http_class: Any

    # Made by the client, which documents these (and defaults the first three to None).
    def __init__(
        self,
        host: str | None,
        tmux_host: str | None,
        api_key: str | None,
        *,
        timeout: float = 60.0,
        wait_timeout: float = 900.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        headers: dict[str, str] | None = None,
        transport: Any = None,
        verify: Any = True,
    ) -> None:
        self.base_url = (host or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        # The original SDK took the tmux-client's URL second. Our terminal API lives on the
        # same server, so it is accepted (the demo passes it) and not used.
        self.tmux_host = tmux_host
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.timeout = httpx.Timeout(timeout, connect=min(10.0, timeout))
        self.wait_timeout = float(wait_timeout)
        self.retry = RetryPolicy(retries, backoff, max_backoff)
        self._headers = {
            "Accept": "application/json",
            "User-Agent": f"virsh-sandbox-py/{__version__}",
        }
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        self._headers.update(headers or {})
        self._routes: set[tuple[str, str]] | None = None
        self._routes_from_schema = True
        self._http = self._http_class(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self.timeout,
            transport=transport,
            verify=verify,
        )

    def run(self, gen: Op, *, stream: bool = False) -> Generator[Send | Sleep | Emit, Any, Any]:
        """Run API method `gen`, yielding only the I/O for an engine to do: `Send` (answered
        with the httpx response, or the transport error it raised), `Sleep`, and in a stream
        `Emit`. Returns the method's result."""
        value: Any = None
        exc: BaseException | None = None
        while True:
            try:
                step = gen.throw(exc) if exc is not None else gen.send(value)
            except StopIteration as stop:
                return stop.value
            value, exc = None, None
            if isinstance(step, Call):
                try:
                    value = yield from self._request(step)
                except errors.VirshSandboxError as err:
                    exc = err
            elif isinstance(step, Sleep) or (stream and isinstance(step, Emit)):
                yield step
            else:
                gen.close()
                raise TypeError(f"unexpected step {step!r} outside a stream")

    def _request(self, call: Call) -> Generator[Send | Sleep, Any, Any]:
        """One call with its retries: the decoded answer, or the SDK's error for it."""
        attempt = 0
        send = Send(call.method, call.url_path(), self._build_request_kwargs(call))
        while True:
            response = yield send
            if isinstance(response, httpx.TransportError):
                if attempt < self.retry.retries and self.retry.should_retry_exception(
                    call, response
                ):
                    yield Sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise self._transport_error(call, response) from response
            body = None if (call.raw and response.is_success) else _decode(response)
            if (
                not response.is_success
                and attempt < self.retry.retries
                and self.retry.should_retry_response(call, response, body)
            ):
                yield Sleep(self.retry.delay(attempt, response))
                attempt += 1
                continue
            return self._result(call, response, body)

    def _build_request_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "params": _clean_params(call.params),
            # The route template travels with the request: the contract test reads it.
            "extensions": {"virsh_sandbox_route": call.route},
        }
        if call.json is not None:
            kwargs["json"] = call.json
        elif call.content is not None:
            kwargs["content"] = call.content
            kwargs["headers"] = {"Content-Type": "application/octet-stream"}
        timeout = _timeout_for(call, self.timeout)
        if timeout is not None:
            kwargs["timeout"] = timeout
        return kwargs

    def _result(self, call: Call, response: httpx.Response, body: Any) -> Any:
        if response.is_success:
            return (response.content, response.headers) if call.raw else body
        raise errors.from_response(
            response.status_code, body, method=call.method, url=str(response.request.url)
        )

    def _transport_error(self, call: Call, exc: Exception) -> errors.TransportError:
        return errors.TransportError(
            f"cannot reach {self.base_url}: {exc.__class__.__name__}: {exc}",
            code="unreachable",
            method=call.method,
            url=self.base_url + call.url_path(),
        )


class _Steps:
    """Walks `_Base.run`'s steps for an engine: ``step`` is the I/O to do next, ``send`` hands
    back its result; once the method returned, ``step`` is None and ``result`` its value."""

    def __init__(self, steps: Generator[Send | Sleep | Emit, Any, Any]) -> None:
        self._steps = steps
        self.step: Send | Sleep | Emit | None = None
        self.result: Any = None
        self.send(None)

    def send(self, value: Any) -> None:
        try:
            self.step = self._steps.send(value)
        except StopIteration as stop:
            self.step, self.result = None, stop.value


class SyncEngine(_Base):
    """Does the I/O of `_Base.run`'s steps with httpx.Client and time.sleep."""

    _http_class = httpx.Client

    def close(self) -> None:
        self._http.close()

    def _do(self, step: Send | Sleep) -> Any:
        if isinstance(step, Sleep):
            return time.sleep(step.seconds)
        try:
            return self._http.request(step.method, step.path, **step.kwargs)
        except httpx.TransportError as exc:
            return exc

    def drive(self, gen: Op) -> Any:
        """Run an API method to its result."""
        steps = _Steps(self.run(gen))
        while steps.step is not None:
            steps.send(self._do(steps.step))
        return steps.result

    def drive_stream(self, gen: Op) -> Iterator[Any]:
        """Run a streaming API method, yielding what it emits."""
        steps = _Steps(self.run(gen, stream=True))
        try:
            while (step := steps.step) is not None:
                steps.send((yield step.value) if isinstance(step, Emit) else self._do(step))
        finally:
            # The consumer stopped early (break, exception): let the method clean up, with
            # this engine still driving its calls.
            self.drive(closing(gen))


class AsyncEngine(_Base):
    """Does the I/O of `_Base.run`'s steps with httpx.AsyncClient and asyncio.sleep."""

    _http_class = httpx.AsyncClient

    async def close(self) -> None:
        await self._http.aclose()

    async def _do(self, step: Send | Sleep) -> Any:
        if isinstance(step, Sleep):
            return await asyncio.sleep(step.seconds)
        try:
            return await self._http.request(step.method, step.path, **step.kwargs)
        except httpx.TransportError as exc:
            return exc

    async def drive(self, gen: Op) -> Any:
        steps = _Steps(self.run(gen))
        while steps.step is not None:
            steps.send(await self._do(steps.step))
        return steps.result

    async def drive_stream(self, gen: Op) -> AsyncIterator[Any]:
        steps = _Steps(self.run(gen, stream=True))
        try:
            while (step := steps.step) is not None:
                steps.send((yield step.value) if isinstance(step, Emit) else await self._do(step))
        finally:
            await self.drive(closing(gen))


def closing(gen: Op) -> Op:
    """An API method's own clean-up once the consumer of its stream stopped: it may catch
    GeneratorExit and make last calls (their failures are ignored)."""
    try:
        step = gen.throw(GeneratorExit)
    except (GeneratorExit, StopIteration):
        return
    while True:
        value: Any = None
        if isinstance(step, Call):
            try:
                value = yield step
            except errors.VirshSandboxError:
                value = None
        try:
            step = gen.send(value)
        except StopIteration:
            return


def _driven_by(drive: str) -> Callable[[Callable[..., Op]], Callable[..., Any]]:
    def mark(fn: Callable[..., Op]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def method(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self._engine, drive)(fn(self, *args, **kwargs))

        method.__virsh_sandbox_operation__ = True  # type: ignore[attr-defined]
        return method

    return mark


# Marks an API method: the generator runs on the client's engine (sync or async).
operation = _driven_by("drive")
# Marks a streaming API method: an iterator (sync) or async iterator of emitted values.
streaming = _driven_by("drive_stream")
