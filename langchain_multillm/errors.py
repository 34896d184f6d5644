"""One error vocabulary for every backend.

Every class below also subclasses the matching ``langchain_core.exceptions`` class, so code
written for any LangChain model (``with_fallbacks(exceptions_to_handle=...)``, ``except
ModelRateLimitError``) catches ours, and ``is_retryable`` keeps LangChain's meaning::

    langchain_core.exceptions.ModelError
    └── MultiLLMError                     root of everything this package raises at run time
        ├── ContextWindowExceededError    + ContextOverflowError; tokens, limit, fit report
        ├── BadRequestError               + ModelInvalidRequestError; 400/422 the backend refused
        ├── AuthenticationError           + ModelAuthenticationError; 401
        ├── PermissionDeniedError         + ModelPermissionDeniedError; 403, 402 balance
        ├── ModelNotFoundError            + langchain_core ModelNotFoundError; 404 not served
        ├── RateLimitError                + ModelRateLimitError; 429, overloaded; retry_after
        ├── BackendUnavailableError       + ModelConnectionError; refused, reset, 502/503, dead
        ├── BackendTimeoutError           + ModelTimeoutError
        ├── BackendError                  + ModelAPIError; other 5xx, a malformed body
        │   └── IncompleteResponseError   a stream or body that ended before the model finished
        └── ContentFilteredError          + ModelAPIError; the answer was blocked

    ValueError
    └── InvalidInputError                 bad input caught before any network call; names the field

SDK errors are translated in one place per SDK family: :func:`from_httpx_error`,
:func:`from_response` and :func:`from_status` for everything that speaks HTTP through httpx.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
from langchain_core import exceptions as lc

if TYPE_CHECKING:
    from langchain_multillm.fit import FitReport

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BadRequestError",
    "ContentFilteredError",
    "ContextWindowExceededError",
    "IncompleteResponseError",
    "InvalidInputError",
    "ModelNotFoundError",
    "MultiLLMError",
    "MultiLLMWarning",
    "PermissionDeniedError",
    "RateLimitError",
]


class MultiLLMWarning(UserWarning):
    """Warnings this package gives (an unknown context window, TLS verification off)."""


class MultiLLMError(lc.ModelError):
    """Root of every error this package raises at run time."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body
        self.backend = backend

    def __str__(self) -> str:
        prefix = f"[{self.backend}] " if self.backend else ""
        code = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"{prefix}{self.message}{code}"


class ContextWindowExceededError(MultiLLMError, lc.ContextOverflowError):
    """The prompt (plus the requested output) does not fit the model's limits."""

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        max_tokens: int | None = None,
        limit: int | None = None,
        fit: FitReport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.limit = limit
        self.fit = fit


class BadRequestError(MultiLLMError, lc.ModelInvalidRequestError):
    """The backend refused the request as invalid (HTTP 400/422)."""


class AuthenticationError(MultiLLMError, lc.ModelAuthenticationError):
    """The credentials were refused (HTTP 401)."""


class PermissionDeniedError(MultiLLMError, lc.ModelPermissionDeniedError):
    """The credentials lack permission, or the account has no balance (HTTP 403, 402)."""


class ModelNotFoundError(MultiLLMError, lc.ModelNotFoundError):
    """The endpoint does not serve the requested model (HTTP 404)."""


class RateLimitError(MultiLLMError, lc.ModelRateLimitError):
    """Too many requests, or the backend is overloaded (HTTP 429); retried."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BackendUnavailableError(MultiLLMError, lc.ModelConnectionError):
    """The backend cannot be reached or is not serving (refused, reset, 502/503, engine dead)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BackendTimeoutError(MultiLLMError, lc.ModelTimeoutError):
    """The request did not complete within ``timeout``."""


class BackendError(MultiLLMError, lc.ModelAPIError):
    """The backend failed (other 5xx) or answered with a body that cannot be read."""


class IncompleteResponseError(BackendError):
    """A stream or body ended before the model finished; never returned as an answer."""

    is_retryable = False

    def __init__(self, message: str, *, partial_text: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.partial_text = partial_text


class ContentFilteredError(MultiLLMError, lc.ModelAPIError):
    """The answer was blocked by a content filter and nothing usable came back."""

    is_retryable = False

    def __init__(
        self, message: str, *, filter_results: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.filter_results = dict(filter_results or {})


class InvalidInputError(ValueError):
    """Input that is wrong before any network call; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# --------------------------------------------------------------------------- mapping

_CONTEXT_PATTERNS = re.compile(
    r"maximum context length|context length|context window|too many tokens|"
    r"input tokens|exceeds? the (?:model'?s )?(?:context|max)|prompt is too long|"
    r"must have less than \d+ input tokens|inputs`? tokens \+ `?max_new_tokens|"
    r"`?inputs`? must have less than \d+ tokens",
    re.IGNORECASE,
)


def looks_like_context_overflow(message: str) -> bool:
    """Whether a backend's refusal text says the prompt is too long for the window."""
    return bool(_CONTEXT_PATTERNS.search(message))


def parse_retry_after(headers: Mapping[str, str] | httpx.Headers | None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import datetime as _dt

        when = parsedate_to_datetime(value)
        return max(0.0, (when - _dt.datetime.now(when.tzinfo)).total_seconds())
    except (TypeError, ValueError):
        return None


def error_message_from_body(body: Any, default: str) -> str:
    """The human message inside an error body of the OpenAI, TGI or Google shape."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return body.strip()[:500] or default
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            msg = err.get("message") or err.get("msg")
            if msg:
                return str(msg)
        elif isinstance(err, str) and err:
            return err
        msg = body.get("message") or body.get("detail")
        if msg:
            return str(msg)
    return default


def from_status(
    status: int,
    message: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | httpx.Headers | None = None,
    backend: str | None = None,
) -> MultiLLMError:
    """The error for an HTTP status and the backend's message."""
    kw: dict[str, Any] = {"status_code": status, "body": body, "backend": backend}
    retry_after = parse_retry_after(headers)
    if status in (400, 413, 422):
        if looks_like_context_overflow(message):
            return ContextWindowExceededError(message, **kw)
        return BadRequestError(message, **kw)
    if status == 401:
        return AuthenticationError(message, **kw)
    if status in (402, 403):
        return PermissionDeniedError(message, **kw)
    if status == 404:
        return ModelNotFoundError(message, **kw)
    if status == 408:
        return BackendTimeoutError(message, **kw)
    if status == 424:  # TGI: the generation failed (a failed dependency)
        return BackendError(message, **kw)
    if status == 429:
        return RateLimitError(message, retry_after=retry_after, **kw)
    if status in (502, 503, 504):
        return BackendUnavailableError(message, retry_after=retry_after, **kw)
    if status >= 500:
        return BackendError(message, **kw)
    return BadRequestError(message, **kw)


def from_response(response: httpx.Response, *, backend: str | None = None) -> MultiLLMError:
    """The error for a non-2xx ``httpx.Response`` (its body must have been read)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    message = error_message_from_body(body, response.reason_phrase or "HTTP error")
    return from_status(
        response.status_code, message, body=body, headers=response.headers, backend=backend
    )


# Every httpx exception class, mapped explicitly (a test fails when httpx adds one we lack).
# HTTPStatusError is handled apart: its class depends on the status.
HTTPX_ERRORS: dict[type[Exception], tuple[type[MultiLLMError], str]] = {
    httpx.ConnectTimeout: (BackendTimeoutError, "connect timed out"),
    httpx.ReadTimeout: (BackendTimeoutError, "read timed out"),
    httpx.WriteTimeout: (BackendTimeoutError, "write timed out"),
    httpx.PoolTimeout: (BackendTimeoutError, "timed out waiting for a connection"),
    httpx.TimeoutException: (BackendTimeoutError, "timed out"),
    httpx.ConnectError: (BackendUnavailableError, "could not connect"),
    httpx.ReadError: (BackendUnavailableError, "connection broke while reading"),
    httpx.WriteError: (BackendUnavailableError, "connection broke while writing"),
    httpx.CloseError: (BackendUnavailableError, "connection broke while closing"),
    httpx.NetworkError: (BackendUnavailableError, "network error"),
    httpx.ProxyError: (BackendUnavailableError, "proxy error"),
    httpx.RemoteProtocolError: (BackendUnavailableError, "the server broke the protocol"),
    httpx.LocalProtocolError: (BackendError, "invalid request for the protocol"),
    httpx.ProtocolError: (BackendError, "protocol error"),
    httpx.UnsupportedProtocol: (BackendUnavailableError, "unsupported URL scheme"),
    httpx.TransportError: (BackendUnavailableError, "transport error"),
    httpx.DecodingError: (BackendError, "could not decode the response"),
    httpx.TooManyRedirects: (BackendError, "too many redirects"),
    httpx.RequestError: (BackendError, "request failed"),
    httpx.InvalidURL: (BadRequestError, "invalid URL"),
    httpx.CookieConflict: (BackendError, "cookie conflict"),
    httpx.StreamConsumed: (BackendError, "stream already consumed"),
    httpx.StreamClosed: (IncompleteResponseError, "stream closed"),
    httpx.ResponseNotRead: (BackendError, "response not read"),
    httpx.RequestNotRead: (BackendError, "request not read"),
    httpx.StreamError: (BackendError, "stream error"),
    httpx.HTTPError: (BackendError, "HTTP error"),
}


def from_httpx_error(exc: Exception, *, backend: str | None = None) -> MultiLLMError:
    """Translate any ``httpx`` exception through :data:`HTTPX_ERRORS` (most specific first)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return from_response(exc.response, backend=backend)
    for klass in type(exc).__mro__:
        target = HTTPX_ERRORS.get(klass)
        if target is not None:
            cls, what = target
            return cls(f"{what}: {exc}" if str(exc) else what, backend=backend)
    return BackendError(f"{type(exc).__name__}: {exc}", backend=backend)


def malformed_body(detail: str, *, body: Any = None, backend: str | None = None) -> BackendError:
    """The error for a 2xx body that is not what the protocol promises."""
    return BackendError(f"malformed response body: {detail}", body=body, backend=backend)
