"""A Hugging Face text-generation-inference (TGI) server, over its HTTP API.

``ChatTGI`` speaks TGI's Messages API (``/v1/chat/completions``: the server applies the model's
chat template); ``TGI`` its generate routes (``/generate``, and ``/generate_stream`` with TGI's
own server-sent events). Both use ``httpx`` directly (one pooled client each way), as the
vLLM server backend does: the legacy ``text-generation`` client pins ``huggingface-hub<1.0``.

TGI's own routes give what the fit check needs: ``/info`` (``max_input_tokens``,
``max_total_tokens`` = the context window, ``max_stop_sequences``, ``model_id``), exact counts
from ``/tokenize`` (text) and ``/chat_tokenize`` (messages through the chat template), and
``/health``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

from langchain_core.outputs import Generation, GenerationChunk
from langchain_core.utils import from_env, secret_from_env
from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, field_validator, model_validator

from langchain_multillm._base import (
    ChatRequest,
    CompletionRequest,
    MultiLLMCompletionModel,
    Penalties,
    Prompt,
    RepetitionPenalty,
    Seed,
    TopK,
    TypicalP,
)
from langchain_multillm._http import (
    HealthProbe,
    HTTPConnection,
    LimitsProbe,
    Route,
    check_url,
    server_root,
)
from langchain_multillm._openai import (
    OpenAIChatOverHTTP,
    aiter_sse,
    iter_sse,
    to_openai_messages,
)
from langchain_multillm.errors import (
    IncompleteResponseError,
    InvalidInputError,
    ModelNotFoundError,
    malformed_body,
)
from langchain_multillm.fit import Limits, TemplateBound, chat_bound

__all__ = ["TGI", "ChatTGI"]

BACKEND = "tgi"

# The model name TGI's Messages API documents for "whatever this server serves".
ANY_MODEL = "tgi"

# Parameters only TGI's generate routes take (its Messages API has no field for them).
GENERATE_ONLY = ("top_k", "repetition_penalty", "do_sample", "truncate", "watermark", "typical_p")
# What a call may carry besides the sampling keys every model takes (TGI's ChatRequest and
# GenerateParameters, as far as these classes send them); anything else is refused by name.
CHAT_PARAMS = frozenset(
    {
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "tool_prompt",
        "parallel_tool_calls",
    }
)
GENERATE_PARAMS = frozenset({"seed", "grammar", *GENERATE_ONLY})


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _limits_from_info(model: _TGIConnection, info: Any) -> Limits:
    """``/info``: ``max_total_tokens`` is the window, ``max_input_tokens`` the input limit;
    the body is kept (``max_stop_sequences``)."""
    try:
        limits = Limits(
            context_window=int(info["max_total_tokens"]),
            max_input_tokens=int(info["max_input_tokens"]),
        )
    except (KeyError, TypeError, ValueError):
        raise malformed_body("/info has no token limits", body=info, backend=BACKEND) from None
    model._info = info
    return limits


class _TGIConnection(HTTPConnection, Seed):
    """Connection settings and TGI's own routes, shared by the chat and completion classes."""

    model_name: str = Field(default_factory=from_env("TGI_MODEL", default=ANY_MODEL), alias="model")
    """The model the server should serve (env ``TGI_MODEL``); ``"tgi"``: whatever it serves.
    Health reports ready only when ``/info``'s ``model_id`` matches a name given here."""

    base_url: str | None = Field(default_factory=from_env("TGI_BASE_URL", default=None))
    """The server root, e.g. ``http://host:8080`` (env ``TGI_BASE_URL``; a trailing ``/v1``
    is dropped)."""

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env(["HF_TOKEN", "HUGGINGFACEHUB_API_TOKEN"], default=None)
    )
    """Bearer token (env ``HF_TOKEN``), for Inference Endpoints and servers behind a proxy."""

    max_tokens: int | None = Field(
        default=None, gt=0, validation_alias=AliasChoices("max_tokens", "max_new_tokens")
    )
    """Most tokens to generate (also taken as TGI's ``max_new_tokens``)."""

    seed: int | None = Field(default=None, ge=0)
    """Seed for sampling, for repeatable outputs (TGI's is unsigned)."""

    _backend: ClassVar[str] = BACKEND
    # /health says whether the server can answer (503 "unhealthy": down); /info whether it
    # serves the configured model, and its limits.
    _health_probe = HealthProbe(
        status=Route("/health"),
        models=Route("/info"),
        served=lambda model, info: info.get("model_id"),
        window=lambda model, info: _int_or_none(info.get("max_total_tokens")),
        any_model=ANY_MODEL,
        status_refused="{answered} (not ready)",
        models_failed="{status} answered {code}; {models} failed: {error}",
    )
    _limits_probe = LimitsProbe(Route("/info"), read=_limits_from_info)
    _info: dict[str, Any] | None = PrivateAttr(default=None)
    _bound: TemplateBound | None = PrivateAttr(default=None)

    def _model_label(self) -> str | None:
        """The model ``/info`` says the server serves, once it is known (what a health report
        of a running server names), else the configured name."""
        served = (self._info or {}).get("model_id")
        return served if isinstance(served, str) and served else self.model_name

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, v: str | None) -> str | None:
        v = check_url("base_url", v)
        return server_root(v) if v else v

    @model_validator(mode="after")
    def _check_connection(self) -> _TGIConnection:
        if not self.base_url:
            raise InvalidInputError(
                "base_url",
                "is required: pass base_url=... or set TGI_BASE_URL (e.g. http://host:8080)",
            )
        return self

    @property
    def _root(self) -> str:
        assert self.base_url
        return self.base_url

    # ---- /info: limits (``_limits_probe``) ----
    def _measure_template(self) -> None:
        self._bound = TemplateBound.measure(self._count_probe)

    async def _ameasure_template(self) -> None:
        self._bound = await TemplateBound.ameasure(self._acount_probe)

    def _check_stop(self, params: dict[str, Any]) -> None:
        """No more stop sequences than ``/info``'s ``max_stop_sequences`` (limits known)."""
        stop = params.get("stop") or []
        most = (self._info or {}).get("max_stop_sequences")
        if isinstance(most, int) and len(stop) > most:
            raise InvalidInputError(
                "stop",
                f"this TGI server takes at most {most} stop sequences (/info "
                f"max_stop_sequences); got {len(stop)}",
            )

    # ---- counting: /tokenize and /chat_tokenize ----
    def _count_body(self, prompt: Prompt | list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        if isinstance(prompt, list):
            return "/chat_tokenize", {"messages": prompt}
        if prompt.text is not None:
            return "/tokenize", {"inputs": prompt.text}
        body: dict[str, Any] = {"messages": tgi_messages(to_openai_messages(prompt.messages or []))}
        if prompt.tools:
            body["tools"] = tgi_tools(prompt.tools)
        return "/chat_tokenize", body

    @staticmethod
    def _count_of(route: str, body: Any) -> int:
        tokens = body.get("tokenize_response") if isinstance(body, dict) else body
        if not isinstance(tokens, list):
            raise malformed_body(f"{route} gave no token list", body=body, backend=BACKEND)
        return len(tokens)

    def _count_probe(self, messages: list[dict[str, Any]]) -> int:
        route, body = self._count_body(messages)
        return self._count_of(route, self._post_json(f"{self._root}{route}", body))

    async def _acount_probe(self, messages: list[dict[str, Any]]) -> int:
        route, body = self._count_body(messages)
        return self._count_of(route, await self._apost_json(f"{self._root}{route}", body))

    def _count_exact(self, prompt: Prompt) -> int | None:
        route, body = self._count_body(prompt)
        try:
            return self._count_of(route, self._post_json(f"{self._root}{route}", body))
        except ModelNotFoundError:  # 404: the server has no fast tokenizer
            return None

    async def _acount_exact(self, prompt: Prompt) -> int | None:
        route, body = self._count_body(prompt)
        try:
            return self._count_of(route, await self._apost_json(f"{self._root}{route}", body))
        except ModelNotFoundError:
            return None

    def _count_bound(self, prompt: Prompt) -> int | None:
        if self._info is None:
            return None  # limits not fetched yet: the template is not measured
        return chat_bound(prompt, self._bound)


# ------------------------------------------------------------------ TGI's Messages API


def tgi_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool definitions in TGI's shape (the JSON schema goes in ``arguments``)."""
    out = []
    for tool in tools:
        fn = tool.get("function", {})
        spec: dict[str, Any] = {"name": fn.get("name"), "arguments": fn.get("parameters") or {}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        out.append({"type": tool.get("type", "function"), "function": spec})
    return out


def tgi_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages in TGI's shape: a message carries content or tool calls, not both,
    and TGI's message has no ``tool_call_id`` (it matches results to calls by order)."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if k != "tool_call_id"}
        if m.get("tool_calls"):
            m.pop("content", None)
        elif m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


def tgi_chat_body(payload: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body made into TGI's ``ChatRequest``."""
    body = dict(payload)
    body["messages"] = tgi_messages(body["messages"])
    if body.get("tools"):
        body["tools"] = tgi_tools(body["tools"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and "function" in choice:
        body["tool_choice"] = {"function": {"name": choice["function"]["name"]}}
    body.pop("parallel_tool_calls", None)
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema" and "json_schema" in fmt:
            spec = fmt["json_schema"]
            body["response_format"] = {
                "type": "json_schema",
                "value": {"name": spec.get("name"), "schema": spec.get("schema", {})},
            }
        elif fmt.get("type") == "json_object":
            raise InvalidInputError(
                "response_format",
                "TGI has no free-form JSON mode (its JSON grammar needs a schema with "
                "properties); use with_structured_output(schema) (method json_schema)",
            )
    return body


class ChatTGI(_TGIConnection, Penalties, OpenAIChatOverHTTP):
    """Chat with a model on a text-generation-inference server (its Messages API).

    Example:
        ```python
        from langchain_multillm import ChatTGI

        llm = ChatTGI(base_url="http://localhost:8080", max_tokens=256)
        llm.check_fit("Hello!")   # limits from /info, exact counts from /chat_tokenize
        llm.invoke("Hello!")
        ```

    Sampling parameters that only TGI's generate routes take (``top_k``,
    ``repetition_penalty``, ``do_sample``, ``truncate``, ``watermark``, ``typical_p``) are
    refused here with a pointer to :class:`TGI`.
    """

    chat_completion_enabled: bool = True
    """Whether the served model has a chat template; a base model without one needs ``TGI``."""

    _backend = BACKEND
    _call_params = CHAT_PARAMS
    _call_param_hints: ClassVar[dict[str, str]] = dict.fromkeys(
        GENERATE_ONLY, "TGI's Messages API has no such parameter; use TGI (the generate routes)"
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_generate_only(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for name in GENERATE_ONLY:
                if values.get(name) is not None:
                    raise InvalidInputError(
                        name,
                        "TGI's Messages API (/v1/chat/completions) has no such parameter; "
                        "use TGI (the generate routes) for it",
                    )
        return values

    @property
    def _llm_type(self) -> str:
        return "tgi-chat"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "HF_TOKEN"}

    def _before_send(self, req: ChatRequest) -> None:
        self.get_limits()  # /info: max_stop_sequences (asked once)
        self._check_request(req)

    async def _abefore_send(self, req: ChatRequest) -> None:
        await self.aget_limits()
        self._check_request(req)

    def _check_offline(self, req: ChatRequest) -> None:
        """Before the fit check, which already asks the server (``/chat_tokenize`` answers a
        template error for a base model)."""
        if not self.chat_completion_enabled:
            raise InvalidInputError(
                "chat_completion_enabled",
                "is False: this server's model has no chat template; use TGI (completion) "
                "with your own prompt format",
            )

    def _check_request(self, req: ChatRequest) -> None:
        self._check_stop(req.params)

    def _chat_url(self) -> str:
        return f"{self._root}/v1/chat/completions"

    def _chat_body(self, req: ChatRequest, *, stream_usage: bool) -> dict[str, Any]:
        return tgi_chat_body(super()._chat_body(req, stream_usage=stream_usage))


# ------------------------------------------------------------------ TGI's generate routes

# TGI's FinishReason values, kept as TGI names them.
FINISH_REASONS = ("length", "eos_token", "stop_sequence")


class _GenerateStream:
    """TGI's ``/generate_stream`` events as LangChain chunks; the last event carries details."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self.text: list[str] = []

    def feed(self, event: dict[str, Any]) -> GenerationChunk | None:
        if self.done:
            return None
        token = event.get("token")
        if not isinstance(token, dict):
            raise malformed_body("a stream event has no token", body=event, backend=BACKEND)
        text = "" if token.get("special") else str(token.get("text", ""))
        details = event.get("details")
        info: dict[str, Any] | None = None
        if details is not None:
            self.done = True
            info = _generation_info(details, self.model, input_length=details.get("input_length"))
        if not text and info is None:
            return None
        self.text.append(text)
        return GenerationChunk(text=text, generation_info=info)

    def finish(self) -> None:
        if not self.done:
            raise IncompleteResponseError(
                "the stream ended before its final event (with details)",
                partial_text="".join(self.text),
                backend=BACKEND,
            )

    def run(self, events: Iterator[dict[str, Any]]) -> Iterator[GenerationChunk]:
        for event in events:
            chunk = self.feed(event)
            if chunk is not None:
                yield chunk
        self.finish()

    async def arun(self, events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[GenerationChunk]:
        async for event in events:
            chunk = self.feed(event)
            if chunk is not None:
                yield chunk
        self.finish()


def _generation_info(
    details: dict[str, Any], model: str, *, input_length: int | None
) -> dict[str, Any]:
    finish = details.get("finish_reason")
    if not finish:
        raise IncompleteResponseError("the details have no finish_reason", backend=BACKEND)
    info: dict[str, Any] = {"finish_reason": finish, "model_name": model}
    out = details.get("generated_tokens")
    if isinstance(out, int):
        usage = {"completion_tokens": out}
        if isinstance(input_length, int):
            usage.update(prompt_tokens=input_length, total_tokens=input_length + out)
        info["usage"] = usage
    if details.get("seed") is not None:
        info["seed"] = details["seed"]
    return info


class TGI(_TGIConnection, TopK, RepetitionPenalty, TypicalP, MultiLLMCompletionModel):
    """Text completion on a text-generation-inference server (``/generate``,
    ``/generate_stream``).

    Follows LangChain's ``BaseLLM`` input contract, so ``PromptTemplate | TGI(...)`` works. For
    a base model without a chat template, this is the class to use. ``temperature=0`` means
    greedy decoding (TGI itself refuses 0: it is sent as ``do_sample=false``).
    """

    top_k: int | None = Field(default=None, gt=0)
    """Sample from the k most likely tokens (TGI takes a positive k)."""

    do_sample: bool | None = None
    """Sample (True) or decode greedily (False); TGI's default is greedy."""

    truncate: int | None = Field(default=None, gt=0)
    """Keep only the last ``truncate`` prompt tokens (TGI truncates on the server)."""

    watermark: bool | None = None
    """Watermark the output (Kirchenbauer et al.)."""

    grammar: dict[str, Any] | None = None
    """Constrain the output: ``{"type": "json", "value": <JSON schema>}`` or
    ``{"type": "regex", "value": "..."}``."""

    _backend = BACKEND
    _call_params = GENERATE_PARAMS
    _param_fields = ("do_sample", "truncate", "watermark", "grammar")
    _local_call_params = frozenset({"model"})  # the server serves one model

    @property
    def _llm_type(self) -> str:
        return "tgi"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "HF_TOKEN"}

    def _body(self, req: CompletionRequest) -> dict[str, Any]:
        self._check_stop(req.params)
        p = self._wire_params(req.params)
        params: dict[str, Any] = {"details": True, "return_full_text": False}
        max_new_tokens = p.pop("max_tokens", None)
        if max_new_tokens is not None:
            params["max_new_tokens"] = max_new_tokens
        temperature = p.pop("temperature", None)
        top_p = p.pop("top_p", None)
        if temperature == 0:
            # Greedy. TGI refuses a temperature of 0, and samples whenever a warper (top_k,
            # top_p, typical_p) is set: the argmax needs none of them.
            params["do_sample"] = False
            for warper in ("top_k", "typical_p"):
                p.pop(warper, None)
        else:
            if temperature is not None:
                params["temperature"] = temperature
            if top_p is not None and top_p < 1:  # TGI takes top_p in (0, 1); 1 means no cut
                params["top_p"] = top_p
        for key in (*GENERATE_ONLY, "seed", "grammar", "stop"):
            value = p.pop(key, None)
            if value is not None and value != []:
                params.setdefault(key, value)
        return {"inputs": req.prompt, "parameters": params}

    def _generation(self, body: Any, model: str) -> Generation:
        try:
            text = body["generated_text"]
            details = body["details"]
        except (KeyError, TypeError):
            raise malformed_body(
                "/generate gave no generated_text", body=body, backend=BACKEND
            ) from None
        return Generation(
            text=text, generation_info=_generation_info(details, model, input_length=None)
        )

    def _complete(self, req: CompletionRequest) -> Generation:
        self.get_limits()
        body = self._post_json(f"{self._root}/generate", self._body(req))
        return self._generation(body, self.model_name)

    async def _acomplete(self, req: CompletionRequest) -> Generation:
        await self.aget_limits()
        body = await self._apost_json(f"{self._root}/generate", self._body(req))
        return self._generation(body, self.model_name)

    def _complete_stream(self, req: CompletionRequest) -> Iterator[GenerationChunk]:
        self.get_limits()
        events = functools.partial(iter_sse, require_done=False)
        stream = self._sse(f"{self._root}/generate_stream", self._body(req), events)
        yield from _GenerateStream(self.model_name).run(stream)

    async def _acomplete_stream(self, req: CompletionRequest) -> AsyncIterator[GenerationChunk]:
        await self.aget_limits()
        events = functools.partial(aiter_sse, require_done=False)
        stream = self._asse(f"{self._root}/generate_stream", self._body(req), events)
        async for chunk in _GenerateStream(self.model_name).arun(stream):
            yield chunk
