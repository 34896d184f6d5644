import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_multillm._base import Prompt
from langchain_multillm.errors import ContextWindowExceededError, InvalidInputError
from langchain_multillm.fit import (
    SLACK_PER_MESSAGE,
    FitReport,
    Limits,
    TemplateBound,
    chat_bound,
    check_policy,
    decide,
    enforce,
)

W = Limits(context_window=100)


def test_fits_and_room() -> None:
    r = decide(60, exact=True, max_tokens=40, limits=W)
    assert r.fits and r.room == 40 and r.reason is None


def test_prompt_plus_max_tokens_over_window() -> None:
    r = decide(60, exact=True, max_tokens=41, limits=W)
    assert not r.fits
    assert "60 tokens + max_tokens=41 = 101 > context_window=100" in (r.reason or "")


def test_max_tokens_none_checks_prompt_alone_leaving_one_token() -> None:
    assert decide(99, exact=True, max_tokens=None, limits=W).fits
    r = decide(100, exact=True, max_tokens=None, limits=W)
    assert not r.fits and r.room == 0


def test_separate_input_and_output_limits() -> None:
    lim = Limits(context_window=100, max_input_tokens=50, max_output_tokens=20)
    assert not decide(51, exact=True, max_tokens=1, limits=lim).fits
    r = decide(10, exact=True, max_tokens=21, limits=lim)
    assert not r.fits and "max_output_tokens=20" in (r.reason or "")
    r = decide(10, exact=True, max_tokens=20, limits=lim)
    assert r.fits and r.room == 20  # min(window - prompt, max_output)


def test_unknown_window_never_blocks() -> None:
    r = decide(10**9, exact=True, max_tokens=10**9, limits=Limits())
    assert r.fits and not r.exact and r.reason == "window unknown" and r.context_window is None


def test_bound_is_marked_inexact() -> None:
    r = decide(120, exact=False, max_tokens=None, limits=W)
    assert not r.fits and "(upper bound)" in (r.reason or "")


def test_policy_raise_carries_the_numbers() -> None:
    r = decide(90, exact=True, max_tokens=50, limits=W)
    with pytest.raises(ContextWindowExceededError) as info:
        enforce(r, "raise", backend="t")
    err = info.value
    assert (err.prompt_tokens, err.max_tokens, err.limit) == (90, 50, 100)
    assert err.fit is r


def test_policy_clamp_lowers_max_tokens_to_room() -> None:
    r = enforce(decide(90, exact=True, max_tokens=50, limits=W), "clamp", backend="t")
    assert r.fits and r.max_tokens == 50 and r.max_tokens_effective == 10
    assert "clamped" in (r.reason or "")


def test_policy_clamp_still_raises_when_prompt_alone_overflows() -> None:
    with pytest.raises(ContextWindowExceededError):
        enforce(decide(100, exact=True, max_tokens=5, limits=W), "clamp", backend="t")


def test_policy_ignore_passes() -> None:
    r = decide(500, exact=True, max_tokens=5, limits=W)
    assert enforce(r, "ignore", backend="t") is r


def test_policy_names_the_field() -> None:
    with pytest.raises(InvalidInputError, match="context_overflow"):
        check_policy("truncate")


def test_report_is_frozen_and_printable() -> None:
    r = decide(10, exact=True, max_tokens=5, limits=W)
    assert isinstance(r, FitReport)
    with pytest.raises(AttributeError):
        r.fits = False  # type: ignore[misc]
    assert "fits: 10 prompt tokens (exact)" in str(r)


def test_template_bound_from_counts() -> None:
    # base [u]=10; [s,u]=13; [u,a]=15; [u,a,u]=19
    tb = TemplateBound.from_counts([10, 13, 15, 19])
    assert tb is not None
    assert tb.base == 10 and tb.per_role == {"system": 3, "assistant": 5, "user": 4}
    b = tb.bound([("user", "héllo"), ("assistant", "ok")])
    assert b == 10 + 2 * SLACK_PER_MESSAGE + len("héllo".encode()) + 5 + 2
    assert tb.bound([("user", "x"), ("tool", "y")]) is None  # tool role not measured
    assert TemplateBound.from_counts([None, 1, 2, 3]) is None


def test_template_bound_measure_tolerates_refused_shapes() -> None:
    def count(msgs: list[dict[str, str]]) -> int:
        if msgs[0]["role"] == "system":
            raise ValueError("System role not supported")
        return 5 * len(msgs)

    tb = TemplateBound.measure(count)
    assert tb is not None and "system" not in tb.per_role and tb.per_role["assistant"] == 5


def test_chat_bound_without_template_is_generous() -> None:
    p = Prompt(messages=[SystemMessage("s"), HumanMessage("hello"), AIMessage("hi")])
    assert chat_bound(p, None) == 128 + 3 * 16 + len("s") + len("hello") + len("hi")
    assert chat_bound(Prompt(text="abc"), None) == 5
    img = Prompt(messages=[HumanMessage([{"type": "image_url", "image_url": {"url": "data:,"}}])])
    assert chat_bound(img, None) is None


def test_chat_bound_with_tools_keeps_a_large_measured_template() -> None:
    # A template whose own tokens (2000: a long default system prompt) exceed the unmeasured
    # allowance: with tools bound, the bound still covers them, plus the tools' allowance.
    tb = TemplateBound(base=2000, per_role={"user": 2})
    msgs = [HumanMessage("hi")]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    without = chat_bound(Prompt(messages=msgs), tb)
    with_tools = chat_bound(Prompt(messages=msgs, tools=tools), tb)
    assert without is not None and with_tools is not None
    assert with_tools > without + len(json.dumps(tools))
