"""The table of the contract suite: one row per chat model, each on its real engine or fixture.

Adding a backend is adding a :class:`Row`: how to build the model given its peer, how to reach
its peer (HTTP through :class:`~tests.contract.proxy.FaultProxy`, or an in-process engine with
an :class:`Instrument` that wraps the engine call), and which promises do not apply, with why.
Nothing here asserts anything: ``test_contract.py`` asserts the same promises for every row.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import peers
from tests.contract.proxy import FaultProxy, Hit

# Promise names a row may mark as not applicable (with the reason).
PROMISES = (
    "retry_after",  # a Retry-After header is honoured
    "secrets",  # repr / dumps / auth errors never show the key
    "unhealthy",  # the peer can be made to answer "unhealthy"
    "limits_without_io",  # the limits (and profile) are known before any request
    "valid_prompt",  # is_valid_prompt decides near the window (needs an exact count)
    # The hooks of docs/backends/writing.md (test_hooks.py): where a backend has no such hook.
    "http",  # requests over HTTP: _headers, the api_key sent, the proxy's view of a call
    "openai_layer",  # OpenAIChatOverHTTP: _chat_url, _chat_body (what is sent is the hook's)
    "check_offline",  # _check_offline refuses something (the row's ``offline_refusal``)
    "before_send",  # _before_send / _abefore_send refuse something (``before_send_refusal``)
    "usage_fallback",  # stream usage filled where the server leaves it out
    "oauth2",  # _auth_flow: OAuth2 client credentials, the token sent as the bearer
    "tools",  # _format_tools: tools counted by the fit check as the peer counts them
    "exact_tools",  # a row with exact counts counts bound tools exactly too (else a bound)
    "completion",  # the completion hooks (_complete, ...): the row's ``build_completion``
    "clean_cut",  # a stream whose body ends cleanly before the finish raises IncompleteResponse
    "engine_holder",  # EngineHolder: one engine per key, held by leases (in-process rows)
)


@dataclass(frozen=True)
class Refusal:
    """A call a hook refuses with :class:`InvalidInputError` naming ``names`` (the field): the
    model built with ``build`` (over the row's defaults), called with ``call`` on ``prompt``."""

    names: str
    call: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    prompt: Any = "Name a colour."


def _closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{peers.free_port()}"


@dataclass(frozen=True)
class Row:
    """One chat model of the table.

    ``build(target, **overrides)``: the model, with ``target`` the proxy's URL (HTTP rows) or
    the peer fixture's value (in-process rows); the suite's defaults (temperature 0, tiny
    max_tokens) are set here, ``overrides`` win. ``peer_fixture``: the session fixture of
    ``tests/conftest.py`` that gives the peer. ``upstream``: the peer's root URL, from the peer
    fixture's value (HTTP rows). ``health_route``: which request of a health check proves the
    model can answer (HTTP rows; the proxy answers it 503 for the "unhealthy" state).
    ``exact_count``: whether the backend counts prompts exactly (else a bound: a prompt the
    bounds cannot settle may be sent, and the backend's own refusal is the error).
    ``secret``: the key the row is built with (None: the model has no credential).
    ``wrong_key``: a key the peer refuses with its own auth error (None: the peer checks no key,
    the proxy answers 401). ``ready_by_generation``: why only a (billed) generation can prove
    readiness, where that is so: the free ``health()`` then proves ``alive`` only, and
    ``health(deep=True)`` sends the one-token generation. ``not_applicable``: promise -> why it
    does not apply. ``offline_refusal``: a call ``_check_offline`` refuses (before the fit
    check asks anything); ``before_send_refusal``: one ``_before_send`` refuses (after it).
    ``batches_in_engine``: the class's ``_batches_in_engine``. ``build_completion``: the
    completion model on the same peer (same arguments as ``build``). ``known_bugs``: test
    name -> the bug (the package's, or the peer fixture's) it finds on this row: the test runs
    as ``xfail(strict=True)``, so it fails until the bug is fixed, then the entry must go.
    """

    id: str
    marker: str
    peer_fixture: str
    http: bool
    build: Callable[..., Any]
    upstream: Callable[[Any], str] = lambda peer: str(peer)
    health_route: Callable[[Hit], bool] = lambda hit: False
    exact_count: bool = True
    secret: str | None = None
    wrong_key: str | None = None
    ready_by_generation: str | None = None
    not_applicable: dict[str, str] = field(default_factory=dict)
    offline_refusal: Refusal | None = None
    before_send_refusal: Refusal | None = None
    batches_in_engine: bool = False
    build_completion: Callable[..., Any] | None = None
    known_bugs: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def why_not(self, promise: str) -> str | None:
        assert promise in PROMISES, promise
        return self.not_applicable.get(promise)

    def build_down(self, peer: Any) -> Any:
        """The model where nothing answers: a closed port, or a model file that is gone."""
        if self.http:
            return self.build(_closed_port_url())
        return _DOWN_BUILDERS[self.id](self, peer)


def _get(hit: Hit, pattern: str) -> bool:
    return hit.method == "GET" and re.search(pattern, hit.path) is not None


# ------------------------------------------------------------------ builders


# A window of 512 (the integration tier runs 2048): prompts near it stay cheap on 2 cores.
LLAMACPP_WINDOW = 512


def _llamacpp(target: str, **kw: Any) -> Any:
    from langchain_multillm import ChatLlamaCpp

    kw = {"temperature": 0, "max_tokens": 8, "seed": 1, "n_ctx": LLAMACPP_WINDOW, **kw}
    return ChatLlamaCpp(model_path=target, **kw)


def _llamacpp_completion(target: str, **kw: Any) -> Any:
    from langchain_multillm import LlamaCpp

    kw = {"temperature": 0, "max_tokens": 8, "seed": 1, "n_ctx": LLAMACPP_WINDOW, **kw}
    return LlamaCpp(model_path=target, **kw)


def _llamacpp_down(row: Row, peer: str) -> Any:
    """A model built on a GGUF file that is then removed (the in-process "nothing there")."""
    link = Path(tempfile.mkdtemp(prefix="contract-")) / "gone.gguf"
    link.symlink_to(peer)
    model = row.build(str(link))
    link.unlink()
    return model


def _vllm_engine(target: dict, **kw: Any) -> Any:
    from langchain_multillm import ChatVLLM

    kw = {"temperature": 0, "max_tokens": 8, "seed": 1, **kw}
    return ChatVLLM(**target, **kw)


def _vllm_engine_completion(target: dict, **kw: Any) -> Any:
    from langchain_multillm import VLLM

    kw = {"temperature": 0, "max_tokens": 8, "seed": 1, **kw}
    return VLLM(**target, **kw)


def _vllm_engine_down(row: Row, peer: dict) -> Any:
    missing = Path(tempfile.gettempdir()) / "contract-no-such-model"
    return row.build({**peer, "model": str(missing)})


def _vllm_server(target: str, **kw: Any) -> Any:
    from langchain_multillm import ChatVLLMServer

    kw = {"temperature": 0, "max_tokens": 8, "seed": 1, **kw}
    return ChatVLLMServer(base_url=f"{target}/v1", model=peers.SERVED_MODEL_NAME, **kw)


def _vllm_server_completion(target: str, **kw: Any) -> Any:
    from langchain_multillm import VLLMServer

    kw = {"temperature": 0, "max_tokens": 8, "seed": 1, **kw}
    return VLLMServer(base_url=f"{target}/v1", model=peers.SERVED_MODEL_NAME, **kw)


def _tgi_completion(target: str, **kw: Any) -> Any:
    from langchain_multillm import TGI

    kw = {"temperature": 0, "max_tokens": 8, "seed": 1, **kw}
    return TGI(base_url=target, **kw)


def _tgi(target: str, **kw: Any) -> Any:
    from langchain_multillm import ChatTGI

    kw = {"temperature": 0, "max_tokens": 8, "seed": 1, **kw}
    return ChatTGI(base_url=target, **kw)


DEEPSEEK_KEY = "sk-contract-deepseek-8c1f2a"
# The DeepSeek fixture's window is SmolLM2's (2048); the real models' 128K (the package's
# table) cannot be generated against here, so the row tells the model the fixture's window.
DEEPSEEK_WINDOW = 2048


def _deepseek(target: str, **kw: Any) -> Any:
    from langchain_multillm import ChatDeepSeek

    kw = {
        "api_key": DEEPSEEK_KEY,
        "model": "deepseek-chat",
        "temperature": 0,
        "max_tokens": 8,
        "context_window": DEEPSEEK_WINDOW,
        **kw,
    }
    return ChatDeepSeek(base_url=target, **kw)


# The Azure fixture counts with tiktoken (o200k_base, as gpt-4o) as gpt-4o's 128K window would,
# but generates with SmolLM2 in 2048 tokens of its own: the row tells the model a window of 512
# (a window the user sets), so prompts near it fit the fixture's engine and stay cheap.
AZURE_WINDOW = 512


def _azure(target: str, **kw: Any) -> Any:
    from langchain_multillm import ChatAzureOpenAI

    kw = {
        "api_key": peers.AZURE_FIXTURE_KEY,
        "azure_deployment": peers.AZURE_DEPLOYMENT,
        "api_version": peers.AZURE_API_VERSION,
        "temperature": 0,
        "max_tokens": 8,
        "seed": 1,
        "context_window": AZURE_WINDOW,
        **kw,
    }
    return ChatAzureOpenAI(azure_endpoint=target, **kw)


def _gemini(target: str, **kw: Any) -> Any:
    from langchain_multillm import ChatGemini

    kw = {
        "api_key": peers.GEMINI_FIXTURE_KEY,
        "model": peers.GEMINI_MODEL,
        "temperature": 0,
        "max_tokens": 8,
        "seed": 1,
        **kw,
    }
    return ChatGemini(base_url=target, **kw)


_DOWN_BUILDERS: dict[str, Callable[[Row, Any], Any]] = {
    "llamacpp": _llamacpp_down,
    "vllm-engine": _vllm_engine_down,
}

IN_PROCESS_NO_HTTP = "in-process engine: no HTTP response, so no Retry-After header to honour"
NO_CREDENTIAL = "the model takes no credential (a local file / engine in this process)"
NO_REQUEST = "in-process engine: no HTTP request to carry headers or a key"
NOT_OPENAI_HTTP = "not on OpenAIChatOverHTTP: the chat hooks are the backend's own"
NO_BEFORE_SEND = "_before_send is the default: nothing is checked beyond _check_offline"
NO_OAUTH = "no OAuth2 settings: the credential is an api_key"
NO_FALLBACK = "no usage fallback: the server always sends stream usage (asked for)"
NO_COMPLETION = "no completion model for this API (chat only)"
NO_ENGINE = "a server: no engine in this process to hold"
ENGINE_LOOP_CUT = (
    "in-process: the engine's token loop ending early reads as max_tokens reached (no "
    "protocol end to miss); a failure mid-stream is test_a_stream_cut_upstream_raises"
)
CHAT_PROMPT_ONLY = Refusal(
    "messages[0].content[0].type",
    prompt=[("human", [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}])],
)

ROWS: tuple[Row, ...] = (
    Row(
        id="llamacpp",
        marker="llamacpp",
        peer_fixture="llama_cpp_available",
        http=False,
        build=_llamacpp,
        build_completion=_llamacpp_completion,
        notes=f"n_ctx={LLAMACPP_WINDOW}: prompts near the window stay cheap",
        offline_refusal=CHAT_PROMPT_ONLY,
        not_applicable={
            "retry_after": IN_PROCESS_NO_HTTP,
            "secrets": NO_CREDENTIAL,
            "unhealthy": "a GGUF model in this process has no 'answers unhealthy' state apart "
            "from its file being gone (test_health_down_when_nothing_is_there)",
            "http": NO_REQUEST,
            "openai_layer": NOT_OPENAI_HTTP,
            "before_send": NO_BEFORE_SEND,
            "usage_fallback": "in-process: the usage is counted by the engine itself",
            "oauth2": NO_CREDENTIAL,
            "clean_cut": ENGINE_LOOP_CUT,
        },
    ),
    Row(
        id="vllm-server",
        marker="vllm_server",
        peer_fixture="vllm_server_url",
        http=True,
        build=_vllm_server,
        build_completion=_vllm_server_completion,
        upstream=lambda url: url.removesuffix("/v1"),
        health_route=lambda hit: _get(hit, r"^/health$"),
        secret="contract-vllm-key-51d0",
        not_applicable={
            "engine_holder": NO_ENGINE,
            "limits_without_io": "the window is the server's (GET /v1/models max_model_len)",
            "check_offline": "ChatVLLMServer refuses nothing beyond the common checks (an "
            "extra_body that is not a dict: the base's call-key check, for every backend)",
            "before_send": NO_BEFORE_SEND,
        },
    ),
    Row(
        id="tgi",
        marker="tgi",
        peer_fixture="tgi_server_url",
        http=True,
        build=_tgi,
        build_completion=_tgi_completion,
        health_route=lambda hit: _get(hit, r"^/health$"),
        secret="hf_contract_tgi_token_77aa",
        offline_refusal=Refusal(
            "chat_completion_enabled", build={"chat_completion_enabled": False}
        ),
        # /info's max_stop_sequences (the fixture's 4, TGI's default): known after /info only.
        before_send_refusal=Refusal("stop", call={"stop": ["a", "b", "c", "d", "e"]}),
        not_applicable={
            "engine_holder": NO_ENGINE,
            "limits_without_io": "the limits are the server's (GET /info)",
            "usage_fallback": NO_FALLBACK,
            "oauth2": NO_OAUTH,
        },
    ),
    Row(
        id="deepseek",
        marker="deepseek",
        peer_fixture="deepseek_server_url",
        http=True,
        build=_deepseek,
        health_route=lambda hit: _get(hit, r"/models$"),
        exact_count=False,
        not_applicable={
            "engine_holder": NO_ENGINE,
            "valid_prompt": "no exact count of a chat prompt (DeepSeek's template is not "
            "published): a prompt between the bounds is sent and the API judges (docs/fit.md)",
            "check_offline": "ChatDeepSeek refuses nothing beyond the common checks (the keys "
            "of a call are checked by _allowed_call_params)",
            "before_send": NO_BEFORE_SEND,
            "usage_fallback": NO_FALLBACK,
            "oauth2": NO_OAUTH,
            "completion": NO_COMPLETION,
        },
        secret=DEEPSEEK_KEY,
        wrong_key="not-a-deepseek-key-0192",
        notes=f"context_window={DEEPSEEK_WINDOW} set: the fixture's window (SmolLM2)",
    ),
    Row(
        id="azure",
        marker="azure",
        peer_fixture="azure_server_url",
        http=True,
        build=_azure,
        health_route=lambda hit: _get(hit, r"^/openai/models$"),
        secret=peers.AZURE_FIXTURE_KEY,
        wrong_key="contract-wrong-azure-key-3e9",
        ready_by_generation="Azure has no free route that says a deployment can answer "
        "(GET /openai/models proves the endpoint and the key); docs/backends/azure.md",
        # An o-series model takes no sampling knobs (the row's temperature=0 is one).
        offline_refusal=Refusal("temperature", build={"model": "o3-mini"}),
        not_applicable={
            "engine_holder": NO_ENGINE,
            "exact_tools": "Azure renders bound tools in a form it does not publish: the "
            "package counts them with a bound (docs/backends/azure.md), at least the fixture's "
            "count (the openai-cookbook's estimate)",
            "openai_layer": "the openai SDK's client (AzureOpenAI), not OpenAIChatOverHTTP",
            "before_send": "not on OpenAIChatOverHTTP (no _before_send)",
            "usage_fallback": "counted with tiktoken where an API version takes no "
            "stream_options; the fixture's version (2024-10-21) sends usage",
            "oauth2": NO_OAUTH,
            "completion": NO_COMPLETION,
        },
        notes=f"context_window={AZURE_WINDOW} set: prompts near it must fit the fixture's "
        "SmolLM2 engine (2048 of its tokens), and stay cheap",
    ),
    Row(
        id="gemini",
        marker="gemini",
        peer_fixture="gemini_server_url",
        http=True,
        build=_gemini,
        health_route=lambda hit: _get(hit, r"/models/[^/:]+$"),
        secret=peers.GEMINI_FIXTURE_KEY,
        wrong_key="not-a-google-key-4411",
        offline_refusal=Refusal("top_k", call={"top_k": 0}),
        not_applicable={
            "engine_holder": NO_ENGINE,
            "limits_without_io": "the limits are the API's (models.get inputTokenLimit)",
            "openai_layer": "the google-genai SDK's client, not OpenAIChatOverHTTP",
            "before_send": "not on OpenAIChatOverHTTP (no _before_send)",
            "usage_fallback": "Gemini sends usageMetadata in every stream",
            "oauth2": NO_OAUTH,
            "completion": NO_COMPLETION,
        },
    ),
    Row(
        id="vllm-engine",
        marker="vllm_engine",
        peer_fixture="vllm_engine_params",
        http=False,
        build=_vllm_engine,
        build_completion=_vllm_engine_completion,
        batches_in_engine=True,
        offline_refusal=Refusal("model", call={"model": "another-model"}),
        not_applicable={
            "retry_after": IN_PROCESS_NO_HTTP,
            "secrets": NO_CREDENTIAL,
            "http": NO_REQUEST,
            "openai_layer": NOT_OPENAI_HTTP,
            "before_send": NO_BEFORE_SEND,
            "usage_fallback": "in-process: the usage is the engine's own",
            "oauth2": NO_CREDENTIAL,
            "clean_cut": ENGINE_LOOP_CUT,
        },
        notes="max_model_len=2048 given (the session's engine): the window is known before "
        "the engine loads",
    ),
)

BY_ID = {row.id: row for row in ROWS}


def executor_workers() -> int:
    """Workers of asyncio's default executor on this machine (``ThreadPoolExecutor``'s)."""
    return min(32, (os.cpu_count() or 1) + 4)


# ------------------------------------------------------------------ instruments


class Instrument:
    """What a test can see and provoke at the backend, the same way for every row."""

    def generations(self) -> int:
        """Generations that reached the backend since the last :meth:`reset`."""
        raise NotImplementedError

    def requests(self) -> int:
        """Everything that reached the backend since the last :meth:`reset`."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def attach(self, model: Any) -> None:
        """Instrument a model built by the row (in-process rows wrap its engine)."""

    def fail_next(self, times: int = 1) -> None:
        """The next ``times`` generations fail before their first token (retryable)."""
        raise NotImplementedError

    def cut_next(self, mode: str) -> None:
        """The next generation's stream is cut after its first output."""
        raise NotImplementedError

    def cut_modes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def make_unhealthy(self) -> None:
        """The backend answers "unhealthy" (until :meth:`close`)."""
        raise NotImplementedError

    def sampling_sent(self) -> dict[str, Any]:
        """``temperature`` and ``top_p`` as the last generation gave them to the backend (a key
        is missing where nothing was sent for it)."""
        raise NotImplementedError

    def most_in_flight(self) -> int:
        """The most generations in flight at once since the last :meth:`reset`."""
        raise NotImplementedError

    def close(self) -> None:
        """Undo everything this instrument changed."""


# The wire names of temperature and top_p: OpenAI's, TGI's ``parameters``, Gemini's
# ``generationConfig`` (camelCase in JSON).
_SAMPLING_KEYS = {"temperature": "temperature", "top_p": "top_p", "topP": "top_p"}


def _find_sampling(body: Any) -> dict[str, Any]:
    """``temperature`` / ``top_p`` wherever a request body nests them (the first found)."""
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _SAMPLING_KEYS and _SAMPLING_KEYS[key] not in found:
                    found[_SAMPLING_KEYS[key]] = value
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(body)
    return found


def error_body(status: int, message: str, code: str) -> bytes:
    """An error body every client of the table reads: OpenAI's ``error.message``, Google's
    ``error.code/message/status``, and a string ``error_type`` field that TGI clients read."""
    return json.dumps(
        {"error": {"message": message, "type": code, "code": status, "status": code},
         "error_type": code}
    ).encode()  # fmt: skip


class ProxyInstrument(Instrument):
    """An HTTP row: everything through its :class:`FaultProxy`."""

    def __init__(self, row: Row, proxy: FaultProxy) -> None:
        self.row = row
        self.proxy = proxy

    def generations(self) -> int:
        return self.proxy.count(lambda h: h.generation)

    def requests(self) -> int:
        return self.proxy.count()

    def reset(self) -> None:
        self.proxy.reset()

    def fail_next(self, times: int = 1) -> None:
        self.proxy.respond(
            503, times=times, body=error_body(503, "overloaded (contract proxy)", "UNAVAILABLE")
        )

    def cut_next(self, mode: str) -> None:
        self.proxy.cut(mode)

    def cut_modes(self) -> tuple[str, ...]:
        return ("eof", "abort")

    def sampling_sent(self) -> dict[str, Any]:
        sent = self.proxy.log(lambda h: h.generation)
        assert sent, "no generation reached the proxy"
        return _find_sampling(json.loads(sent[-1].body))

    def make_unhealthy(self) -> None:
        self.proxy.respond(
            503,
            times=None,
            match=self.row.health_route,
            body=error_body(503, "unhealthy (contract proxy)", "UNAVAILABLE"),
        )

    def close(self) -> None:
        self.proxy.reset()


class _Faults:
    """Queued faults for an in-process engine."""

    def __init__(self) -> None:
        self.count = 0
        self.queue: list[str] = []
        self.sampling: dict[str, Any] = {}
        self.in_flight = 0
        self.most = 0

    def next(self) -> str | None:
        self.count += 1
        return self.queue.pop(0) if self.queue else None


INJECTED_BEFORE = "contract: injected engine failure before the first token"
INJECTED_MID = "contract: injected engine failure in the middle of the stream"
TOKENS_BEFORE_CUT = 3


class LlamaInstrument(Instrument):
    """ChatLlamaCpp: counts and fails generations by wrapping ``Llama.generate`` (the token
    loop every llama-cpp-python completion runs) on the loaded model. A real engine cannot be
    made to fail on cue: the failure is injected (a unit fake at the engine's edge)."""

    def __init__(self) -> None:
        self.faults = _Faults()
        self._patched: list[Any] = []

    def attach(self, model: Any) -> None:
        llama = model.engine.llama
        if any(p is llama for p in self._patched):
            return
        original = llama.generate
        faults = self.faults

        def generate(*args: Any, **kwargs: Any) -> Any:
            fault = faults.next()
            faults.sampling = {"temperature": kwargs.get("temp"), "top_p": kwargs.get("top_p")}
            tokens = original(*args, **kwargs)
            return tokens if fault is None else _faulty(tokens, fault)

        llama.generate = generate
        self._patched.append(llama)

    def generations(self) -> int:
        return self.faults.count

    def requests(self) -> int:
        return self.faults.count

    def reset(self) -> None:
        self.faults.count = 0
        self.faults.queue.clear()
        self.faults.most = 0

    def fail_next(self, times: int = 1) -> None:
        self.faults.queue.extend(["before"] * times)

    def cut_next(self, mode: str) -> None:
        self.faults.queue.append("mid")

    def cut_modes(self) -> tuple[str, ...]:
        return ("mid",)

    def sampling_sent(self) -> dict[str, Any]:
        return dict(self.faults.sampling)

    def make_unhealthy(self) -> None:  # pragma: no cover - not applicable (see the row)
        raise NotImplementedError

    def close(self) -> None:
        for llama in self._patched:
            del llama.generate
        self._patched.clear()


def _faulty(tokens: Any, fault: str) -> Any:
    if fault == "before":
        raise RuntimeError(INJECTED_BEFORE)
    for n, token in enumerate(tokens, start=1):
        yield token
        if n >= TOKENS_BEFORE_CUT:
            raise RuntimeError(INJECTED_MID)


class VLLMEngineInstrument(Instrument):
    """ChatVLLM: counts and fails generations by wrapping the shared engine handle's
    ``generate`` (one call per request); "unhealthy" is vLLM's own dead-engine error from
    ``check_health``. The failures are injected (a real engine cannot fail on cue)."""

    def __init__(self) -> None:
        self.faults = _Faults()
        self._patched: list[tuple[Any, str]] = []

    def attach(self, model: Any) -> None:
        eng = model.engine
        if any(obj is eng for obj, _ in self._patched):
            return
        original = eng.generate
        faults = self.faults

        def generate(render: Any, sampling: Any) -> Any:
            fault = faults.next()
            faults.sampling = {"temperature": sampling.temperature, "top_p": sampling.top_p}
            outputs = original(render, sampling)
            return _counted(outputs if fault is None else _afaulty(outputs, fault), faults)

        eng.generate = generate
        self._patched.append((eng, "generate"))

    def generations(self) -> int:
        return self.faults.count

    def requests(self) -> int:
        return self.faults.count

    def reset(self) -> None:
        self.faults.count = 0
        self.faults.queue.clear()
        self.faults.most = 0

    def fail_next(self, times: int = 1) -> None:
        self.faults.queue.extend(["before"] * times)

    def cut_next(self, mode: str) -> None:
        self.faults.queue.append("mid")

    def cut_modes(self) -> tuple[str, ...]:
        return ("mid",)

    def sampling_sent(self) -> dict[str, Any]:
        return dict(self.faults.sampling)

    def most_in_flight(self) -> int:
        return self.faults.most

    def make_unhealthy(self) -> None:
        eng = next(obj for obj, _ in self._patched)
        from vllm.v1.engine.exceptions import EngineDeadError

        async def check_health() -> None:
            raise EngineDeadError("contract: injected dead engine")

        eng.llm.check_health = check_health
        self._patched.append((eng.llm, "check_health"))

    def close(self) -> None:
        for obj, name in self._patched:
            delattr(obj, name)
        self._patched.clear()


async def _afaulty(outputs: Any, fault: str) -> Any:
    try:
        if fault == "before":
            raise RuntimeError(INJECTED_BEFORE)
        n = 0
        async for out in outputs:
            yield out
            n += 1
            if n >= TOKENS_BEFORE_CUT:
                raise RuntimeError(INJECTED_MID)
    finally:
        await outputs.aclose()


async def _counted(outputs: Any, faults: _Faults) -> Any:
    """``outputs`` (an engine's async stream), counted in flight from first to last output."""
    faults.in_flight += 1
    faults.most = max(faults.most, faults.in_flight)
    try:
        async for out in outputs:
            yield out
    finally:
        faults.in_flight -= 1
        await outputs.aclose()


IN_PROCESS_INSTRUMENTS: dict[str, Callable[[], Instrument]] = {
    "llamacpp": LlamaInstrument,
    "vllm-engine": VLLMEngineInstrument,
}
