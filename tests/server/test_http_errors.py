"""The one table from the error tree to HTTP: every class has its row, and each row answers
what the gateway promises (status, OpenAI's error body, Retry-After)."""

from __future__ import annotations

import inspect

import pytest

from langchain_multillm import errors
from langchain_multillm.fit import FitReport
from langchain_multillm.server import http_errors as he


def tree_classes() -> list[type[BaseException]]:
    return [
        obj
        for name in errors.__all__
        if inspect.isclass(obj := getattr(errors, name))
        and issubclass(obj, BaseException)
        and not issubclass(obj, Warning)
    ]


def gateway_classes() -> list[type[BaseException]]:
    return [
        obj
        for name in he.__all__
        if inspect.isclass(obj := getattr(he, name)) and issubclass(obj, BaseException)
    ]


def test_every_class_of_the_tree_has_its_own_row() -> None:
    missing = [c.__name__ for c in tree_classes() + gateway_classes() if c not in he.ERROR_TABLE]
    assert missing == [], f"error classes with no row in ERROR_TABLE: {missing}"


def test_every_subclass_defined_in_the_errors_module_is_exported() -> None:
    """A class added to errors.py but not to __all__ would escape the test above."""
    defined = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj)
        and obj.__module__ == errors.__name__
        and issubclass(obj, BaseException)
        and not issubclass(obj, Warning)
    ]
    assert {c.__name__ for c in defined} <= set(errors.__all__)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (errors.InvalidInputError("temperature", "must be between 0 and 2"), 400, "invalid_value"),
        (errors.BadRequestError("refused", status_code=422), 400, "invalid_request"),
        (errors.ContentFilteredError("blocked"), 400, "content_filter"),
        (errors.ContextWindowExceededError("too long", limit=2048), 400, "context_length_exceeded"),
        (he.GatewayAuthenticationError("no key"), 401, "invalid_api_key"),
        (he.UnknownModelError("no such model"), 404, "model_not_found"),
        (he.RequestTooLargeError("body", "too large"), 413, "request_too_large"),
        (he.RequestSchemaError("messages", "is required"), 422, "invalid_type"),
        (errors.RateLimitError("slow down", retry_after=2.2), 429, "rate_limit_exceeded"),
        (he.QueueFullError("busy", retry_after=3), 429, "queue_full"),
        (errors.AuthenticationError("upstream said 401", status_code=401), 502, None),
        (errors.PermissionDeniedError("upstream said 403"), 502, None),
        (errors.ModelNotFoundError("upstream has no such model"), 502, None),
        (errors.BackendError("upstream 500"), 502, "upstream_error"),
        (errors.IncompleteResponseError("cut"), 502, "upstream_incomplete"),
        (errors.MultiLLMError("other"), 502, "upstream_error"),
        (errors.BackendUnavailableError("down"), 503, "upstream_unavailable"),
        (errors.BackendTimeoutError("slow"), 504, "upstream_timeout"),
        (NotImplementedError("no streams"), 501, "not_implemented"),
        (ValueError("bad value deep in a call"), 400, "invalid_value"),
        (KeyError("a bug"), 500, "internal_error"),
    ],
)
def test_rows(exc: BaseException, status: int, code: str | None) -> None:
    got, body, headers = he.error_body(exc)
    assert got == status
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    if status == 429:
        assert int(headers["Retry-After"]) >= 1
    if status == 401:
        assert headers["WWW-Authenticate"] == "Bearer"


def test_type_is_the_class_of_the_tree() -> None:
    assert he.error_body(he.QueueFullError("busy"))[1]["error"]["type"] == "RateLimitError"
    assert he.error_body(he.RequestSchemaError("a", "b"))[1]["error"]["type"] == (
        "InvalidInputError"
    )
    assert he.error_body(errors.IncompleteResponseError("x"))[1]["error"]["type"] == (
        "IncompleteResponseError"
    )
    internal = he.error_body(KeyError("secret internals"))[1]["error"]
    assert internal["type"] == "InternalServerError"
    assert "secret internals" not in internal["message"]


def test_params() -> None:
    assert he.error_body(errors.InvalidInputError("top_p", "x"))[1]["error"]["param"] == "top_p"
    assert he.error_body(he.UnknownModelError("x"))[1]["error"]["param"] == "model"
    ctx = errors.ContextWindowExceededError("x")
    assert he.error_body(ctx)[1]["error"]["param"] == "messages"
    assert he.error_body(ctx, param="prompt")[1]["error"]["param"] == "prompt"


def test_retry_after_rounds_up_and_a_503_says_it_where_the_upstream_did() -> None:
    assert he.error_body(errors.RateLimitError("x", retry_after=2.2))[2]["Retry-After"] == "3"
    assert he.error_body(errors.RateLimitError("x"))[2]["Retry-After"] == "1"
    assert "Retry-After" not in he.error_body(errors.BackendUnavailableError("x"))[2]
    later = errors.BackendUnavailableError("x", retry_after=7)
    assert he.error_body(later)[2]["Retry-After"] == "7"


def test_a_context_overflow_carries_the_fit_reports_numbers() -> None:
    report = FitReport(
        fits=False,
        prompt_tokens=3000,
        exact=True,
        max_tokens=100,
        max_tokens_effective=100,
        context_window=2048,
        max_input_tokens=None,
        max_output_tokens=None,
        room=-952,
        reason="prompt has 3000 tokens + max_tokens=100 = 3100 > context_window=2048",
    )
    exc = errors.ContextWindowExceededError("x", limit=2048, fit=report)
    message = he.error_body(exc)[1]["error"]["message"]
    assert "maximum context length is 2048 tokens" in message
    assert "3000" in message and "3100" in message
    # Clients that read the words (this package's own from_status among them) see an overflow.
    assert errors.looks_like_context_overflow(message)


def test_messages_are_redacted() -> None:
    exc = errors.BackendUnavailableError("could not connect to http://u:hunter2@host.invalid")
    body = he.error_body(exc, redact=lambda t: t.replace("hunter2", "***"))[1]
    assert "hunter2" not in body["error"]["message"]
