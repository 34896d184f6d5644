import inspect

import httpx
import pytest
from langchain_core import exceptions as lc

from langchain_multillm import errors as e

TREE = {
    e.ContextWindowExceededError: lc.ContextOverflowError,
    e.BadRequestError: lc.ModelInvalidRequestError,
    e.AuthenticationError: lc.ModelAuthenticationError,
    e.PermissionDeniedError: lc.ModelPermissionDeniedError,
    e.ModelNotFoundError: lc.ModelNotFoundError,
    e.RateLimitError: lc.ModelRateLimitError,
    e.BackendUnavailableError: lc.ModelConnectionError,
    e.BackendTimeoutError: lc.ModelTimeoutError,
    e.BackendError: lc.ModelAPIError,
    e.ContentFilteredError: lc.ModelAPIError,
}


@pytest.mark.parametrize(("ours", "theirs"), TREE.items())
def test_every_class_is_also_langchains(ours: type, theirs: type) -> None:
    assert issubclass(ours, e.MultiLLMError)
    assert issubclass(ours, theirs)
    assert issubclass(ours, lc.ModelError)


def test_retryable_follows_langchain() -> None:
    assert e.RateLimitError("x").is_retryable
    assert e.BackendUnavailableError("x").is_retryable
    assert e.BackendTimeoutError("x").is_retryable
    assert not e.BadRequestError("x").is_retryable
    assert not e.ContextWindowExceededError("x").is_retryable
    assert not e.IncompleteResponseError("x").is_retryable
    assert not e.AuthenticationError("x").is_retryable


def test_invalid_input_is_a_value_error_naming_the_field() -> None:
    err = e.InvalidInputError("temperature", "must be between 0 and 2; got 5")
    assert isinstance(err, ValueError)
    assert err.field == "temperature"
    assert str(err).startswith("temperature:")


@pytest.mark.parametrize(
    ("status", "message", "cls"),
    [
        (400, "bad field", e.BadRequestError),
        (422, "validation", e.BadRequestError),
        (
            400,
            "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 input tokens",
            e.ContextWindowExceededError,
        ),
        (401, "no key", e.AuthenticationError),
        (402, "Insufficient Balance", e.PermissionDeniedError),
        (403, "forbidden", e.PermissionDeniedError),
        (404, "The model `x` does not exist", e.ModelNotFoundError),
        (408, "timeout", e.BackendTimeoutError),
        (429, "slow down", e.RateLimitError),
        (500, "boom", e.BackendError),
        (502, "bad gateway", e.BackendUnavailableError),
        (503, "overloaded", e.BackendUnavailableError),
        (504, "gateway timeout", e.BackendUnavailableError),
    ],
)
def test_status_mapping(status: int, message: str, cls: type) -> None:
    err = e.from_status(status, message, backend="t")
    assert type(err) is cls
    assert err.status_code == status
    assert message in str(err)


def test_retry_after_seconds_and_ms() -> None:
    err = e.from_status(429, "x", headers={"retry-after": "7"})
    assert isinstance(err, e.RateLimitError)
    assert err.retry_after == 7.0
    assert e.parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert e.parse_retry_after({"retry-after": "not a date"}) is None
    assert e.parse_retry_after({}) is None


def test_error_body_shapes() -> None:
    assert e.error_message_from_body({"error": {"message": "m1"}}, "d") == "m1"
    assert e.error_message_from_body({"error": "m2", "error_type": "validation"}, "d") == "m2"
    assert e.error_message_from_body({"detail": "m3"}, "d") == "m3"
    assert e.error_message_from_body("<html>oops</html>", "d") == "<html>oops</html>"
    assert e.error_message_from_body(None, "d") == "d"


def _httpx_exception_classes() -> list[type]:
    return [
        obj
        for _, obj in inspect.getmembers(httpx, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__.startswith("httpx")
    ]


def test_every_httpx_exception_is_mapped() -> None:
    """Fails when httpx grows an exception class the mapping does not name."""
    classes = _httpx_exception_classes()
    assert len(classes) > 20
    missing = [
        c.__name__ for c in classes if c not in e.HTTPX_ERRORS and c is not httpx.HTTPStatusError
    ]
    assert missing == []


@pytest.mark.parametrize("cls", [c for c in e.HTTPX_ERRORS if c is not httpx.HTTPError])
def test_httpx_mapping_gives_the_tables_class(cls: type) -> None:
    req = httpx.Request("GET", "http://x.invalid")
    for args, kwargs in ((("boom",), {"request": req}), (("boom",), {}), ((), {})):
        try:
            exc = cls(*args, **kwargs)
            break
        except TypeError:
            continue
    mapped = e.from_httpx_error(exc, backend="t")
    assert type(mapped) is e.HTTPX_ERRORS[cls][0]


def test_http_status_error_maps_by_status() -> None:
    req = httpx.Request("GET", "http://x.invalid")
    resp = httpx.Response(
        429, headers={"retry-after": "3"}, json={"error": {"message": "busy"}}, request=req
    )
    mapped = e.from_httpx_error(httpx.HTTPStatusError("x", request=req, response=resp))
    assert isinstance(mapped, e.RateLimitError)
    assert mapped.retry_after == 3.0
    assert "busy" in str(mapped)
