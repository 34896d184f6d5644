"""ChatVLLM and VLLM on the real vLLM engine in this process (CPU build, SmolLM2, window 2048).

The whole module shares one engine (the session's, see ``vllm_engine_params`` in conftest);
the test that shuts it down underneath runs last.
"""

from __future__ import annotations

import asyncio
import random
import signal
import string
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_multillm import (
    VLLM,
    BackendUnavailableError,
    BadRequestError,
    ChatVLLM,
    ContextWindowExceededError,
    IncompleteResponseError,
    InvalidInputError,
)
from langchain_multillm._base import Prompt
from langchain_multillm.backends import vllm as vllm_backend
from tests.integration_tests.parity import assert_four_ways_agree, merge

pytestmark = [pytest.mark.vllm_engine, pytest.mark.timeout(600)]

Q = [SystemMessage("Answer in one short sentence."), HumanMessage("What is the capital of France?")]


@pytest.fixture(scope="module")
def params(vllm_engine_params: dict) -> dict:
    return vllm_engine_params


@pytest.fixture(scope="module")
def chat(params: dict) -> ChatVLLM:
    return ChatVLLM(**params, temperature=0, max_tokens=24, seed=1).load()


def _wait_idle(chat: ChatVLLM, timeout: float = 10.0) -> int:
    """vLLM's own count of unfinished requests, once it drops to 0 (or the timeout runs out)."""
    llm = chat.engine.llm
    deadline = time.monotonic() + timeout
    while llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    return llm.get_num_unfinished_requests()


def peak_in_flight(chat: Any, fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` while sampling vLLM's own count of unfinished requests; (result, peak)."""
    llm = chat.engine.llm
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, llm.get_num_unfinished_requests())
            time.sleep(0.001)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        result = fn()
    finally:
        stop.set()
        poller.join()
    return result, peak


def test_one_engine_for_two_instances(chat: ChatVLLM, params: dict) -> None:
    a = ChatVLLM(**params, temperature=0.5)  # sampling settings do not make another engine
    b = ChatVLLM(**params, max_tokens=5)
    assert a.engine is b.engine is chat.engine
    assert len(vllm_backend.engines()) == 1
    refs = chat.engine.refs
    a.release()
    b.release()
    assert chat.engine.refs == refs - 2 and not chat.engine.dead
    assert b.invoke("Hi").content  # a released instance joins the engine again
    b.release()
    llm = VLLM(**params, max_tokens=4)
    assert llm.engine is chat.engine  # chat and completion share it too
    llm.release()


def test_discovery_and_health(chat: ChatVLLM) -> None:
    h = chat.health()
    assert h.alive and h.ready and h.context_window == 2048, h
    assert h.latency_s < chat.health_timeout
    assert asyncio.run(chat.ais_alive())
    assert chat.get_limits().context_window == 2048
    assert chat.context_window == 2048
    assert chat.profile is not None and chat.profile["max_input_tokens"] == 2048


def test_invoke_stream_ainvoke_astream_agree(chat: ChatVLLM) -> None:
    inv = assert_four_ways_agree(chat, Q)
    assert inv.response_metadata["model_name"] == chat.model_name
    assert inv.response_metadata["finish_reason"] in ("stop", "length")


def test_exact_count_equals_engine_usage(chat: ChatVLLM) -> None:
    out = chat.invoke(Q)
    assert out.usage_metadata is not None
    assert chat.count_tokens(Q) == out.usage_metadata["input_tokens"]
    assert chat.get_num_tokens_from_messages(Q) == out.usage_metadata["input_tokens"]
    assert asyncio.run(chat.acount_tokens(Q)) == out.usage_metadata["input_tokens"]
    # The engine's own tokenizer, on the template the engine renders.
    tok = chat.engine.llm.get_tokenizer()
    text = tok.apply_chat_template(
        [{"role": m.type.replace("human", "user"), "content": m.content} for m in Q],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert len(tok.encode(text, add_special_tokens=False)) == chat.count_tokens(Q)


def test_bound_never_under_counts(chat: ChatVLLM) -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + " \n.,!?éüß中文😀<>|{}"
    for _ in range(25):
        msgs: list[Any] = [
            SystemMessage("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))),
            HumanMessage("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))),
            AIMessage("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))),
            HumanMessage("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))),
        ][: rng.randint(1, 4)]
        bound = chat._count_bound(Prompt(messages=msgs))
        exact = chat.count_tokens(msgs)
        assert bound is not None and bound >= exact, (msgs, bound, exact)


def test_overflow_raises_before_sending(chat: ChatVLLM) -> None:
    long = [HumanMessage("hello " * 2100)]
    with pytest.raises(ContextWindowExceededError) as info:
        chat.invoke(long)
    assert info.value.limit == 2048 and info.value.fit is not None and info.value.fit.exact
    assert not chat.is_valid_prompt(long)


def test_engine_refusal_maps_when_unchecked(chat: ChatVLLM) -> None:
    with pytest.raises(ContextWindowExceededError, match="maximum context length"):
        chat.invoke([HumanMessage("hello " * 2100)], context_overflow="ignore")


def test_clamp(chat: ChatVLLM) -> None:
    msgs = [HumanMessage("hello " * 2000)]
    n = chat.count_tokens(msgs)
    assert n < 2048
    with pytest.raises(ContextWindowExceededError):
        chat.invoke(msgs, max_tokens=100)
    clamped = chat.invoke(msgs, max_tokens=100, context_overflow="clamp")
    assert clamped.usage_metadata is not None
    assert clamped.usage_metadata["output_tokens"] <= 2048 - n


def test_sampling_keys_checked_before_the_engine(chat: ChatVLLM) -> None:
    before = chat.engine.llm.get_num_unfinished_requests()
    with pytest.raises(InvalidInputError, match="best_of") as info:
        chat.invoke("hi", best_of=2)  # removed from vLLM; LangChain's community VLLM sent it
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidInputError, match="use_beam_search"):
        chat.invoke("hi", use_beam_search=True)
    with pytest.raises(InvalidInputError, match="top_k"):
        chat.invoke("hi", top_k=-5)  # SamplingParams' own check, named
    with pytest.raises(InvalidInputError, match="temperature"):
        chat.invoke("hi", temperature=3)
    with pytest.raises(InvalidInputError, match=r"^n: is set by this package"):
        chat.invoke("hi", n=2)
    assert chat.engine.llm.get_num_unfinished_requests() == before
    # Every documented knob goes through to the engine.
    out = chat.invoke(
        "Say hi.",
        max_tokens=8,
        top_p=0.9,
        top_k=20,
        min_p=0.05,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        repetition_penalty=1.1,
        seed=3,
        stop=["\n"],
    )
    assert out.usage_metadata is not None and out.usage_metadata["output_tokens"] <= 8


def test_instance_sampling_settings_reach_sampling_params(
    params: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampling mixins' fields set on the instance reach ``vllm.SamplingParams`` as they
    are (sync and async); a call's value wins over the instance's; an unset field leaves the
    engine's own default (the model's generation config), never a null."""
    from vllm import SamplingParams

    settings = {
        "top_k": -1,  # vLLM's "all": the mixin's range is widened for this backend
        "min_p": 0.05,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "repetition_penalty": 1.1,
        "seed": 7,
    }
    llm = ChatVLLM(**params, max_tokens=4, **settings)
    plain = ChatVLLM(**params, max_tokens=4)
    eng = llm.engine
    seen: list[Any] = []
    original = eng.generate

    def generate(render: Any, sampling: Any) -> Any:
        seen.append(sampling)
        return original(render, sampling)

    monkeypatch.setattr(eng, "generate", generate)
    try:
        llm.invoke("Hi")
        expected = SamplingParams(**{**eng.default_sampling, **settings, "max_tokens": 4})
        got = {name: getattr(seen[-1], name) for name in settings}
        assert got == {name: getattr(expected, name) for name in settings}, got
        asyncio.run(llm.ainvoke("Hi", seed=8, top_k=5))
        assert (seen[-1].seed, seen[-1].top_k, seen[-1].min_p) == (8, 5, 0.05)
        plain.invoke("Hi")
        default = SamplingParams(**eng.default_sampling)
        for name in settings:
            assert getattr(seen[-1], name) == getattr(default, name), name
    finally:
        llm.release()
        plain.release()


def test_stop_and_seed_are_honoured(chat: ChatVLLM) -> None:
    out = chat.invoke("Count from 1 to 20 separated by commas.", max_tokens=40, stop=[","])
    assert "," not in out.content
    a = chat.invoke("Tell me a word.", temperature=1.0, seed=42, max_tokens=5)
    b = chat.invoke("Tell me a word.", temperature=1.0, seed=42, max_tokens=5)
    assert a.content == b.content


def test_batch_all_in_flight_together(chat: ChatVLLM) -> None:
    # LangChain's default batch runs a thread pool of min(32, cores + 4) = 6 workers here, one
    # engine call each; ours submits all 8 at once, so vLLM holds 8 unfinished requests.
    # A few tokens each: what is asserted is that all are in flight at once (a slow CPU makes
    # ~1 token/s a stream: PEERS.md).
    prompts = [f"Name a fruit number {i}." for i in range(8)]
    outs, peak = peak_in_flight(chat, lambda: chat.batch(prompts, max_tokens=4))
    assert len(outs) == 8 and all(isinstance(o, AIMessage) and o.content for o in outs)
    assert peak == 8
    aouts, peak = peak_in_flight(chat, lambda: asyncio.run(chat.abatch(prompts, max_tokens=4)))
    assert len(aouts) == 8 and all(o.content for o in aouts) and peak == 8
    result, peak = peak_in_flight(
        chat, lambda: chat.generate([[HumanMessage(p)] for p in prompts[:4]], max_tokens=4)
    )
    assert len(result.generations) == 4 and peak == 4


def test_interrupted_batch_aborts_its_requests(chat: ChatVLLM) -> None:
    # Ctrl-C in a notebook cell: a real SIGINT to this (the main) thread while batch waits.
    prompts = [f"Write a long story about a dragon number {i}." for i in range(8)]
    main = threading.get_ident()
    timer = threading.Timer(1.0, signal.pthread_kill, args=(main, signal.SIGINT))
    # Python's own SIGINT handler, as a terminal has it (a notebook kernel's raises
    # KeyboardInterrupt too), whatever an earlier test left installed. (Once, in a whole-tier
    # run, this test saw no KeyboardInterrupt at all; it has not been reproduced since.)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            chat.batch(prompts, max_tokens=1500, ignore_eos=True)  # minutes if not interrupted
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, handler)
    assert time.monotonic() - started < 10  # not waiting for the answers
    assert _wait_idle(chat) == 0  # every request was aborted in the engine


def test_batch_keeps_per_input_settings(chat: ChatVLLM) -> None:
    long = "hello " * 2000
    room = 2048 - chat.count_tokens([HumanMessage(long)])
    count = "Count from 1 to 100, separated by commas."
    # ignore_eos: the first answer's length is the budget's, not the tiny model's choice.
    budget = room + 4
    outs = chat.batch([count, long], max_tokens=budget, context_overflow="clamp", ignore_eos=True)
    assert outs[1].usage_metadata is not None
    assert outs[1].usage_metadata["output_tokens"] <= room < budget
    assert outs[0].usage_metadata is not None  # not clamped to the other input's room
    assert outs[0].usage_metadata["output_tokens"] > room
    errs = chat.batch(["Say hi.", "hello " * 2100], max_tokens=5, return_exceptions=True)
    assert isinstance(errs[1], ContextWindowExceededError) and isinstance(errs[0], AIMessage)


def test_closed_stream_aborts_its_request(chat: ChatVLLM) -> None:
    stream = chat.stream("Write a long story about a dragon.", max_tokens=1500)
    first = next(stream)
    assert first.content or first.response_metadata == {}
    assert chat.engine.llm.get_num_unfinished_requests() == 1
    t0 = time.perf_counter()
    stream.close()
    assert _wait_idle(chat, timeout=5) == 0
    assert time.perf_counter() - t0 < 5  # aborted, not run to 1500 tokens


def test_cancelled_astream_aborts_its_request(chat: ChatVLLM) -> None:
    async def go() -> int:
        agen = chat.astream("Write a long story about a dragon.", max_tokens=1500)
        await agen.__anext__()
        busy = chat.engine.llm.get_num_unfinished_requests()
        await agen.aclose()
        return busy

    async def cancel() -> None:
        async def consume() -> None:
            async for _ in chat.astream("Write a long story about a cat.", max_tokens=1500):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert asyncio.run(go()) == 1
    assert _wait_idle(chat, timeout=5) == 0
    asyncio.run(cancel())
    assert _wait_idle(chat, timeout=5) == 0


def test_structured_output_json_schema(chat: ChatVLLM) -> None:
    schema = {
        "title": "City",
        "type": "object",
        "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
        "required": ["name", "country"],
    }
    out = chat.with_structured_output(schema).invoke("Name a city in Italy.", max_tokens=60)
    assert isinstance(out, dict) and set(out) >= {"name", "country"}


def test_json_mode(chat: ChatVLLM) -> None:
    # The engine constrains the answer to JSON; whether SmolLM2 closes its object within 40
    # tokens is its own skill: a whole object is a dict, a cut one the typed error that names
    # max_tokens (never a half-parsed object).
    structured = chat.with_structured_output(method="json_mode", include_raw=True)
    out = structured.invoke("Give a JSON object with a key a.", max_tokens=40)
    if out["parsing_error"] is None:
        assert isinstance(out["parsed"], dict)
    else:
        assert isinstance(out["parsing_error"], IncompleteResponseError)
        assert "max_tokens" in str(out["parsing_error"])


def test_forced_tool_call(chat: ChatVLLM) -> None:
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    def get_time(zone: str) -> str:
        """Time in a zone."""
        return "noon"

    named = chat.bind_tools([get_weather, get_time], tool_choice="get_weather")
    out = named.invoke("What is the weather in Paris?", max_tokens=60)
    assert out.tool_calls and out.tool_calls[0]["name"] == "get_weather"
    assert "city" in out.tool_calls[0]["args"]
    assert out.response_metadata["finish_reason"] == "tool_calls"
    streamed = merge(list(named.stream("What is the weather in Paris?", max_tokens=60)))
    assert streamed.tool_calls and streamed.tool_calls[0]["name"] == "get_weather"
    anyone = chat.bind_tools([get_weather, get_time], tool_choice="required")
    # Compact JSON (disable_any_whitespace in the engine's settings): the named call's room.
    out = anyone.invoke("What time is it in UTC?", max_tokens=60)
    assert out.tool_calls and out.tool_calls[0]["name"] in ("get_weather", "get_time")
    # Tools count toward the prompt (exactly, as the template renders them).
    assert chat.count_tokens("hi", tools=[get_weather]) >= chat.count_tokens([HumanMessage("hi")])


def test_unforced_calls_read_by_a_vllm_tool_parser(chat: ChatVLLM, params: dict) -> None:
    # SmolLM2 writes no Hermes tool calls of its own (PEERS.md): a per-call regex makes it write
    # a sentence and one call, so what is tested is the reading, by vLLM's own hermes parser.
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    base = ChatVLLM(**params, temperature=0, max_tokens=80, tool_call_parser="hermes")
    assert base.engine is chat.engine  # the parser is not an engine setting
    llm = base.bind_tools([get_weather])  # tool_choice unset: "auto"
    call = r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}</tool_call>'
    forced = {"structured_outputs": {"regex": r"Let me check\. " + call}}
    out = llm.invoke("What is the weather in Paris?", **forced)
    assert [(c["name"], c["args"]) for c in out.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert out.content.strip() == "Let me check."
    assert out.response_metadata["finish_reason"] == "tool_calls"
    streamed = merge(list(llm.stream("What is the weather in Paris?", **forced)))
    assert [c["name"] for c in streamed.tool_calls] == ["get_weather"]
    assert streamed.response_metadata["finish_reason"] == "tool_calls"
    # An answer with no call stays text.
    plain = llm.invoke("Say hi.", structured_outputs={"choice": ["hi there"]})
    assert plain.content == "hi there" and not plain.tool_calls
    bad = ChatVLLM(**params, tool_call_parser="nope")
    with pytest.raises(InvalidInputError, match="tool_call_parser"):
        bad.bind_tools([get_weather]).invoke("x")
    bad.release()
    base.release()


def test_completion_model(params: dict) -> None:
    llm = VLLM(**params, temperature=0, max_tokens=12)
    text = llm.invoke("The capital of France is")
    assert text and text == "".join(llm.stream("The capital of France is"))
    tok = llm.engine.llm.get_tokenizer()
    assert llm.count_tokens("The capital of France is") == len(
        tok.encode("The capital of France is")
    )
    with pytest.raises(ContextWindowExceededError):
        llm.invoke("hello " * 2100)
    assert asyncio.run(llm.ainvoke("The capital of France is")) == text
    res = llm.generate(["The capital of France is", "One, two,"])
    info = res.generations[0][0].generation_info
    assert info is not None and info["usage"]["prompt_tokens"] == llm.count_tokens(
        "The capital of France is"
    )
    assert res.generations[0][0].text == text
    outs, peak = peak_in_flight(
        llm, lambda: llm.batch([f"Fact {i}:" for i in range(8)], max_tokens=4)
    )
    assert len(outs) == 8 and peak == 8
    with pytest.raises(InvalidInputError, match="best_of"):
        llm.invoke("hi", best_of=3)
    llm.release()


TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_template_renders_tools_and_counts_them(chat: ChatVLLM, params: dict) -> None:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    custom = ChatVLLM(**params, chat_template=TOOLS_TEMPLATE, temperature=0, max_tokens=8)
    assert custom.engine is chat.engine  # a template is per request, not an engine setting
    hi = [HumanMessage("hi")]
    plain = custom.count_tokens(hi)
    with_tools = custom.count_tokens(hi, tools=[get_weather])
    tok = custom.engine.llm.get_tokenizer()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        tools=[convert_to_openai_tool(get_weather)],
        chat_template=TOOLS_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "get_weather" in text
    assert with_tools == len(tok.encode(text, add_special_tokens=False)) > plain
    out = custom.bind_tools([get_weather]).invoke(hi)
    assert out.usage_metadata is not None and out.usage_metadata["input_tokens"] == with_tools
    # SmolLM2's own template renders no tools: the count is the same with or without them.
    assert chat.count_tokens(hi, tools=[get_weather]) == chat.count_tokens(hi) != plain
    custom.release()


def test_stream_usage_off(params: dict) -> None:
    quiet = ChatVLLM(**params, temperature=0, max_tokens=5, stream_usage=False)
    merged = merge(list(quiet.stream("hi")))
    assert merged.usage_metadata is None and merged.response_metadata["finish_reason"]
    assert quiet.invoke("hi").usage_metadata is not None
    quiet.release()


def test_structured_outputs_passthrough(params: dict) -> None:
    llm = VLLM(**params, max_tokens=5)
    out = llm.invoke("Is the sky blue? Answer:", structured_outputs={"choice": ["yes", "no"]})
    assert out in ("yes", "no")
    with pytest.raises(InvalidInputError, match="structured_outputs"):
        llm.invoke("x", structured_outputs={"nope": 1})
    llm.release()


def test_load_chat_model(chat: ChatVLLM, params: dict) -> None:
    from langchain_multillm import load_chat_model

    rest = {k: v for k, v in params.items() if k != "model"}
    model = load_chat_model("vllm:" + params["model"], **rest)
    assert isinstance(model, ChatVLLM) and model.engine is chat.engine
    model.release()


def test_vllm_errors_all_mapped() -> None:
    """Every exception class of vLLM's public error modules has a place in the tree."""
    import importlib
    import inspect

    from langchain_multillm.errors import from_vllm_error, vllm_errors

    table = vllm_errors()
    missing = []
    for module_name in ("vllm.exceptions", "vllm.v1.engine.exceptions"):
        module = importlib.import_module(module_name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            mine = issubclass(obj, BaseException) and obj.__module__ == module_name
            if mine and obj not in table:
                missing.append(f"{module_name}.{name}")
    assert not missing, missing
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    assert isinstance(from_vllm_error(EngineDeadError()), BackendUnavailableError)
    err = from_vllm_error(EngineGenerateError())
    assert type(err).__name__ == "BackendError"


def test_engine_settings_checked(params: dict) -> None:
    with pytest.raises(ValueError, match="max_model_len"):  # pydantic wraps it, still a ValueError
        ChatVLLM(**{**params, "engine_kwargs": {"max_model_len": 5}})
    with pytest.raises(InvalidInputError, match="not_an_engine_arg"):
        ChatVLLM(**{**params, "engine_kwargs": {"not_an_engine_arg": 1}}).invoke("hi")
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        ChatVLLM(**params, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="min_p"):
        ChatVLLM(**params, min_p=2)


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_bad_call_input_is_refused_before_an_engine_starts(params: dict) -> None:
    # Another max_model_len is another engine: none may start for a call that cannot be made.
    other = ChatVLLM(**{**params, "max_model_len": 1024})
    running = len(vllm_backend.engines())
    for kwargs, field in [
        ({"best_of": 2}, "best_of"),
        ({"model": "another-model"}, "model"),
        ({"tools": [TOOL], "tool_choice": 3}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"structured_outputs": {"nope": 1}}, "structured_outputs"),
    ]:
        with pytest.raises(InvalidInputError) as info:
            other.invoke("hi", **kwargs)
        assert info.value.field.startswith(field)
    with pytest.raises(InvalidInputError, match="best_of"):
        VLLM(**{**params, "max_model_len": 1024}).invoke("hi", best_of=2)
    with pytest.raises(InvalidInputError, match="tool_call_parser"):
        ChatVLLM(**{**params, "max_model_len": 1024}, tool_call_parser="nope").bind_tools(
            [TOOL]
        ).invoke("hi")
    assert len(vllm_backend.engines()) == running and other._started_engine() is None


def test_an_engine_that_fails_to_start_is_not_retried(params: dict) -> None:
    starts = []
    real = vllm_backend.EngineHandle.start

    def counted(self: Any) -> None:
        starts.append(1)
        real(self)

    bad = ChatVLLM(**{**params, "max_model_len": 10**7}, max_retries=3)  # over the model's own
    vllm_backend.EngineHandle.start = counted  # type: ignore[method-assign]
    try:
        with pytest.raises(BadRequestError) as info:
            bad.invoke("hi")
    finally:
        vllm_backend.EngineHandle.start = real  # type: ignore[method-assign]
    assert starts == [1] and info.value.is_retryable is False


async def test_concurrent_first_calls_take_one_hold_on_the_engine(
    chat: ChatVLLM, params: dict
) -> None:
    fresh = ChatVLLM(**params)
    before = chat.engine.refs
    await asyncio.gather(*(fresh.aget_limits() for _ in range(8)))
    assert fresh.engine is chat.engine and chat.engine.refs == before + 1
    fresh.release()
    assert chat.engine.refs == before


def test_dead_engine_is_not_alive_and_refuses_calls(chat: ChatVLLM, params: dict) -> None:
    """Runs last: shuts the shared engine down underneath the models (vLLM's own shutdown)."""
    eng = chat.engine
    llm = VLLM(**params, max_retries=0).load()
    assert llm.engine is eng
    eng.llm.shutdown()  # underneath: our registry does not know
    assert eng.dead
    assert not chat.is_alive()
    assert "dead" in chat.health().detail or "shut" in chat.health().detail
    assert not asyncio.run(chat.ais_alive())
    quick = chat.model_copy(update={"max_retries": 0})  # shares the lease: the dead engine
    assert quick.engine is eng
    with pytest.raises(BackendUnavailableError):
        quick.invoke("hi")
    with pytest.raises(BackendUnavailableError):
        list(quick.stream("hi", context_overflow="ignore"))
    with pytest.raises(BackendUnavailableError):
        asyncio.run(quick.ainvoke("hi", context_overflow="ignore"))
    with pytest.raises(BackendUnavailableError):
        llm.invoke("hi", context_overflow="ignore")
    assert not llm.is_alive()
    eng.shutdown()
    vllm_backend._drop(eng)
    assert vllm_backend.engines() == []
