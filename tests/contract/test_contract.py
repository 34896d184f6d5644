"""The package's promises (docs/index.md, fit.md, errors.md), asserted the same way for every
chat model of the table in ``rows.py``, each on its real engine or protocol fixture.

Every test takes ``bench`` (``conftest.py``): the row under test, its peer behind a fault proxy
(HTTP rows) or an instrumented engine (in-process rows). A promise that does not apply to a row
is skipped with the row's reason; nothing passes by being skipped where it applies. No test
looks at the model's words: only at counts, errors, usage, timings of requests, and whether two
answers are the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.load import dumpd, dumps

from langchain_multillm import (
    ContextWindowExceededError,
    InvalidInputError,
    MultiLLMError,
)
from langchain_multillm.fit import Limits
from tests import peers
from tests.contract import concurrency
from tests.contract.bench import Bench, acollect, filler, input_room, merge
from tests.contract.proxy import Hit
from tests.contract.rows import error_body, executor_workers

pytestmark = [pytest.mark.timeout(600)]

Q = "Name a colour."
SMALL = 8  # max_tokens of every call that needs no more


def window_of(limits: Limits) -> int:
    limit = limits.context_window or limits.max_input_tokens
    assert limit, f"no window known: {limits}"
    return limit


# ------------------------------------------------------------------ fit before sending


def test_over_window_is_refused_before_sending(bench: Bench) -> None:
    """A prompt over the window raises ContextWindowExceededError and no generation reaches the
    backend (sync, async, stream). A backend without an exact counter may send a prompt its
    bounds cannot settle: then the backend's own refusal is the same error, one request a call."""
    model = bench.make()
    limits = model.get_limits()
    room = input_room(limits, SMALL)
    over = bench.prompt_of(room + room // 4)
    calls = {
        "invoke": lambda: model.invoke(over),
        "ainvoke": lambda: asyncio.run(model.ainvoke(over)),
        "stream": lambda: list(model.stream(over)),
    }
    for name, run in calls.items():
        bench.instrument.reset()
        with pytest.raises(ContextWindowExceededError) as info:
            run()
        sent = bench.instrument.generations()
        if bench.row.exact_count:
            assert sent == 0, f"{name}: {sent} generation(s) reached the backend"
            assert info.value.fit is not None and not info.value.fit.fits, name
        else:
            assert sent <= 1, f"{name}: {sent} generations for one refused call"


def test_far_over_window_is_refused_without_any_generation(bench: Bench) -> None:
    """A prompt 128 windows long in tokens (512 in bytes: 1 MB for a window of 2048) is refused
    before sending by every backend, exact counter or not: a lower bound proves it cannot fit
    (bytes / the longest token, even for a vocabulary whose longest token is 256 bytes)."""
    model = bench.make()
    limits = model.get_limits()
    huge = filler(128 * window_of(limits))
    bench.instrument.reset()
    with pytest.raises(ContextWindowExceededError):
        model.invoke(huge)
    with pytest.raises(ContextWindowExceededError):
        asyncio.run(acollect(model.astream(huge)))
    assert bench.instrument.generations() == 0


# ------------------------------------------------------------------ no refusal of what fits


def test_prompt_near_the_window_is_accepted(bench: Bench) -> None:
    """A long prompt that truly fits (4 tokens under the room ``max_tokens`` leaves) is sent and
    answered; the model calls it valid, and its exact count is the peer's."""
    model = bench.make()
    limits = model.get_limits()
    tokens = input_room(limits, SMALL) - 4
    near = bench.prompt_of(tokens)
    try:
        out = model.invoke(near)
    except ContextWindowExceededError as err:
        pytest.fail(f"refused a prompt of {tokens} tokens that fits {limits}: {err}")
    assert out.usage_metadata and out.usage_metadata["input_tokens"] == tokens, (
        "the suite's calibration is off (not a package defect)"
    )
    report = model.check_fit(near, max_tokens=SMALL)
    assert report.fits, str(report)
    assert model.is_valid_prompt(near), str(model.check_fit(near))


def test_prompt_over_the_byte_bound_but_under_the_window_is_accepted(bench: Bench) -> None:
    """Text whose UTF-8 bytes are more than the room for a prompt, but whose tokens are half of
    it: a byte bound cannot prove that it fits, nor refuse it; it is sent and answered."""
    model = bench.make()
    limits = model.get_limits()
    room = input_room(limits, SMALL)
    tokens = room // 2
    text = bench.prompt_of(tokens)
    assert len(text.encode()) > room
    report = model.check_fit(text, max_tokens=SMALL)
    assert report.fits, str(report)
    try:
        out = model.invoke(text)
    except ContextWindowExceededError as err:
        pytest.fail(f"refused {len(text.encode())} bytes / {tokens} tokens under {limits}: {err}")
    assert out.usage_metadata and out.usage_metadata["input_tokens"] == tokens


# ------------------------------------------------------------------ clamp


def test_clamp_lowers_max_tokens_to_the_room_left(bench: Bench) -> None:
    """``context_overflow="clamp"`` with a max_tokens far over the room: the call goes ahead with
    max_tokens lowered to the room, and never generates past it."""
    model = bench.make()
    limits = model.get_limits()
    big = 4 * window_of(limits)
    near = bench.prompt_of(input_room(limits, SMALL) - 4)
    report = model.check_fit(near, max_tokens=big)
    if report.room is None or report.room > 64:
        # At the input limit the room is still large (TGI keeps 1024 of 2048 tokens for output;
        # Gemini has no total window): cap the output so the clamped call stays short.
        model = bench.make(max_output_tokens=SMALL)
        report = model.check_fit(near, max_tokens=big)
    assert not report.fits, str(report)
    room = report.room
    assert room is not None and 0 < room <= 64, str(report)
    out = model.invoke(near, max_tokens=big, context_overflow="clamp")
    usage = out.usage_metadata
    assert usage is not None
    assert usage["output_tokens"] <= room
    if limits.context_window is not None:
        assert usage["input_tokens"] + usage["output_tokens"] <= limits.context_window


# ------------------------------------------------------------------ limits, properties, profile


def _assert_agree(model: Any, limits: Limits) -> None:
    props = (model.context_window, model.max_input_tokens, model.max_output_tokens)
    assert props == (limits.context_window, limits.max_input_tokens, limits.max_output_tokens), (
        f"properties {props} != get_limits() {limits}"
    )
    profile = dict(model.profile or {})
    assert profile.get("max_input_tokens") == (limits.max_input_tokens or limits.context_window), (
        f"profile {profile} vs {limits}"
    )
    assert profile.get("max_output_tokens") == limits.max_output_tokens, (
        f"profile {profile} vs {limits}"
    )


def test_limits_properties_and_profile_agree(bench: Bench) -> None:
    """After discovery, the properties, ``get_limits()`` and LangChain's ``profile`` say the
    same (sync and async discovery)."""
    model = bench.make()
    limits = model.get_limits()
    _assert_agree(model, limits)
    other = bench.make()
    alimits = asyncio.run(other.aget_limits())
    assert alimits == limits
    _assert_agree(other, alimits)


def test_profile_is_known_before_any_request(bench: Bench) -> None:
    """Where the limits are known without asking the backend (a table, the file's settings),
    ``profile`` is filled at once and agrees with ``get_limits()``, with no request sent."""
    bench.require("limits_without_io")
    bench.instrument.reset()
    model = bench.make()
    profile = dict(model.profile or {})
    limits = model.get_limits()
    assert bench.instrument.requests() == 0
    assert profile, "profile is empty before the first call"
    assert profile.get("max_input_tokens") == (limits.max_input_tokens or limits.context_window)
    assert profile.get("max_output_tokens") == limits.max_output_tokens


def test_valid_prompt_means_the_call_is_accepted(bench: Bench) -> None:
    """``is_valid_prompt`` / ``check_fit`` honour the model's own ``max_tokens``: a prompt that
    fits alone but not with the model's max_tokens is not valid, and invoke refuses it. (The
    other way, valid and taken: test_prompt_near_the_window_is_accepted.)"""
    bench.require("valid_prompt")
    limits = bench.make().get_limits()
    if limits.context_window is not None:
        tokens = input_room(limits, 1) - 4
        prompt = bench.prompt_of(tokens)
        too_many = limits.context_window - tokens + 8
    else:
        assert limits.max_output_tokens is not None
        prompt, too_many = Q, limits.max_output_tokens + 1
    bad = bench.make(max_tokens=too_many)
    bench.instrument.reset()
    report = bad.check_fit(prompt)
    assert not report.fits, f"max_tokens={too_many} ignored: {report}"
    assert bad.is_valid_prompt(prompt) is False
    assert asyncio.run(bad.ais_valid_prompt(prompt)) is False
    with pytest.raises(ContextWindowExceededError):
        bad.invoke(prompt)
    if bench.row.exact_count:
        assert bench.instrument.generations() == 0


# ------------------------------------------------------------------ health


def test_health_ready_when_up(bench: Bench) -> None:
    """Up: alive and ready, sync and async, and no generation billed for it. Where only a
    generation can prove readiness (the row says why), the free check proves ``alive`` and
    ``health(deep=True)`` proves ``ready`` with exactly one generation."""
    model = bench.make()
    model.get_limits()  # in-process: loaded; HTTP: discovered
    bench.instrument.reset()
    report = model.health()
    areport = asyncio.run(model.ahealth())
    assert model.is_alive()
    assert bench.instrument.generations() == 0, "a free health check generated"
    if bench.row.ready_by_generation is None:
        assert report.alive and report.ready, str(report)
        assert areport.alive and areport.ready, str(areport)
        return
    assert report.alive and areport.alive, f"{report} / {areport}"
    # A generation on the fixture's CPU engine may take longer than the default 5 s.
    model = bench.make(health_timeout=60)
    deep = model.health(deep=True)
    assert deep.alive and deep.ready, str(deep)
    assert bench.instrument.generations() == 1
    adeep = asyncio.run(model.ahealth(deep=True))
    assert adeep.alive and adeep.ready, str(adeep)


def test_health_down_when_nothing_is_there(bench: Bench) -> None:
    """Nothing listens (a closed port on 127.0.0.1) or the model file is gone: not alive, not
    ready, never an exception, within health_timeout."""
    model = bench.row.build_down(bench.peer)
    bench.models.append(model)
    started = time.monotonic()
    report = model.health()
    assert not report.alive and not report.ready, str(report)
    areport = asyncio.run(model.ahealth())
    assert not areport.alive and not areport.ready, str(areport)
    assert model.is_alive() is False
    assert time.monotonic() - started < 3 * model.health_timeout + 5


def test_health_when_the_backend_answers_unhealthy(bench: Bench) -> None:
    """The backend answers but says it cannot serve (TGI / vLLM ``/health`` 503, a 503 from the
    route a health check asks, a dead engine): ``is_alive()`` means the model can answer, so
    neither alive nor ready."""
    bench.require("unhealthy")
    model = bench.make()
    model.get_limits()
    bench.instrument.make_unhealthy()
    report = model.health()
    assert not report.ready, str(report)
    assert not report.alive, f"alive while the backend says it cannot serve: {report}"
    areport = asyncio.run(model.ahealth())
    assert not areport.alive and not areport.ready, str(areport)


# ------------------------------------------------------------------ usage in every stream


def test_usage_in_every_stream(bench: Bench) -> None:
    """stream and astream carry usage_metadata (input, output, total) on the streamed message,
    with the input tokens of the same call made without streaming."""
    model = bench.make()
    reference = model.invoke(Q).usage_metadata
    assert reference is not None
    streamed = {
        "stream": merge(list(model.stream(Q))),
        "astream": merge(asyncio.run(acollect(model.astream(Q)))),
    }
    for name, message in streamed.items():
        usage = message.usage_metadata
        assert usage is not None, f"{name}: no usage_metadata"
        assert usage["input_tokens"] == reference["input_tokens"], name
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"], name


# ------------------------------------------------------------------ cut streams, retries


def _stream_until_error(run: Any) -> tuple[int, BaseException | None]:
    got = 0
    try:
        for _ in run():
            got += 1
    except BaseException as exc:
        return got, exc
    return got, None


def test_a_stream_cut_upstream_raises(bench: Bench) -> None:
    """A stream that ends before the model finished (a clean end of the body, or a dropped
    connection; in-process: the engine failing mid-stream) raises a MultiLLMError (never a clean
    finish), and once a chunk has reached the caller it is not retried."""
    model = bench.make()
    model.get_limits()
    for mode in bench.instrument.cut_modes():
        for way in ("stream", "astream"):
            bench.instrument.reset()
            bench.instrument.cut_next(mode)
            if way == "stream":
                got, err = _stream_until_error(lambda: model.stream(Q))
            else:
                chunks: list[Any] = []

                async def consume(into: list[Any] = chunks) -> None:
                    async for c in model.astream(Q):
                        into.append(c)

                try:
                    asyncio.run(consume())
                    err = None
                except BaseException as exc:
                    err = exc
                got = len(chunks)
            assert err is not None, f"{mode}/{way}: the cut stream finished cleanly"
            assert isinstance(err, MultiLLMError), f"{mode}/{way}: {type(err).__name__}: {err}"
            assert got >= 1, f"{mode}/{way}: no chunk before the cut ({err}): the suite cut early"
            sent = bench.instrument.generations()
            assert sent == 1, f"{mode}/{way}: retried after {got} chunk(s): {sent} requests"


def test_retries_before_the_first_chunk(bench: Bench) -> None:
    """A retryable failure before anything was streamed is retried (stream and invoke)."""
    model = bench.make(max_retries=2)
    model.get_limits()
    for name, run in {
        "stream": lambda: merge(list(model.stream(Q))),
        "invoke": lambda: model.invoke(Q),
    }.items():
        bench.instrument.reset()
        bench.instrument.fail_next(1)
        out = run()
        assert out.response_metadata.get("finish_reason"), name
        assert bench.instrument.generations() == 2, name


def test_retry_after_is_honoured(bench: Bench) -> None:
    """A 429 with ``Retry-After: 1`` is retried after a second, not after the jittered
    0.25-0.5 s of the first backoff."""
    bench.require("retry_after")
    assert bench.proxy is not None
    model = bench.make(max_retries=2)
    model.get_limits()
    bench.instrument.reset()
    bench.proxy.respond(
        429, headers={"Retry-After": "1"}, body=error_body(429, "slow down", "RESOURCE_EXHAUSTED")
    )
    model.invoke(Q)
    sent = bench.proxy.log(lambda h: h.generation)
    assert len(sent) == 2, [h.status for h in sent]
    waited = sent[1].at - sent[0].at
    assert waited >= 0.95, f"retried after {waited:.2f}s, Retry-After said 1s"


# ------------------------------------------------------------------ input checks


def test_unknown_parameter_is_refused_by_name(bench: Bench) -> None:
    """A misspelled call parameter raises InvalidInputError naming it, before anything is sent
    (invoke, stream, ainvoke), on a model that has not talked to its backend yet."""
    model = bench.make()
    bench.instrument.reset()
    with pytest.raises(InvalidInputError, match="temprature"):
        model.invoke("hi", temprature=0.2)
    with pytest.raises(InvalidInputError, match="temprature"):
        list(model.stream("hi", temprature=0.2))
    with pytest.raises(InvalidInputError, match="temprature"):
        asyncio.run(model.ainvoke("hi", temprature=0.2))
    assert bench.instrument.requests() == 0


# ------------------------------------------------------------------ secrets


class _Seen(BaseCallbackHandler):
    """Everything a tracer is given at the start of a call."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.text.append(json.dumps(serialized, default=str))
        self.text.append(json.dumps(kwargs, default=str))


def test_secrets_never_shown(bench: Bench) -> None:
    """The key is in none of repr, str, model_dump, LangChain's dumps/dumpd, or what a tracer
    sees at the start of a call."""
    bench.require("secrets")
    secret = bench.row.secret
    assert secret
    model = bench.make(api_key=secret)
    seen = _Seen()
    model.invoke(Q, config={"callbacks": [seen]})
    texts = {
        "repr": repr(model),
        "str": str(model),
        "model_dump": json.dumps(model.model_dump(), default=str),
        "dumps": dumps(model),
        "dumpd": json.dumps(dumpd(model), default=str),
        "tracer": "\n".join(seen.text),
    }
    for name, text in texts.items():
        assert secret not in text, f"the key is in {name}"


def _echo_credentials(hit: Hit) -> bytes:
    """A 401 body that repeats every credential the request carried, as some servers do."""
    creds = [hit.headers.get(h, "") for h in ("authorization", "api-key", "x-goog-api-key")]
    shown = ", ".join(c for c in creds if c) or hit.query
    return error_body(401, f"Incorrect API key provided: {shown}", "UNAUTHENTICATED")


def test_auth_error_never_shows_the_key(bench: Bench) -> None:
    """An auth error (the peer's own refusal of a wrong key; a 401 where the peer checks no
    key) does not show the key."""
    bench.require("secrets")
    assert bench.proxy is not None
    if bench.row.wrong_key:
        key = bench.row.wrong_key
    else:
        key = bench.row.secret or ""
        bench.proxy.respond(
            401, times=None, match=lambda h: True,
            body=error_body(401, "Unauthorized", "UNAUTHENTICATED"),
        )  # fmt: skip
    with pytest.raises(MultiLLMError) as info:
        bench.make(api_key=key).invoke(Q)
    text = f"{info.value}\n{info.value!r}"
    assert key not in text, f"the key is shown: {text}"


def test_auth_error_never_shows_a_key_the_server_echoes(bench: Bench) -> None:
    """A 401 whose body repeats the credential it was sent (some servers do) does not put the key
    in the error's text."""
    bench.require("secrets")
    assert bench.proxy is not None
    key = bench.row.secret or ""
    bench.proxy.respond(401, times=None, match=lambda h: True, body=_echo_credentials)
    with pytest.raises(MultiLLMError) as info:
        bench.make(api_key=key).invoke(Q)
    text = f"{info.value}\n{info.value!r}"
    assert key not in text, f"the echoed key is shown: {text}"


# ------------------------------------------------------------------ many calls at once


def _run_phase(bench: Bench, phase: str, n: int, quiet_s: float) -> dict[str, Any]:
    """Run a concurrency phase: in a child process (a deadlock is killed there), or, for an
    engine this process already holds (in-process vLLM: one engine per machine), in a thread.

    A slow machine is not a deadlock: the phase fails when nothing finished for ``quiet_s``
    seconds (the child reports each call that finishes), however long it takes in all."""
    if bench.row.id == "vllm-engine":
        return _run_phase_here(bench, phase, n, quiet_s)
    cmd = [
        sys.executable, "-m", "tests.contract.concurrency",
        bench.row.id, str(bench.target), phase, str(n),
    ]  # fmt: skip
    child = subprocess.Popen(
        cmd, cwd=peers.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ),
    )  # fmt: skip
    log: list[str] = []
    last = [time.monotonic()]

    def read() -> None:
        assert child.stderr is not None
        for line in child.stderr:
            log.append(line)
            last[0] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while child.poll() is None:
        if time.monotonic() - last[0] > quiet_s:
            child.kill()
            child.wait()
            tail = "".join(log[-30:])
            pytest.fail(f"{phase}: nothing finished for {quiet_s:.0f}s (a deadlock); log:\n{tail}")
        time.sleep(0.5)
    reader.join(5)
    out = child.stdout.read() if child.stdout is not None else ""
    assert child.returncode == 0, f"{phase}: exit {child.returncode}\n{''.join(log)[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _run_phase_here(bench: Bench, phase: str, n: int, quiet_s: float) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def work() -> None:
        model = bench.make(max_retries=8, max_tokens=2)
        if phase == "astreams":
            streaming = bench.make(max_retries=8, max_tokens=2, streaming=True)
            box["out"] = asyncio.run(concurrency.astreams(model, streaming, n))
        else:
            box["out"] = concurrency.interleaved(model)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(quiet_s * 4)
    if thread.is_alive():
        pytest.fail(f"{phase}: did not finish within {quiet_s * 4:.0f}s (a deadlock?)")
    assert "out" in box, f"{phase}: failed, see the log"
    return box["out"]


@pytest.mark.timeout(1800)
def test_concurrent_async_streams_all_finish(bench: Bench) -> None:
    """4x the default executor's workers of astreams gathered at once on one model, then an
    abatch of as many with streaming=True: all finish, each with usage."""
    n = 4 * executor_workers()
    out = _run_phase(bench, "astreams", n, quiet_s=120)
    assert out["astream_ok"] == n, out
    assert out["abatch_ok"] == n, out


def test_a_paused_stream_and_another_call_in_one_thread_finish(bench: Bench) -> None:
    """``it = llm.stream(a); next(it); llm.invoke(b)`` returns, and two streams advanced in turn
    (``zip``) both finish, on one model in one thread."""
    out = _run_phase(bench, "interleaved", 0, quiet_s=120)
    assert out["paused_stream_finished"] and out["invoke_while_paused"], out
    assert out["zip_pairs"] >= 1, out


# ------------------------------------------------------------------ repeatable at temperature 0


def test_temperature_zero_is_repeatable(bench: Bench) -> None:
    """The same prompt twice at temperature 0, with calls of another instance of the same model
    (same engine or server) in between: the same text."""
    model = bench.make(max_tokens=16)
    other = bench.make(max_tokens=16)
    prompt = "Tell me a short story about the colour blue."
    first = model.invoke(prompt).content
    other.invoke("Tell me a short story about a red fox and a river.")
    other.invoke(prompt + " Make it sad.")
    again = model.invoke(prompt).content
    assert first == again, f"{first!r} then {again!r}"
