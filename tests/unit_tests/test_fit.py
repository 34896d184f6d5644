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


# ---- the two bounds and the exact count, through a model's fit gate ----

from typing import Any  # noqa: E402

from langchain_core.messages import AIMessage as _AI  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from pydantic import Field  # noqa: E402

from langchain_multillm._base import ChatRequest, MultiLLMChatModel  # noqa: E402
from langchain_multillm.fit import UNKNOWN_MAX_TOKEN_BYTES, lower_bound, undecided  # noqa: E402


class CountingModel(MultiLLMChatModel):
    """A model whose tokenizer makes one token of every 4 bytes (its longest token is 4 bytes),
    with the byte bound, and an exact counter that may be missing; it counts what it is asked."""

    model_name: str = "counting"
    window: int = 1000
    can_count: bool = True
    longest: int | None = 4
    exact_calls: int = 0
    sent: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "counting"

    def _fetch_limits(self) -> Limits:
        return Limits(context_window=self.window)

    def _count_bound(self, prompt: Prompt) -> int | None:
        return chat_bound(prompt, None)

    def _max_token_bytes(self) -> int | None:
        return self.longest

    def _count_exact(self, prompt: Prompt) -> int | None:
        if not self.can_count:
            return None
        self.exact_calls += 1
        text = (
            prompt.text
            if prompt.text is not None
            else "".join(str(m.content) for m in prompt.messages or [])
        )
        return -(-len(text.encode()) // 4) + 3

    def _health(self) -> Any:
        raise NotImplementedError

    def _chat(self, req: ChatRequest) -> ChatResult:
        self.sent.append(dict(req.params))
        return ChatResult(generations=[ChatGeneration(message=_AI("ok"))])

    def _chat_stream(self, req: ChatRequest) -> Any:  # required hooks, not used here
        raise NotImplementedError

    def _achat_stream(self, req: ChatRequest) -> Any:
        raise NotImplementedError


def test_lower_bound_counts_what_every_template_keeps() -> None:
    p = Prompt(messages=[SystemMessage("  abcd  "), HumanMessage("é" * 4), AIMessage("x" * 400)])
    # system "abcd" (stripped: 4 bytes) + user 8 bytes; the assistant turn counts nothing
    assert lower_bound(p, 4) == 3
    assert lower_bound(Prompt(text="a" * 10), 4) == 3
    assert lower_bound(Prompt(text=""), 4) == 0


def test_a_prompt_that_fits_is_never_refused_by_the_upper_bound() -> None:
    # 2,000 bytes (500 tokens in truth) is over the window by the byte bound: counted exactly.
    llm = CountingModel(window=1000)
    report = llm.check_fit("a" * 2000)
    assert report.fits and report.exact and report.counted == "exact"
    assert llm.exact_calls == 1
    llm.invoke("a" * 2000)
    assert len(llm.sent) == 1


def test_without_an_exact_counter_an_undecided_prompt_is_sent() -> None:
    llm = CountingModel(window=1000, can_count=False)
    report = llm.check_fit("a" * 2000)
    assert report.fits and not report.exact and report.counted == "range"
    assert report.prompt_tokens_min == 500 and report.prompt_tokens > 1000
    assert "backend judges" in (report.reason or "")
    llm.invoke("a" * 2000)
    assert len(llm.sent) == 1
    # clamp with no proof of room: max_tokens lowered to the most room the lower bound leaves
    llm.invoke("a" * 2000, max_tokens=900, context_overflow="clamp")
    assert llm.sent[-1]["max_tokens"] == 1000 - 500


def test_the_lower_bound_refuses_at_once_without_counting() -> None:
    llm = CountingModel(window=1000)
    big = "a" * 10_000_000
    with pytest.raises(ContextWindowExceededError) as info:
        llm.invoke(big)
    report = info.value.fit
    assert report is not None and report.counted == "lower_bound"
    assert report.prompt_tokens == 2_500_000 and "at least 2500000 tokens" in (report.reason or "")
    assert llm.exact_calls == 0 and llm.sent == []
    # where the vocabulary is unknown, the assumed longest token decides the same way
    unknown = CountingModel(window=1000, longest=None)
    with pytest.raises(ContextWindowExceededError):
        unknown.invoke(big)
    assert unknown.exact_calls == 0
    assert unknown.check_fit(big).prompt_tokens == -(-(10_000_000 + 0) // UNKNOWN_MAX_TOKEN_BYTES)


def test_clamp_counts_exactly_when_only_the_answer_overflows() -> None:
    llm = CountingModel(window=1000)
    # 3,600 bytes: at least 900 tokens, exactly 903: the room left is 97
    llm.invoke("a" * 3600, max_tokens=500, context_overflow="clamp")
    assert llm.sent[-1]["max_tokens"] == 97 and llm.exact_calls == 1
    with pytest.raises(ContextWindowExceededError):  # and raise refuses on the lower bound alone
        llm.invoke("a" * 3600, max_tokens=500)
    assert llm.exact_calls == 1


def test_check_fit_and_is_valid_prompt_honour_the_models_own_max_tokens() -> None:
    llm = CountingModel(window=1000, max_tokens=200)
    text = "a" * 3400  # exactly 853 tokens: fits alone, not with 200 more
    assert not llm.check_fit(text).fits and llm.check_fit(text).max_tokens == 200
    assert not llm.is_valid_prompt(text)
    with pytest.raises(ContextWindowExceededError):
        llm.invoke(text)
    assert llm.check_fit(text, max_tokens=100).fits
    clamping = CountingModel(window=1000, max_tokens=200, context_overflow="clamp")
    assert clamping.is_valid_prompt(text)  # a clamping model accepts it
    assert not clamping.is_valid_prompt("a" * 4000)  # not when the prompt alone overflows


def test_undecided_report_reads_as_a_range() -> None:
    r = undecided(1500, 400, max_tokens=None, limits=W, clamp=False)
    assert r.fits and "400-1500 prompt tokens (range)" in str(r)
