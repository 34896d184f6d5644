"""One table from the error tree to HTTP: a status, and a body in OpenAI's error shape.

::

    {"error": {"message": "...", "type": "<the class of the tree>", "param": ..., "code": ...}}

Errors of the gateway itself (a missing key, an unknown model, a full queue, a body that is
too large or of the wrong shape) are subclasses of the tree's classes defined here, each with its
own row. An upstream's refusal of the gateway's own credentials is a 502, not a 401: the client's
key was fine. A test fails when a class of :mod:`langchain_multillm.errors` has no row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_multillm import errors as e

__all__ = [
    "ERROR_TABLE",
    "GatewayAuthenticationError",
    "QueueFullError",
    "RequestSchemaError",
    "RequestTooLargeError",
    "Row",
    "UnknownModelError",
    "error_body",
    "row_for",
]


class GatewayAuthenticationError(e.AuthenticationError):
    """The client sent no key, or a key the gateway does not know (401)."""


class UnknownModelError(e.ModelNotFoundError):
    """The gateway serves no model of that name on that route (404)."""


class QueueFullError(e.RateLimitError):
    """The model's calls in flight and its queue are full (429 with Retry-After)."""


class RequestTooLargeError(e.InvalidInputError):
    """The body is larger than ``server.max_request_bytes`` (413)."""


class RequestSchemaError(e.InvalidInputError):
    """The body is JSON of the wrong shape: a field missing or of the wrong type (422)."""


@dataclass(frozen=True)
class Row:
    """How one error class is answered: ``status``, OpenAI's ``code``, the ``param`` named
    when the error names none."""

    status: int
    code: str | None = None
    param: str | None = None


# Most specific first is not needed: the lookup walks the raised class's MRO.
ERROR_TABLE: dict[type[BaseException], Row] = {
    # the tree
    e.MultiLLMError: Row(502, "upstream_error"),
    e.ContextWindowExceededError: Row(400, "context_length_exceeded", "messages"),
    e.BadRequestError: Row(400, "invalid_request"),
    e.AuthenticationError: Row(502, "upstream_authentication_failed"),
    e.PermissionDeniedError: Row(502, "upstream_permission_denied"),
    e.ModelNotFoundError: Row(502, "upstream_model_not_found"),
    e.RateLimitError: Row(429, "rate_limit_exceeded"),
    e.BackendUnavailableError: Row(503, "upstream_unavailable"),
    e.BackendTimeoutError: Row(504, "upstream_timeout"),
    e.BackendError: Row(502, "upstream_error"),
    e.IncompleteResponseError: Row(502, "upstream_incomplete"),
    e.ContentFilteredError: Row(400, "content_filter"),
    e.InvalidInputError: Row(400, "invalid_value"),
    # the gateway's own
    GatewayAuthenticationError: Row(401, "invalid_api_key"),
    UnknownModelError: Row(404, "model_not_found", "model"),
    QueueFullError: Row(429, "queue_full"),
    RequestTooLargeError: Row(413, "request_too_large"),
    RequestSchemaError: Row(422, "invalid_type"),
    # outside the tree: input LangChain or pydantic refused deep in a call, a feature a backend
    # lacks; anything else is a bug of the gateway (500).
    ValueError: Row(400, "invalid_value"),
    NotImplementedError: Row(501, "not_implemented"),
}

INTERNAL = Row(500, "internal_error")


def row_for(exc: BaseException) -> Row:
    """The row of ``exc``'s class, or of its nearest ancestor that has one (else a 500)."""
    for klass in type(exc).__mro__:
        row = ERROR_TABLE.get(klass)
        if row is not None:
            return row
    return INTERNAL


def type_name(exc: BaseException) -> str:
    """The ``type`` of the body: the nearest class of the package's error tree (the public name
    a client can look up), else the exception's own class name."""
    for klass in type(exc).__mro__:
        if klass.__module__ == e.__name__:
            return klass.__name__
    return "InternalServerError" if row_for(exc) is INTERNAL else type(exc).__name__


def _message(exc: BaseException) -> str:
    if isinstance(exc, e.ContextWindowExceededError):
        limit = exc.limit or (exc.fit.context_window if exc.fit else None)
        reason = exc.fit.reason if exc.fit and exc.fit.reason else str(exc)
        head = f"This model's maximum context length is {limit} tokens; " if limit else ""
        return f"{head}the request does not fit: {reason}"
    if isinstance(exc, e.InvalidInputError):
        return str(exc)
    if isinstance(exc, e.MultiLLMError):
        return str(exc)
    text = str(exc).strip()
    if row_for(exc) is INTERNAL:
        return "internal error of the gateway (see its log)"
    return " ".join(text.split()) or type(exc).__name__


def retry_after(exc: BaseException) -> int | None:
    """Seconds for ``Retry-After``: every 429 has one (at least 1); a 503 where the upstream
    said."""
    seconds = getattr(exc, "retry_after", None)
    status = row_for(exc).status
    if status == 429:
        return max(1, math.ceil(seconds or 1))
    if seconds is not None and status == 503:
        return max(1, math.ceil(seconds))
    return None


def error_body(
    exc: BaseException,
    *,
    param: str | None = None,
    redact: Callable[[str], str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` for ``exc``: OpenAI's error shape, ``Retry-After`` where due."""
    row = row_for(exc)
    field = getattr(exc, "field", None) if isinstance(exc, e.InvalidInputError) else None
    message = _message(exc)
    if redact is not None:
        message = redact(message)
    body = {
        "error": {
            "message": message,
            "type": type_name(exc),
            "param": field or param or row.param,
            "code": row.code,
        }
    }
    headers: dict[str, str] = {}
    wait = retry_after(exc)
    if wait is not None:
        headers["Retry-After"] = str(wait)
    if row.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return row.status, body, headers
