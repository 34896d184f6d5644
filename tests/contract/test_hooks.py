"""The hooks of docs/backends/writing.md, each held to what the table promises, over every row
of ``rows.py`` (each on its real engine or protocol fixture).

``hooks.py`` maps every hook of the table to the tests that exercise it, and
``tests/unit_tests/test_contract_coverage.py`` fails when the table names a hook that no test
here or in ``test_contract.py`` covers. A hook a backend cannot have is said in the row's data
(``not_applicable``, ``offline_refusal``, ``build_completion``, ...), and where the row says so
the test also checks that the backend indeed lacks it: the row cannot hide a hook it fills.
The peer's own count (``usage.input_tokens`` of a generation) is the truth the counting hooks
are held to; no test looks at the model's words, only at whether two answers are the same.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage

from langchain_multillm import (
    ContextWindowExceededError,
    IncompleteResponseError,
    InvalidInputError,
    MultiLLMError,
)
from langchain_multillm._base import COMMON_CALL_PARAMS, MultiLLMChatModel
from langchain_multillm._engines import EngineHolder, EngineRegistry
from langchain_multillm._openai import OpenAIChatOverHTTP
from tests.contract.bench import Bench, acollect, filler, merge
from tests.contract.proxy import Hit
from tests.contract.rows import error_body

pytestmark = [pytest.mark.timeout(600)]

Q = "Name a colour."
P = "The colours of the rainbow are red, orange,"  # a completion prompt

# Texts whose counts the hooks must bound: ASCII words, prose, non-Latin scripts and emoji
# (several bytes a character), and runs a tokenizer merges into its longest tokens.
SAMPLES = {
    "filler": filler(40),
    "prose": "Paris is the capital of France; the Seine flows through it, west to the sea.",
    "unicode": "東京は日本の首都です。Ünïcödé, ça va? Привет, мир! 🙂🚀🌈",
    "dense": "=" * 300,
    "spaces": "a" + " " * 300 + "b",
}


def drain(model: Any, prompt: Any, way: str) -> list[Any]:
    """Every chunk of a stream (``way``: stream or astream)."""
    if way == "stream":
        return list(model.stream(prompt))
    return asyncio.run(acollect(model.astream(prompt)))


def applies(bench: Bench, promise: str, *, holds: bool | None = None) -> None:
    """Skip, with the row's reason, where the row says ``promise`` does not apply; ``holds``
    (whether the backend has the hook) must agree with the row either way."""
    why = bench.row.why_not(promise)
    if why:
        assert holds is not True, (
            f"{bench.row.id}: the row says {promise} does not apply ({why}), but the backend "
            "has the hook: give the row its data instead"
        )
        pytest.skip(f"{bench.row.id}: {promise} does not apply: {why}")
    assert holds is not False, f"{bench.row.id}: the backend has no {promise}; the row must say why"


def peer_count(model: Any, messages: Any, max_tokens: int = 1) -> int:
    """The prompt tokens as the peer counts them (usage of a short generation)."""
    usage = model.invoke(messages, max_tokens=max_tokens).usage_metadata
    assert usage is not None, "no usage: the counting hooks cannot be held to the peer"
    return int(usage["input_tokens"])


def refused(run: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        run()
    return info.value


def entry_points(chat_model: Any, prompt: Any, /, **kw: Any) -> dict[str, Any]:
    """Every way to call a chat model, each a thunk (positional-only: a call key may be named
    ``model`` or ``prompt``)."""
    m = chat_model
    return {
        "invoke": lambda: m.invoke(prompt, **kw),
        "ainvoke": lambda: asyncio.run(m.ainvoke(prompt, **kw)),
        "stream": lambda: list(m.stream(prompt, **kw)),
        "astream": lambda: asyncio.run(acollect(m.astream(prompt, **kw))),
        "batch": lambda: m.batch([prompt], **kw),
        "abatch": lambda: asyncio.run(m.abatch([prompt], **kw)),
    }


# ------------------------------------------------------------------ counting hooks


def test_count_hooks_hold_to_the_peers_count(bench: Bench) -> None:
    """``_count_exact`` / ``_acount_exact`` are the peer's count (None where the row has no
    exact count), ``_count_bound`` is at least it and ``_count_lower`` (with
    ``_max_token_bytes``) at most it, for ASCII, prose, non-Latin text, emoji and runs a
    tokenizer merges; ``count_tokens`` is exact or the bound. One of exact or bound exists."""
    model = bench.make()
    model.get_limits()
    mtb = model._max_token_bytes()
    assert mtb is None or (isinstance(mtb, int) and mtb >= 1), mtb
    for name, text in SAMPLES.items():
        messages = [HumanMessage(text)]
        truth = peer_count(model, messages)
        prompt = model._as_prompt(messages, None, for_fit=True)
        exact = model.count_tokens_exact(messages)
        aexact = asyncio.run(model.acount_tokens_exact(messages))
        assert exact == aexact, f"{name}: _count_exact {exact} != _acount_exact {aexact}"
        if bench.row.exact_count:
            assert exact == truth, f"{name}: exact count {exact}, the peer counts {truth}"
        else:
            assert exact is None, f"{name}: the row has no exact count, the hook gave {exact}"
        bound = model._count_bound(prompt)
        assert bound is not None or exact is not None, f"{name}: neither exact nor bound"
        if bound is not None:
            assert bound >= truth, f"{name}: upper bound {bound} < the peer's {truth}"
        counted = model.count_tokens(messages)
        assert counted == (exact if exact is not None else bound), name
        lower = model._count_lower(prompt)
        assert lower <= truth, f"{name}: lower bound {lower} > the peer's {truth} (mtb {mtb})"


def test_hooks_without_io_send_nothing(bench: Bench) -> None:
    """``_static_limits``, ``_count_bound``, ``_count_lower`` and ``_max_token_bytes`` reach
    no peer (on a model that has not talked to its backend yet)."""
    model = bench.make()
    bench.instrument.reset()
    prompt = model._as_prompt([HumanMessage(SAMPLES["prose"])], None, for_fit=True)
    model._static_limits()
    model._count_bound(prompt)
    model._max_token_bytes()
    model._count_lower(prompt)
    assert bench.instrument.requests() == 0


def test_limit_hooks_agree(bench: Bench) -> None:
    """``_static_limits`` exists exactly where the row says the limits need no I/O, and every
    limit it gives is what ``_fetch_limits`` gives; ``_afetch_limits`` gives the same."""
    model = bench.make()
    bench.instrument.reset()
    static = model._static_limits()
    assert bench.instrument.requests() == 0, "_static_limits did I/O"
    known = static is not None and static.known
    assert known == (bench.row.why_not("limits_without_io") is None), (
        f"{bench.row.id}: _static_limits {static} vs the row's limits_without_io"
    )
    fetched = model._fetch_limits()
    afetched = asyncio.run(model._afetch_limits())
    assert fetched == afetched, f"_fetch_limits {fetched} != _afetch_limits {afetched}"
    if static is not None:
        for name in ("context_window", "max_input_tokens", "max_output_tokens"):
            a, b = getattr(static, name), getattr(fetched, name)
            assert a is None or b is None or a == b, f"{name}: static {a}, fetched {b}"


def test_measure_template_hooks_agree(bench: Bench) -> None:
    """``_measure_template`` / ``_ameasure_template`` (run after the limits probe): a model
    whose limits came on the sync path and one whose limits came on the async path bound
    every prompt alike (a server backend measures its chat template on both, or on neither)."""
    on_sync = bench.make()
    on_sync.get_limits()
    on_async = bench.make()
    asyncio.run(on_async.aget_limits())
    for name, text in SAMPLES.items():
        prompt = on_sync._as_prompt([HumanMessage(text)], None, for_fit=True)
        sync_bound, async_bound = on_sync._count_bound(prompt), on_async._count_bound(prompt)
        assert sync_bound == async_bound, f"{name}: sync path {sync_bound}, async {async_bound}"


# ------------------------------------------------------------------ health hooks


def test_health_hooks_agree_and_name_the_model(bench: Bench) -> None:
    """``_health`` / ``_ahealth`` agree (state and detail) and never bill;
    ``_deep_health`` / ``_adeep_health`` bill one generation each where the row says only a
    generation proves readiness, and are the free check (nothing billed) everywhere else.
    Down (nothing there): all four are down, never raise, and name the model."""
    model = bench.make(health_timeout=60)
    model.get_limits()
    bench.instrument.reset()
    free = [model.health(), asyncio.run(model.ahealth())]
    assert bench.instrument.generations() == 0, "a free health check generated"
    deep = [model.health(deep=True), asyncio.run(model.ahealth(deep=True))]
    billed = bench.instrument.generations()
    states = [(r.alive, r.ready) for r in free + deep]
    assert states[0] == states[1], f"_health {free[0]} / _ahealth {free[1]}"
    assert free[0].detail == free[1].detail, f"_health {free[0]} / _ahealth {free[1]}"
    assert states[2] == states[3], f"_deep_health {deep[0]} / _adeep_health {deep[1]}"
    if bench.row.ready_by_generation:
        assert billed == 2, f"deep health billed {billed} generations for two checks"
        assert all(r.ready for r in deep), [str(r) for r in deep]
    else:
        assert billed == 0, f"deep health billed {billed} generations where it need not"
        assert states[2] == states[0], f"deep {deep[0]} != free {free[0]}"

    gone = bench.row.build_down(bench.peer)
    bench.models.append(gone)
    reports = [
        gone.health(),
        asyncio.run(gone.ahealth()),
        gone.health(deep=True),
        asyncio.run(gone.ahealth(deep=True)),
    ]
    for report in reports:
        assert not report.alive and not report.ready, str(report)


def test_health_reports_name_the_model_label(bench: Bench) -> None:
    """``_model_label()`` is the model every health report names: up or down, free or deep,
    sync or async."""
    model = bench.make(health_timeout=60)
    model.get_limits()
    label = model._model_label()
    assert label, "no label"
    up = [model.health(), asyncio.run(model.ahealth())]
    if not bench.row.ready_by_generation:  # deep: billed where the row says so
        up += [model.health(deep=True), asyncio.run(model.ahealth(deep=True))]
    gone = bench.row.build_down(bench.peer)
    bench.models.append(gone)
    for report in up:
        assert report.model == label, f"report names {report.model!r}, _model_label {label!r}"
    gone_label = gone._model_label()
    for report in (gone.health(), asyncio.run(gone.ahealth())):
        assert report.model == gone_label, f"down: {report.model!r}, _model_label {gone_label!r}"


# ------------------------------------------------------------------ the keys of a call


def test_call_param_hooks_refuse_by_name_before_sending(bench: Bench) -> None:
    """``_allowed_call_params`` holds the common keys and the class's ``_call_params``, and
    every key it names passes the check; any other key (a misspelling of each allowed one) is
    refused by name, a ``_call_param_hints`` key with its own reason, on every entry point
    (invoke, ainvoke, stream, astream, batch, abatch), before anything reaches the peer."""
    model = bench.make()
    bench.instrument.reset()
    allowed = model._allowed_call_params()
    assert allowed >= COMMON_CALL_PARAMS, COMMON_CALL_PARAMS - allowed
    assert type(model)._call_params <= allowed, type(model)._call_params - allowed
    model._check_call_params(dict.fromkeys(allowed))
    for key in sorted(k for k in allowed if not k.startswith("ls_")):  # ls_*: LangChain's
        typo = f"{key}_typo"
        err = refused(lambda typo=typo: model._check_call_params({typo: 1}))
        assert typo in str(err), str(err)
    for key, hint in type(model)._call_param_hints.items():
        if key not in allowed:
            err = refused(lambda key=key: model._check_call_params({key: 1}))
            assert key in str(err) and hint in str(err), str(err)
    for name, run in entry_points(model, Q, temprature=0.2).items():
        err = refused(run)
        assert "temprature" in str(err), f"{name}: {err}"
        assert "'temperature'" in str(err), f"{name}: no 'did you mean': {err}"
    assert bench.instrument.requests() == 0


def _values(node: Any, names: set[str]) -> list[Any]:
    """The values of the keys ``names`` in a JSON body, at any depth."""
    if isinstance(node, dict):
        here = [v for k, v in node.items() if k in names]
        return here + [x for v in node.values() for x in _values(v, names)]
    if isinstance(node, list):
        return [x for v in node for x in _values(v, names)]
    return []


def _keys(node: Any) -> set[str]:
    """Every key of a JSON body, at any depth."""
    if isinstance(node, dict):
        return set(node).union(*(_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(v) for v in node))
    return set()


def test_local_keys_are_never_sent(bench: Bench) -> None:
    """The keys a call carries for the package (``context_overflow``, LangChain's ``ls_*``)
    and the backend's ``_local_call_params`` are left out of what is sent (``_wire_params``),
    and no request body carries them, on invoke, stream and ainvoke."""
    model = bench.make()
    local = set(getattr(type(model), "_local_call_params", frozenset()))
    wire = getattr(model, "_wire_params", None)
    if wire is not None:
        keep = {"temperature": 0.5}
        sent = wire({**dict.fromkeys(local | {"context_overflow", "ls_contract"}, "x"), **keep})
        assert sent == keep, f"_wire_params kept {set(sent) - set(keep)}"
    applies(bench, "http", holds=bench.row.http)
    assert bench.proxy is not None
    bench.instrument.reset()
    model.invoke(Q, context_overflow="raise")
    list(model.stream(Q, context_overflow="raise"))
    asyncio.run(model.ainvoke(Q, context_overflow="raise"))
    bodies = [json.loads(h.body) for h in bench.proxy.log(lambda h: h.generation)]
    assert len(bodies) == 3
    for body in bodies:
        keys = _keys(body)
        assert "context_overflow" not in keys, body
        assert not [k for k in keys if k.startswith("ls_")], body


# ------------------------------------------------------------------ secrets, headers, key


def _echo_all(hit: Hit) -> bytes:
    """A 500 whose body repeats every header and the query of the request."""
    return error_body(500, f"failed: {json.dumps(hit.headers)} ?{hit.query}", "INTERNAL")


def test_secrets_hook_masks_every_error(bench: Bench) -> None:
    """``_secrets()`` lists the row's key; a server error that echoes the whole request (on
    invoke, stream and astream) shows it in none of the error's text, repr or body."""
    applies(bench, "secrets")
    key = bench.row.secret
    assert key and bench.proxy is not None
    model = bench.make(api_key=key, max_retries=0)
    assert key in model._secrets(), "the key is not among _secrets()"
    model.get_limits()
    bench.proxy.respond(500, times=None, body=_echo_all)
    ways = {
        "invoke": lambda: model.invoke(Q),
        "stream": lambda: list(model.stream(Q)),
        "astream": lambda: asyncio.run(acollect(model.astream(Q))),
    }
    for name, run in ways.items():
        with pytest.raises(MultiLLMError) as info:
            run()
        err = info.value
        text = f"{err}\n{err!r}\n{err.body!r}"
        assert key not in text, f"{name}: the key is shown: {text}"


def test_headers_and_key_go_with_every_request(bench: Bench) -> None:
    """``_headers`` (``default_headers``) and the ``api_key`` field go with every request the
    model makes: limits, counts, health, invoke, stream, ainvoke, astream."""
    applies(bench, "http", holds=bench.row.http)
    assert bench.proxy is not None
    key = bench.row.secret
    extra: dict[str, Any] = {"api_key": key} if key else {}
    model = bench.make(default_headers={"x-contract-hook": "h-7"}, **extra)
    bench.instrument.reset()
    model.get_limits()
    model.count_tokens([HumanMessage(Q)])
    model.health()
    asyncio.run(model.ahealth())
    model.invoke(Q)
    list(model.stream(Q))
    asyncio.run(model.ainvoke(Q))
    asyncio.run(acollect(model.astream(Q)))
    hits = bench.proxy.log()
    assert sum(h.generation for h in hits) == 4, [h.path for h in hits]
    for hit in hits:
        assert hit.headers.get("x-contract-hook") == "h-7", f"{hit.method} {hit.path}"
        if key:
            carried = [*hit.headers.values(), hit.query]
            assert any(key in value for value in carried), f"no key on {hit.method} {hit.path}"


def test_auth_flow_hook_sends_the_token(bench: Bench) -> None:
    """``_auth_flow`` (OAuth2 client credentials): a token fetched from the token URL goes as
    the bearer of every request, sync and async; the client secret goes to the token URL only."""
    flow = getattr(type(bench.make()), "_auth_flow", None)
    from langchain_multillm._http import HTTPConnection

    applies(bench, "oauth2", holds=flow is not None and flow is not HTTPConnection._auth_flow)
    assert bench.proxy is not None
    token, secret = "contract-oauth-token-19", "contract-client-secret-7f"
    token_path = "/contract/oauth/token"
    bench.proxy.respond(
        200, times=None, match=lambda h: h.path == token_path,
        body=json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 3600})
        .encode(),
    )  # fmt: skip
    model = bench.make(
        oauth_client_id="contract-client",
        oauth_client_secret=secret,
        oauth_token_url=f"{bench.proxy.url}{token_path}",
    )
    assert model._auth_flow() is not None
    model.invoke(Q)
    asyncio.run(model.ainvoke(Q))
    hits = bench.proxy.log()
    assert any(h.path == token_path for h in hits), "no token was fetched"
    for hit in hits:
        if hit.path == token_path:
            continue
        assert hit.headers.get("authorization") == f"Bearer {token}", f"{hit.method} {hit.path}"
        assert secret not in json.dumps(hit.headers) + hit.body.decode(errors="replace")


# ------------------------------------------------------------------ the chat hooks


class _Invocation(BaseCallbackHandler):
    """The invocation params a tracer is given."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.params = dict(kwargs.get("invocation_params") or {})


def test_chat_hooks_agree(bench: Bench) -> None:
    """``_chat`` / ``_achat`` / ``_chat_stream`` / ``_achat_stream`` give the same answer at
    temperature 0, each with ``finish_reason``, ``model_name`` and the same usage; the
    ``_llm_type`` is a name, and the one a tracer is given."""
    model = bench.make(max_tokens=12)
    seen = _Invocation()
    answers = {
        "invoke": model.invoke(Q, config={"callbacks": [seen]}),
        "ainvoke": asyncio.run(model.ainvoke(Q)),
        "stream": merge(list(model.stream(Q))),
        "astream": merge(asyncio.run(acollect(model.astream(Q)))),
    }
    first = answers["invoke"]
    assert first.usage_metadata is not None
    for name, message in answers.items():
        meta = message.response_metadata
        assert meta.get("finish_reason"), f"{name}: no finish_reason in {meta}"
        assert meta.get("model_name"), f"{name}: no model_name in {meta}"
        usage = message.usage_metadata
        assert usage is not None, f"{name}: no usage"
        assert usage["input_tokens"] == first.usage_metadata["input_tokens"], name
        assert message.content == first.content, f"{name}: {message.content!r} != {first.content!r}"
    llm_type = model._llm_type
    assert isinstance(llm_type, str) and llm_type, llm_type
    assert seen.params.get("_type") == llm_type, seen.params


def test_a_stream_that_ends_early_raises_incomplete(bench: Bench) -> None:
    """A stream whose body ends cleanly before the finish (no error, no finish event) raises
    ``IncompleteResponseError`` after the chunks it had, chat and completion, sync and async:
    never a cut answer that looks whole."""
    applies(bench, "clean_cut")
    assert "eof" in bench.instrument.cut_modes()
    models = {"chat": bench.make()}
    if bench.row.build_completion is not None:
        models["completion"] = bench.row.build_completion(bench.target)
        bench.models.append(models["completion"])
    for kind, model in models.items():
        model.get_limits()
        for way in ("stream", "astream"):
            bench.instrument.reset()
            bench.instrument.cut_next("eof")
            with pytest.raises(IncompleteResponseError):
                drain(model, P if kind == "completion" else Q, way)
            assert bench.instrument.generations() == 1, f"{kind}/{way}: retried a cut stream"


def test_check_offline_refuses_before_anything_is_asked(bench: Bench) -> None:
    """``_check_offline`` refuses what the backend can never serve (the row's
    ``offline_refusal``) with InvalidInputError naming the field, on every entry point, before
    the fit check asks anything: nothing reaches the peer, not even for the limits."""
    own = type(bench.make())._check_offline is not MultiLLMChatModel._check_offline
    applies(bench, "check_offline", holds=own)
    ref = bench.row.offline_refusal
    assert ref is not None, f"{bench.row.id}: give offline_refusal or say why not"
    model = bench.make(**ref.build)
    bench.instrument.reset()
    for name, run in entry_points(model, ref.prompt, **ref.call).items():
        err = refused(run)
        assert ref.names in str(err), f"{name}: {err}"
    assert bench.instrument.requests() == 0


def test_before_send_refuses_before_the_generation(bench: Bench) -> None:
    """``_before_send`` / ``_abefore_send`` refuse the row's ``before_send_refusal`` the same
    way (InvalidInputError naming the field) on every entry point, and no generation is sent."""
    own = getattr(type(bench.make()), "_before_send", None)
    applies(
        bench, "before_send", holds=own is not None and own is not OpenAIChatOverHTTP._before_send
    )
    ref = bench.row.before_send_refusal
    assert ref is not None, f"{bench.row.id}: give before_send_refusal or say why not"
    model = bench.make(**ref.build)
    bench.instrument.reset()
    for name, run in entry_points(model, ref.prompt, **ref.call).items():
        err = refused(run)
        assert ref.names in str(err), f"{name}: {err}"
    assert bench.instrument.generations() == 0


def test_default_params_are_sent_and_none_left_out(bench: Bench) -> None:
    """``_default_params`` holds the instance's sampling settings (None left out) and they
    reach the backend with every call; a call's own value wins; an unset one is not sent as
    null. (Temperature 0.5, not 0: an engine may drop top_p when sampling greedily.)"""
    model = bench.make(temperature=0.5, top_p=0.5)
    params = model._default_params()
    assert (params.get("temperature"), params.get("top_p"), params.get("max_tokens")) == (
        0.5, 0.5, 8,
    ), params  # fmt: skip
    assert None not in params.values(), params
    bench.instrument.reset()
    model.invoke(Q)
    sent = bench.instrument.sampling_sent()
    assert (sent.get("temperature"), sent.get("top_p")) == (0.5, 0.5), sent
    asyncio.run(model.ainvoke(Q, top_p=0.25))
    assert bench.instrument.sampling_sent().get("top_p") == 0.25
    unset = bench.make()
    assert "top_p" not in unset._default_params()
    list(unset.stream(Q))
    assert bench.instrument.sampling_sent().get("top_p", "not sent") is not None


# A value each sampling mixin's field takes on every backend that declares it.
MIXINS = ("Seed", "Penalties", "RepetitionPenalty", "TopK", "MinP", "TypicalP", "ExtraBody")
SAMPLING_VALUES: dict[str, Any] = {
    "seed": 3,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "repetition_penalty": 1.1,
    "top_k": 5,
    "min_p": 0.1,
    "typical_p": 0.9,
}


def test_sampling_fields_are_call_keys_and_defaults(bench: Bench) -> None:
    """Every sampling field the model declares (its mixins' and its ``_param_fields``) may be
    set per call (``_allowed_call_params``) and, set on the instance, is in
    ``_default_params`` (an ``extra_body``: its entries; one that is not a dict is refused
    with nothing sent) and in the body sent (under its name, or camelCase); nothing in
    ``_default_params`` is a key a call may not carry."""
    from langchain_multillm import _base

    model = bench.make()
    mixins = [m for n in MIXINS if isinstance(m := getattr(_base, n, None), type)]
    fields = {f for m in mixins if isinstance(model, m) for f in m.model_fields}
    fields |= set(getattr(type(model), "_param_fields", ()))
    allowed = model._allowed_call_params()
    assert not fields - allowed, f"fields a call may not set: {sorted(fields - allowed)}"
    for name in sorted(fields & set(SAMPLING_VALUES)):
        value = SAMPLING_VALUES[name]
        assert bench.make(**{name: value})._default_params().get(name) == value, name
    if "extra_body" in fields:
        params = bench.make(extra_body={"contract_extra": 1})._default_params()
        assert params.get("contract_extra") == 1, params
        bench.instrument.reset()
        err = refused(lambda: model.invoke(Q, extra_body="not-a-dict"))
        assert "extra_body" in str(err), str(err)
        assert bench.instrument.requests() == 0
    settings = {n: SAMPLING_VALUES[n] for n in fields & set(SAMPLING_VALUES)}
    full = bench.make(**settings)
    assert set(full._default_params()) <= allowed, set(full._default_params()) - allowed
    if not (settings and bench.row.http):
        return  # in-process: no body to look into (the engine's own names)
    assert bench.proxy is not None
    bench.instrument.reset()
    full.invoke(Q)
    (hit,) = bench.proxy.log(lambda h: h.generation)
    body = json.loads(hit.body)
    for name, value in settings.items():
        camel = name.split("_")[0] + "".join(w.title() for w in name.split("_")[1:])
        assert _values(body, {name, camel}) == [value], f"{name}: sent as {body}"


def test_format_tools_counts_tools_as_the_peer(bench: Bench) -> None:
    """``_format_tools``: the tools are counted by the fit check as the peer counts them once
    bound (exact where the row counts exactly, else a bound at least it). (A chat template may
    leave tools out of the prompt, SmolLM2's does: then they add nothing, on both sides.)"""
    applies(bench, "tools")
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    model = bench.make()
    formatted = model._format_tools([tool])
    assert isinstance(formatted, list) and len(formatted) == 1
    messages = [HumanMessage("Say hello.")]
    # Room for a whole tool call: a server that forces the call's JSON (TGI) refuses a cut one.
    truth = peer_count(model.bind_tools([tool]), messages, max_tokens=64)
    without = peer_count(model, messages)
    counted = model.count_tokens(messages, tools=[tool])
    exact = model.count_tokens_exact(messages, tools=[tool])
    if bench.row.exact_count and bench.row.why_not("exact_tools") is None:
        assert exact == counted == truth, f"counted {exact} with the tool, the peer {truth}"
    else:
        assert exact is None, f"{bench.row.id} counts no tools exactly, the hook gave {exact}"
        assert counted >= truth, f"bound {counted} with the tool < the peer's {truth}"
        assert truth > without, f"the peer counts no tools ({truth} with, {without} without)"
    report = model.check_fit(messages, tools=[tool])
    assert report.prompt_tokens >= truth, f"{report} (the peer: {truth})"
    if report.exact:
        assert report.prompt_tokens == truth, f"{report} (the peer: {truth})"


def test_engine_holder_hooks(bench: Bench) -> None:
    """``EngineHolder``'s hooks (``_engine_registry``, ``_engine_key``, ``_start_engine``): two
    instances of one setting share one engine of the registry, each holding one lease; a fresh
    instance holds none; ``load`` / ``aload`` take the hold, ``release`` (idempotent) gives it
    back, and the next call takes it again."""
    applies(bench, "engine_holder", holds=isinstance(bench.make(), EngineHolder))  # it holds
    # Not instrumented (the instrument takes the engine to wrap it): they hold nothing yet.
    first, second = bench.row.build(bench.target), bench.row.build(bench.target)
    registry = type(first)._engine_registry
    assert isinstance(registry, EngineRegistry)
    assert first._engine_key() == second._engine_key()
    assert first._held_engine() is None and second._held_engine() is None
    assert first.load() is first
    engine = first._held_engine()
    assert engine is not None and not engine.dead
    assert registry.get(first._engine_key()) is engine
    held = registry.holders(engine)
    assert asyncio.run(second.aload()) is second
    assert second._held_engine() is engine, "one engine per key"
    assert registry.holders(engine) == held + 1
    second.release()
    second.release()
    assert second._held_engine() is None and registry.holders(engine) == held
    second.invoke("Say one.")
    assert second._held_engine() is engine and registry.holders(engine) == held + 1
    first.release()
    second.release()
    assert registry.holders(engine) == held - 1 and not engine.dead, "the instrumented one holds"


def test_batch_hook(bench: Bench) -> None:
    """``_batches_in_engine`` is what the row says; a sync batch gives what one call each
    gives, and where the engine batches, all its inputs are in flight at once."""
    model = bench.make()
    assert type(model)._batches_in_engine is bench.row.batches_in_engine
    prompts = ["Say one.", "Say two.", "Say three."]
    bench.instrument.reset()
    together = model.batch(prompts)
    if bench.row.batches_in_engine:
        assert bench.instrument.most_in_flight() == len(prompts)
    alone = [model.invoke(p) for p in prompts]
    assert [m.content for m in together] == [m.content for m in alone]


def test_errors_name_the_backend(bench: Bench) -> None:
    """``_backend`` names the backend in errors (a failure at the peer) and in tracing."""
    model = bench.make(max_retries=0)
    model.get_limits()
    bench.instrument.reset()
    bench.instrument.fail_next(1)
    with pytest.raises(MultiLLMError) as info:
        model.invoke(Q)
    assert info.value.backend == model._backend, f"{info.value!r}"
    assert model._get_ls_params()["ls_provider"] == model._backend


# ------------------------------------------------------------------ OpenAI chat over HTTP


def test_chat_url_and_body_are_what_is_sent(bench: Bench) -> None:
    """``_chat_url`` is where the generation goes and ``_chat_body`` is what it carries (with
    ``stream_usage`` for a stream), sync and async."""
    applies(bench, "openai_layer", holds=isinstance(bench.make(), OpenAIChatOverHTTP))
    assert bench.proxy is not None
    model = bench.make()
    messages = [HumanMessage(Q)]
    url = urlsplit(model._chat_url())
    for way, stream in (("invoke", False), ("stream", True), ("ainvoke", False)):
        bench.instrument.reset()
        if way == "invoke":
            model.invoke(messages)
        elif way == "stream":
            list(model.stream(messages))
        else:
            asyncio.run(model.ainvoke(messages))
        (hit,) = bench.proxy.log(lambda h: h.generation)
        assert hit.path == url.path, f"{way}: sent to {hit.path}, _chat_url {url.path}"
        req = model._prepare(messages, None, {}, stream=stream)
        body = model._chat_body(req, stream_usage=model.stream_usage if stream else False)
        assert json.loads(hit.body) == body, f"{way}: sent {hit.body!r}, _chat_body {body}"


def test_usage_fallback_fills_what_the_server_leaves_out(bench: Bench) -> None:
    """``_usage_fallback`` / ``_ausage_fallback``: a stream whose server sends no usage still
    ends with the usage of the same call made without streaming."""
    applies(bench, "usage_fallback")
    assert bench.proxy is not None
    model = bench.make()
    reference = model.invoke(Q).usage_metadata
    assert reference is not None
    for way in ("stream", "astream"):
        bench.proxy.strip_usage()
        if way == "stream":
            message = merge(list(model.stream(Q)))
        else:
            message = merge(asyncio.run(acollect(model.astream(Q))))
        usage = message.usage_metadata
        assert usage is not None, f"{way}: no usage"
        assert usage["input_tokens"] == reference["input_tokens"], way
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"], way


# ------------------------------------------------------------------ the completion hooks


def test_completion_hooks_agree(bench: Bench) -> None:
    """The completion model on the row's peer: ``_complete`` / ``_acomplete`` /
    ``_complete_stream`` / ``_acomplete_stream`` give the same text at temperature 0; an
    unknown key is refused by name and a prompt far over the window before anything is sent."""
    applies(bench, "completion", holds=bench.row.build_completion is not None)
    assert bench.row.build_completion is not None
    model = bench.row.build_completion(bench.target)
    bench.models.append(model)
    bench.instrument.attach(model)
    bench.instrument.reset()
    with pytest.raises(InvalidInputError, match="temprature"):
        model.invoke(P, temprature=0.2)
    with pytest.raises(InvalidInputError, match="temprature"):
        list(model.stream(P, temprature=0.2))
    assert bench.instrument.requests() == 0
    texts = {
        "invoke": model.invoke(P),
        "ainvoke": asyncio.run(model.ainvoke(P)),
        "stream": "".join(model.stream(P)),
        "astream": "".join(asyncio.run(acollect(model.astream(P)))),
    }
    assert len(set(texts.values())) == 1, texts
    generation = model.generate([P]).generations[0][0]
    assert generation.text == texts["invoke"]
    limits = model.get_limits()
    huge = filler(128 * (limits.context_window or limits.max_input_tokens or 0))
    bench.instrument.reset()
    with pytest.raises(ContextWindowExceededError):
        model.invoke(huge)
    assert bench.instrument.generations() == 0
