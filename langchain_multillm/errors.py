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
:func:`from_response` and :func:`from_status` for everything that speaks HTTP through httpx;
:func:`from_aiohttp_error` for aiohttp (the HTTP backends' default async client, and under
google-genai and the openai SDK);
:func:`from_openai_error` for the ``openai`` SDK (Azure OpenAI); :func:`from_genai_error` for
the ``google-genai`` SDK (Gemini); :func:`from_vllm_error` for the in-process vLLM engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
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


REDACTED = "***"


def redact(err: MultiLLMError, secrets: list[str]) -> MultiLLMError:
    """``err`` with every occurrence of ``secrets`` masked in its message, args and body: a
    server may echo the credential it refused ("Incorrect API key provided: Bearer sk-...")."""
    secrets = [x for x in secrets if x]
    if not secrets:
        return err

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {scrub(k): scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(scrub(v) for v in value)
        return value

    err.message = scrub(err.message)
    err.body = scrub(err.body)
    err.args = tuple(scrub(a) for a in err.args)
    return err


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


# --------------------------------------------------------------------------- aiohttp

# Every exception class aiohttp exports (``aiohttp`` and ``aiohttp.http_exceptions``), by
# module and name; a test fails when aiohttp adds one this table lacks. The HTTP backends'
# default async path runs on aiohttp, and google-genai and the openai SDK's aiohttp client
# raise (or chain) these. Classes are chosen as for the httpx twin of each failure: a broken
# connection is unavailable, a broken protocol too, a bad URL a bad request. Names an installed
# aiohttp lacks are skipped.
AIOHTTP_ERROR_NAMES: dict[str, tuple[type[MultiLLMError], str]] = {
    "aiohttp.ConnectionTimeoutError": (BackendTimeoutError, "connect timed out"),
    "aiohttp.SocketTimeoutError": (BackendTimeoutError, "read timed out"),
    "aiohttp.ServerTimeoutError": (BackendTimeoutError, "timed out"),
    "aiohttp.ClientConnectorCertificateError": (
        BackendUnavailableError,
        "TLS certificate verification failed",
    ),
    "aiohttp.ClientConnectorSSLError": (BackendUnavailableError, "TLS handshake failed"),
    "aiohttp.ClientSSLError": (BackendUnavailableError, "TLS error"),
    "aiohttp.ClientConnectorDNSError": (BackendUnavailableError, "could not resolve the host"),
    "aiohttp.ClientProxyConnectionError": (BackendUnavailableError, "proxy error"),
    "aiohttp.client_exceptions.UnixClientConnectorError": (
        BackendUnavailableError,
        "could not connect",
    ),
    "aiohttp.ClientConnectorError": (BackendUnavailableError, "could not connect"),
    "aiohttp.ClientConnectionResetError": (BackendUnavailableError, "connection reset"),
    "aiohttp.ClientOSError": (BackendUnavailableError, "connection error"),
    "aiohttp.ServerDisconnectedError": (
        BackendUnavailableError,
        "the server closed the connection",
    ),
    "aiohttp.ServerFingerprintMismatch": (BackendUnavailableError, "TLS fingerprint mismatch"),
    "aiohttp.ServerConnectionError": (BackendUnavailableError, "connection error"),
    "aiohttp.ClientConnectionError": (BackendUnavailableError, "connection error"),
    "aiohttp.ClientPayloadError": (BackendUnavailableError, "connection broke while reading"),
    "aiohttp.UploadAbortedError": (BackendUnavailableError, "connection broke while writing"),
    "aiohttp.ClientHttpProxyError": (BackendUnavailableError, "proxy error"),
    "aiohttp.TooManyRedirects": (BackendError, "too many redirects"),
    "aiohttp.ContentTypeError": (BackendError, "unexpected content type"),
    "aiohttp.WSServerHandshakeError": (BackendError, "websocket handshake failed"),
    "aiohttp.ClientResponseError": (BackendUnavailableError, "the server broke the protocol"),
    "aiohttp.InvalidUrlRedirectClientError": (BackendError, "invalid redirect URL"),
    "aiohttp.NonHttpUrlRedirectClientError": (BackendError, "redirect to a non-HTTP URL"),
    "aiohttp.RedirectClientError": (BackendError, "bad redirect"),
    "aiohttp.InvalidUrlClientError": (BadRequestError, "invalid URL"),
    "aiohttp.InvalidURL": (BadRequestError, "invalid URL"),
    "aiohttp.NonHttpUrlClientError": (BackendUnavailableError, "unsupported URL scheme"),
    "aiohttp.WSMessageTypeError": (BackendError, "unexpected websocket message"),
    "aiohttp.WebSocketError": (BackendError, "websocket error"),
    "aiohttp.EofStream": (BackendUnavailableError, "the stream ended"),
    "aiohttp.ClientError": (BackendError, "HTTP client error"),
    "aiohttp.http_exceptions.ContentEncodingError": (BackendError, "could not decode the response"),
    "aiohttp.http_exceptions.DecompressSizeError": (BackendError, "could not decode the response"),
    "aiohttp.http_exceptions.ContentLengthError": (
        BackendUnavailableError,
        "connection broke while reading",
    ),
    "aiohttp.http_exceptions.TransferEncodingError": (
        BackendUnavailableError,
        "connection broke while reading",
    ),
    "aiohttp.http_exceptions.PayloadEncodingError": (
        BackendUnavailableError,
        "the server broke the protocol",
    ),
    "aiohttp.http_exceptions.BadHttpMethod": (BackendError, "invalid request for the protocol"),
    "aiohttp.http_exceptions.BadStatusLine": (
        BackendUnavailableError,
        "the server broke the protocol",
    ),
    "aiohttp.http_exceptions.InvalidHeader": (
        BackendUnavailableError,
        "the server broke the protocol",
    ),
    "aiohttp.http_exceptions.InvalidURLError": (BadRequestError, "invalid URL"),
    "aiohttp.http_exceptions.LineTooLong": (
        BackendUnavailableError,
        "the server broke the protocol",
    ),
    "aiohttp.http_exceptions.HttpBadRequest": (BackendError, "invalid request for the protocol"),
    "aiohttp.http_exceptions.BadHttpMessage": (
        BackendUnavailableError,
        "the server broke the protocol",
    ),
    "aiohttp.http_exceptions.HttpProcessingError": (
        BackendUnavailableError,
        "the server broke the protocol",
    ),
}


def _resolve_paths(names: Mapping[str, Any]) -> ErrorTable:
    """A table of ``module.Class`` paths resolved against what is installed (missing modules
    and classes are left out)."""
    import importlib

    table: ErrorTable = {}
    for path, target in names.items():
        module_name, _, name = path.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        table.update(_resolve(module, {name: target}))
    return table


@functools.cache
def aiohttp_errors() -> ErrorTable:
    """:data:`AIOHTTP_ERROR_NAMES` resolved against the installed aiohttp (empty without it)."""
    return _resolve_paths(AIOHTTP_ERROR_NAMES)


def from_aiohttp_error(exc: BaseException, *, backend: str | None = None) -> MultiLLMError:
    """Translate an aiohttp exception (or the timeout or socket error under it) into the tree,
    through :data:`AIOHTTP_ERROR_NAMES` (most specific first)."""
    if isinstance(exc, MultiLLMError):
        return exc
    try:
        text = str(exc)
    except Exception:  # an aiohttp error made without its connection key or request info
        text = type(exc).__name__
    for klass in type(exc).__mro__:
        target = aiohttp_errors().get(klass)
        if target is not None:
            cls, what = target
            return cls(f"{what}: {text}" if text else what, backend=backend)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):  # a total timeout
        return BackendTimeoutError(f"timed out: {text}" if text else "timed out", backend=backend)
    if isinstance(exc, OSError):
        what = "connection error"
        return BackendUnavailableError(f"{what}: {text}" if text else what, backend=backend)
    return BackendError(f"{type(exc).__name__}: {text}", backend=backend)


def aiohttp_cause(exc: BaseException) -> BaseException | None:
    """The aiohttp exception an SDK error was raised from (its ``__cause__`` chain), if any:
    it says what failed more exactly than the SDK's wrapper."""
    seen = 0
    cause = exc.__cause__
    while cause is not None and seen < 8:
        if type(cause).__module__.split(".")[0] == "aiohttp":
            return cause
        cause, seen = cause.__cause__, seen + 1
    return None


def malformed_body(detail: str, *, body: Any = None, backend: str | None = None) -> BackendError:
    """The error for a 2xx body that is not what the protocol promises."""
    return BackendError(f"malformed response body: {detail}", body=body, backend=backend)


# --------------------------------------------------------------------------- the openai SDK

# Every exception class the ``openai`` package exports, by name (a test fails when the SDK
# adds one this table lacks). Status errors (APIStatusError and its subclasses) are mapped by
# their status through :func:`from_status`; the class here is what their usual status gives.
# Names a given SDK version does not have are skipped.
OPENAI_ERROR_NAMES: dict[str, tuple[type[MultiLLMError], str]] = {
    "APITimeoutError": (BackendTimeoutError, "timed out"),
    "APIConnectionError": (BackendUnavailableError, "could not connect"),
    "APIResponseValidationError": (BackendError, "the response does not match the API"),
    "BadRequestError": (BadRequestError, "bad request"),
    "AuthenticationError": (AuthenticationError, "authentication failed"),
    "OAuthError": (AuthenticationError, "OAuth failed"),
    "PermissionDeniedError": (PermissionDeniedError, "permission denied"),
    "NotFoundError": (ModelNotFoundError, "not found"),
    "ConflictError": (BadRequestError, "conflict"),
    "UnprocessableEntityError": (BadRequestError, "unprocessable request"),
    "RateLimitError": (RateLimitError, "rate limited"),
    "InternalServerError": (BackendError, "server error"),
    "APIStatusError": (BackendError, "HTTP error"),
    "ContentFilterFinishReasonError": (ContentFilteredError, "blocked by the content filter"),
    "LengthFinishReasonError": (IncompleteResponseError, "stopped at the length limit"),
    "InvalidWebhookSignatureError": (AuthenticationError, "invalid webhook signature"),
    "WebSocketConnectionClosedError": (BackendUnavailableError, "websocket closed"),
    "WebSocketQueueFullError": (RateLimitError, "websocket queue full"),
    "APIError": (BackendError, "API error"),
    "OpenAIError": (BackendError, "openai error"),
}


ErrorTable = dict[type[BaseException], tuple[type[MultiLLMError], str]]


def _resolve(module: Any, names: Mapping[str, tuple[type[MultiLLMError], str]]) -> ErrorTable:
    """A by-name table of an SDK's exceptions, resolved against the installed ``module``."""
    table: ErrorTable = {}
    for name, target in names.items():
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            table[cls] = target
    return table


def _by_table(exc: BaseException, table: ErrorTable, backend: str | None) -> MultiLLMError:
    """An SDK exception that carries no HTTP status: by its class (nearest in the MRO), or a
    transport error of the HTTP library under the SDK (httpx, or a fork of it) by name."""
    for klass in type(exc).__mro__:
        target = table.get(klass)
        if target is not None:
            cls, what = target
            return cls(f"{what}: {exc}" if str(exc) else what, backend=backend)
    if type(exc).__module__.split(".")[0].startswith("httpx"):
        for klass in type(exc).__mro__:
            for httpx_cls, (cls, what) in HTTPX_ERRORS.items():
                if httpx_cls.__name__ == klass.__name__:
                    return cls(f"{what}: {exc}" if str(exc) else what, backend=backend)
    if type(exc).__module__.split(".")[0] == "aiohttp" or isinstance(
        exc, (TimeoutError, asyncio.TimeoutError)
    ):
        return from_aiohttp_error(exc, backend=backend)
    return BackendError(f"{type(exc).__name__}: {exc}", backend=backend)


@functools.cache
def openai_errors() -> ErrorTable:
    """:data:`OPENAI_ERROR_NAMES` resolved against the installed ``openai`` package."""
    import openai

    return _resolve(openai, OPENAI_ERROR_NAMES)


def _content_filter_results(body: Any) -> dict[str, Any] | None:
    """Filter results of an Azure 400 ``content_filter`` body (either nesting, either spelling)."""
    if not isinstance(body, Mapping):
        return None
    err = body.get("error", body)
    if not isinstance(err, Mapping) or err.get("code") != "content_filter":
        return None
    inner = err.get("inner_error") or err.get("innererror") or {}
    if not isinstance(inner, Mapping):
        inner = {}
    results = inner.get("content_filter_results") or inner.get("content_filter_result") or {}
    return {"prompt": dict(results)} if isinstance(results, Mapping) else {}


@contextlib.contextmanager
def mapped(
    translate: Callable[..., BaseException],
    backend: str | None,
    secrets: list[str] | None = None,
) -> Iterator[None]:
    """Translate what an SDK raises inside the block into the tree (``translate`` is one of
    the ``from_*_error`` mappers; errors of this package pass through), with ``secrets`` (the
    model's credentials) masked wherever the server echoed them::

        with mapped(from_openai_error, "azure", self._secrets()):
            raw = client.chat.completions.create(...)
    """
    try:
        yield
    except MultiLLMError as own:
        raise redact(own, secrets or []) from own.__cause__
    except Exception as exc:
        translated = translate(exc, backend=backend)
        if isinstance(translated, MultiLLMError):
            translated = redact(translated, secrets or [])
        raise translated from exc


def from_openai_error(exc: BaseException, *, backend: str | None = None) -> MultiLLMError:
    """Translate an ``openai`` SDK exception (or a transport error under it) into the tree."""
    if isinstance(exc, MultiLLMError):
        return exc
    if isinstance(exc, httpx.HTTPError):
        return from_httpx_error(exc, backend=backend)
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and response is not None:  # openai.APIStatusError
        body = getattr(exc, "body", None)
        message = error_message_from_body(body, str(getattr(exc, "message", exc)))
        filtered = _content_filter_results(body)
        if filtered is not None:
            return ContentFilteredError(
                message, filter_results=filtered, status_code=status, body=body, backend=backend
            )
        return from_status(
            status,
            message,
            body=body,
            headers=getattr(response, "headers", None),
            backend=backend,
        )
    cause = aiohttp_cause(exc)  # the SDK's aiohttp client: what broke, not "connection error"
    if cause is not None:
        return from_aiohttp_error(cause, backend=backend)
    return _by_table(exc, openai_errors(), backend)


# --------------------------------------------------------------------------- the google-genai SDK

# Every exception class ``google.genai.errors`` defines, by name (a test fails when the SDK adds
# one this table lacks). APIError and its subclasses are mapped by their status through
# :func:`from_genai_error`; the class here is what their usual status gives.
GENAI_ERROR_NAMES: dict[str, tuple[type[MultiLLMError], str]] = {
    "ClientError": (BadRequestError, "the request was refused"),
    "ServerError": (BackendError, "server error"),
    "APIError": (BackendError, "API error"),
    "UnknownApiResponseError": (BackendError, "the response is not JSON"),
    "UnknownFunctionCallArgumentError": (BadRequestError, "a function call argument is invalid"),
    "UnsupportedFunctionError": (BadRequestError, "unsupported function"),
    "FunctionInvocationError": (BackendError, "a function could not be invoked"),
    "ContinuationInterruptedError": (IncompleteResponseError, "the continuation was interrupted"),
}


@functools.cache
def genai_errors() -> ErrorTable:
    """:data:`GENAI_ERROR_NAMES` resolved against the installed ``google.genai.errors``."""
    from google.genai import errors as genai

    return _resolve(genai, GENAI_ERROR_NAMES)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _google_details(body: Any) -> list[Mapping[str, Any]]:
    """The ``details`` of a Google error body (``{"error": {..., "details": [...]}}``)."""
    err = body.get("error", body) if isinstance(body, Mapping) else None
    details = err.get("details") if isinstance(err, Mapping) else None
    return [d for d in details if isinstance(d, Mapping)] if isinstance(details, list) else []


def google_retry_delay(body: Any) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail's ``retryDelay`` (``"2s"``, ``"0.5s"``)."""
    for detail in _google_details(body):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, Mapping):  # {"seconds": 2, "nanos": 0}
                return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
            match = _DURATION.match(str(delay or ""))
            if match:
                return float(match.group(1))
    return None


def _google_reasons(body: Any) -> set[str]:
    return {
        str(d.get("reason"))
        for d in _google_details(body)
        if str(d.get("@type", "")).endswith("google.rpc.ErrorInfo") and d.get("reason")
    }


# Gemini's words for a prompt over the model's input limit.
_GEMINI_TOO_LONG = re.compile(
    r"input token count|exceeds the maximum number of tokens|input context is too long",
    re.IGNORECASE,
)


def from_genai_error(exc: BaseException, *, backend: str | None = None) -> MultiLLMError:
    """Translate a ``google-genai`` SDK exception (or a transport error under it) into the tree.

    429 ``RESOURCE_EXHAUSTED`` honours the ``RetryInfo`` detail's ``retryDelay`` (as
    ``retry_after``); a 400 whose ``ErrorInfo`` reason is ``API_KEY_INVALID`` is an
    :class:`AuthenticationError`; a 400 that says the input is too long is a
    :class:`ContextWindowExceededError`; other statuses go through :func:`from_status`.
    """
    if isinstance(exc, MultiLLMError):
        return exc
    if isinstance(exc, httpx.HTTPError):
        return from_httpx_error(exc, backend=backend)
    from google.genai import errors as genai

    code = getattr(exc, "code", None)
    if isinstance(exc, genai.APIError) and isinstance(code, int):
        body = getattr(exc, "details", None)
        message = str(getattr(exc, "message", None) or error_message_from_body(body, str(exc)))
        status = getattr(exc, "status", None)
        if status and status not in message:
            message = f"{status}: {message}"
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        kw: dict[str, Any] = {"status_code": code, "body": body, "backend": backend}
        if code == 400 and "API_KEY_INVALID" in _google_reasons(body):
            return AuthenticationError(message, **kw)
        if code in (400, 413) and _GEMINI_TOO_LONG.search(message):
            return ContextWindowExceededError(message, **kw)
        if code == 429:
            retry_after = google_retry_delay(body)
            if retry_after is None:
                retry_after = parse_retry_after(headers)
            return RateLimitError(message, retry_after=retry_after, **kw)
        return from_status(code, message, body=body, headers=headers, backend=backend)
    return _by_table(exc, genai_errors(), backend)


# --------------------------------------------------------------------------- the vLLM engine

# Every exception class vLLM's public modules define, by module and name (a test fails when the
# installed vLLM has one this table lacks). The lookup walks the raised class's MRO. Names an
# installed vLLM lacks are skipped.
VLLM_ERROR_NAMES: dict[str, tuple[type[MultiLLMError], str]] = {
    "vllm.v1.engine.exceptions.EngineDeadError": (
        BackendUnavailableError,
        "the vLLM engine is dead",
    ),
    "vllm.v1.engine.exceptions.EngineGenerateError": (
        BackendError,
        "the vLLM engine failed to generate",
    ),
    "vllm.exceptions.VLLMValidationError": (BadRequestError, "the engine refused the request"),
    "vllm.exceptions.VLLMNotFoundError": (ModelNotFoundError, "not found"),
    "vllm.exceptions.LoRAAdapterNotFoundError": (ModelNotFoundError, "LoRA adapter not found"),
    "vllm.exceptions.VLLMUnprocessableEntityError": (BadRequestError, "unprocessable request"),
    "vllm.exceptions.VLLMClientError": (BadRequestError, "bad request"),
    "vllm.exceptions.QueueOverflowError": (RateLimitError, "the engine's queue is full"),
    "vllm.exceptions.MaxQueuedTokensError": (RateLimitError, "too many queued tokens"),
    "vllm.exceptions.ProfilerAlreadyActiveError": (BackendError, "profiler already active"),
    "vllm.exceptions.GracefulHTTPError": (BackendUnavailableError, "the engine is busy"),
    "vllm.exceptions.RetryableRequestError": (BackendUnavailableError, "retryable failure"),
    "vllm.exceptions.GenerationError": (BackendError, "generation failed"),
    "vllm.exceptions.VLLMServerError": (BackendError, "engine error"),
    "vllm.exceptions.VLLMError": (BackendError, "vLLM error"),
}


@functools.cache
def vllm_errors() -> ErrorTable:
    """:data:`VLLM_ERROR_NAMES` resolved against the installed vLLM (empty without it)."""
    return _resolve_paths(VLLM_ERROR_NAMES)


def from_vllm_error(exc: BaseException, *, backend: str | None = "vllm") -> BaseException:
    """Translate an exception from the in-process vLLM engine into the tree (ours, bad input
    and cancellation pass through). vLLM's input checks raise plain ValueError / TypeError:
    a context overflow becomes :class:`ContextWindowExceededError`, the rest
    :class:`BadRequestError`."""
    import asyncio
    import importlib.util

    if isinstance(exc, (MultiLLMError, InvalidInputError, asyncio.CancelledError)):
        return exc
    if type(exc).__name__ == "EngineGenerateError" and exc.__cause__ is not None:
        # vLLM wraps what failed in add_request (a ValueError for an over-long prompt, ...)
        # in an EngineGenerateError without a message: the cause says what it was.
        inner = from_vllm_error(exc.__cause__, backend=backend)
        if type(inner) is not BackendError:
            return inner
    text = str(exc)
    table = vllm_errors() if importlib.util.find_spec("vllm") is not None else {}
    for klass in type(exc).__mro__:
        target = table.get(klass)
        if target is None:
            continue
        cls, what = target
        if cls is BadRequestError and looks_like_context_overflow(text):
            return ContextWindowExceededError(text, backend=backend)
        return cls(f"{what}: {text}" if text else what, backend=backend)
    if isinstance(exc, (ValueError, TypeError)):
        if looks_like_context_overflow(text):
            return ContextWindowExceededError(text, backend=backend)
        return BadRequestError(f"{type(exc).__name__}: {text}", backend=backend)
    if isinstance(exc, TimeoutError):
        return BackendTimeoutError(f"timed out: {text}", backend=backend)
    return BackendError(f"{type(exc).__name__}: {text}", backend=backend)
