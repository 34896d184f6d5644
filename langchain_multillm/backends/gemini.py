"""Google's Gemini API, through the ``google-genai`` SDK.

* Connection: ``api_key`` (env ``GEMINI_API_KEY``, then ``GOOGLE_API_KEY``), ``base_url`` (env
  ``GEMINI_BASE_URL``; passed to google-genai's ``http_options.base_url``), ``api_version``
  (``v1beta``). The SDK's retries are off (``retry_options.attempts=1``): the package retries
  in one place.
* Requests: system messages become the ``systemInstruction``; ``temperature``, ``top_p``,
  ``top_k``, ``max_tokens`` (sent as ``maxOutputTokens``), ``stop`` (``stopSequences``),
  ``seed``, ``thinking_budget`` / ``include_thoughts`` (``thinkingConfig``) and
  ``safety_settings`` go into the request; tools and ``tool_choice`` become function
  declarations and a ``functionCallingConfig``; ``with_structured_output`` asks for JSON with a
  ``responseJsonSchema`` (or a forced function call).
* Answers: text, function calls (``tool_calls``), thoughts (``additional_kwargs
  ["reasoning_content"]``); ``response_metadata`` has ``finish_reason`` (Gemini's, e.g.
  ``STOP``), ``model_name``, ``model_version`` and ``safety_ratings``. An answer blocked for
  safety (a ``SAFETY``-like finish, or ``promptFeedback.blockReason``) with nothing usable raises
  :class:`~langchain_multillm.errors.ContentFilteredError` carrying the ratings.
* Limits: ``models.get`` (``inputTokenLimit`` -> ``max_input_tokens``, ``outputTokenLimit`` ->
  ``max_output_tokens``), asked once. Counts: ``countTokens`` (exact, with the system
  instruction and tools through ``generateContentRequest``), asked only when the cheap bound
  (UTF-8 bytes plus an allowance per message) cannot decide.
* Health: ``models.get`` (authenticated, free).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from langchain_multillm._base import ChatRequest, Prompt, Seed, TopK
from langchain_multillm._http import check_url
from langchain_multillm._openai import StructuredMethod, ToolsAndStructuredOutputMixin
from langchain_multillm.errors import (
    AuthenticationError,
    ContentFilteredError,
    IncompleteResponseError,
    InvalidInputError,
    ModelNotFoundError,
    MultiLLMError,
    PermissionDeniedError,
    from_genai_error,
    mapped,
)
from langchain_multillm.fit import Limits, chat_bound
from langchain_multillm.health import (
    Call,
    HealthReport,
    HealthSteps,
    arun_steps,
    describe,
    not_ready,
    probe_failed,
    run_steps,
)

__all__ = ["ChatGemini"]

BACKEND = "gemini"
DEFAULT_MODEL = "gemini-2.5-flash"
API_VERSION = "v1beta"

# Finish reasons that mean the answer was withheld (safety.proto / Candidate.FinishReason).
BLOCKED_FINISHES = frozenset(
    {"SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "RECITATION"}
)
# What a call may carry besides the sampling keys every model takes (what the request
# understands, and the tools ``bind_tools`` binds); anything else is refused by name.
CALL_PARAMS = frozenset(
    {
        "top_k",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "response_mime_type",
        "thinking_budget",
        "include_thoughts",
        "safety_settings",
    }
)


def _genai() -> Any:
    try:
        from google import genai
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ChatGemini needs google-genai: pip install 'langchain-multillm[gemini]'"
        ) from exc
    return genai


def _enum(value: Any) -> str | None:
    """An SDK enum (or a plain string) as its wire name."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


# ------------------------------------------------------------------ messages out


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's content as Gemini parts (dicts): text, and images given inline."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content or []):
        if isinstance(block, str):
            parts.append({"text": block})
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if block.get("text"):
                parts.append({"text": block["text"]})
        elif kind in ("image", "file") and (block.get("base64") or block.get("data")):
            mime = block.get("mime_type") or "application/octet-stream"
            data = block.get("base64") or block.get("data")
            parts.append({"inline_data": {"mime_type": mime, "data": base64.b64decode(data)}})
        elif kind == "image_url":
            url = block["image_url"]["url"] if isinstance(block.get("image_url"), dict) else ""
            if not url.startswith("data:") or ";base64," not in url:
                raise InvalidInputError(
                    f"{where}.content[{i}]", "Gemini takes images inline (a data: URL) only"
                )
            head, data = url[5:].split(";base64,", 1)
            parts.append({"inline_data": {"mime_type": head, "data": base64.b64decode(data)}})
        elif kind in ("reasoning", "thinking"):
            continue  # thoughts are not sent back
        elif kind in ("tool_call", "tool_use", "tool_call_chunk", "function_call"):
            continue  # sent from the message's tool_calls
        else:
            raise InvalidInputError(f"{where}.content[{i}]", f"unsupported block type {kind!r}")
    return parts


def _tool_response(content: Any) -> dict[str, Any]:
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"result": text}


def to_gemini(messages: Sequence[BaseMessage]) -> tuple[dict[str, Any] | None, list[dict]]:
    """LangChain messages as (systemInstruction, contents), both as SDK-shaped dicts.

    System messages (anywhere) are joined into the system instruction; tool results become
    ``functionResponse`` parts, consecutive ones in one user turn (as Gemini answers parallel
    calls); thoughts are never sent back, thought signatures are.
    """
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        last = contents[-1] if contents else None
        if (
            last is not None
            and last["role"] == role == "user"
            and parts
            and all("function_response" in p for p in last["parts"] + parts)
        ):
            last["parts"].extend(parts)
            return
        contents.append({"role": role, "parts": parts})

    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(m, SystemMessage) or (
            isinstance(m, ChatMessage) and m.role in ("system", "developer")
        ):
            system.append(m.text)
        elif isinstance(m, HumanMessage) or (isinstance(m, ChatMessage) and m.role == "user"):
            parts = _text_blocks(m.content, where)
            add("user", parts or [{"text": ""}])
        elif isinstance(m, AIMessage) or (isinstance(m, ChatMessage) and m.role == "assistant"):
            signatures = m.additional_kwargs.get("thought_signatures") or {}
            parts = _text_blocks(m.content, where)
            for tc in m.tool_calls if isinstance(m, AIMessage) else []:
                call: dict[str, Any] = {"name": tc["name"], "args": tc["args"]}
                call_id = tc.get("id")
                if call_id:
                    call["id"] = call_id
                    names[call_id] = tc["name"]
                part: dict[str, Any] = {"function_call": call}
                sig = signatures.get(call_id or "")
                if sig:
                    part["thought_signature"] = base64.b64decode(sig)
                parts.append(part)
            add("model", parts or [{"text": ""}])
        elif isinstance(m, ToolMessage):
            name = m.name or names.get(m.tool_call_id)
            if not name:
                raise InvalidInputError(
                    f"{where}.name", "a tool result needs the name of its call (or the call)"
                )
            response = {"name": name, "response": _tool_response(m.content)}
            if m.tool_call_id:
                response["id"] = m.tool_call_id
            add("user", [{"function_response": response}])
        elif isinstance(m, FunctionMessage):
            add("user", [{"function_response": {"name": m.name, "response": {"result": m.text}}}])
        else:  # check_messages has already refused other types and roles
            raise InvalidInputError(where, f"unsupported message {type(m).__name__}")
    instruction = {"parts": [{"text": "\n\n".join(system)}]} if system else None
    return instruction, contents


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI-format tools (what ``bind_tools`` binds) as Gemini function declarations."""
    if not tools:
        return None
    declarations = []
    for tool in tools:
        fn = tool.get("function") if tool.get("type") == "function" else None
        if fn is None:
            raise InvalidInputError("tools", f"Gemini takes function tools; got {tool!r}")
        decl: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if params and (params.get("properties") or params.get("type") not in (None, "object")):
            decl["parameters_json_schema"] = params
        declarations.append(decl)
    return [{"function_declarations": declarations}]


def _tool_config(choice: Any, tools: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if choice is None or not tools:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return {"function_calling_config": {"mode": "ANY", "allowed_function_names": [name]}}
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY", "any": "ANY"}
    if choice not in modes:
        raise InvalidInputError(
            "tool_choice", f"must be auto, none, required or a name: {choice!r}"
        )
    return {"function_calling_config": {"mode": modes[choice]}}


def _safety(settings: Any) -> list[dict[str, str]] | None:
    if not settings:
        return None
    if isinstance(settings, dict):
        return [{"category": str(c), "threshold": str(t)} for c, t in settings.items()]
    return [dict(s) for s in settings]


# ------------------------------------------------------------------ answers in


def usage_of(raw: Any) -> UsageMetadata | None:
    """Gemini ``usageMetadata`` as LangChain's ``UsageMetadata`` (thoughts count as output)."""
    u = getattr(raw, "usage_metadata", None)
    if u is None or u.prompt_token_count is None:
        return None
    inp = int(u.prompt_token_count or 0) + int(u.tool_use_prompt_token_count or 0)
    thoughts = int(u.thoughts_token_count or 0)
    out = int(u.candidates_token_count or 0) + thoughts
    usage = UsageMetadata(
        input_tokens=inp, output_tokens=out, total_tokens=int(u.total_token_count or inp + out)
    )
    if u.cached_content_token_count:
        usage["input_token_details"] = {"cache_read": int(u.cached_content_token_count)}
    if thoughts:
        usage["output_token_details"] = {"reasoning": thoughts}
    return usage


def _ratings(ratings: Any) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json", exclude_none=True) for r in ratings or []]


def _blocked(raw: Any, finish: str | None, ratings: list[dict[str, Any]]) -> ContentFilteredError:
    feedback = getattr(raw, "prompt_feedback", None)
    results: dict[str, Any] = {"finish_reason": finish, "safety_ratings": ratings}
    reason = None
    if feedback is not None:
        reason = _enum(feedback.block_reason)
        results["block_reason"] = reason
        results["prompt_safety_ratings"] = _ratings(feedback.safety_ratings)
        if feedback.block_reason_message:
            results["block_reason_message"] = feedback.block_reason_message
    why = f"the prompt was blocked ({reason})" if reason else f"the answer was blocked ({finish})"
    return ContentFilteredError(
        f"{why} by Gemini's safety filters and nothing usable came back",
        filter_results=results,
        backend=BACKEND,
    )


class _Answer:
    """What one response (or the chunks of a stream) carries, gathered part by part."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.thoughts: list[str] = []
        self.calls: list[ToolCall] = []
        self.signatures: dict[str, str] = {}
        self.finish: str | None = None
        self.ratings: list[dict[str, Any]] = []
        self.usage: UsageMetadata | None = None
        self.version: str | None = None
        self.response_id: str | None = None
        self.last: Any = None

    def feed(self, raw: Any) -> tuple[str, str, list[ToolCall]]:
        """One response in; the (text, thoughts, calls) it adds."""
        self.last = raw
        self.version = raw.model_version or self.version
        self.response_id = raw.response_id or self.response_id
        usage = usage_of(raw)
        if usage is not None:
            self.usage = usage
        text, thoughts = "", ""
        calls: list[ToolCall] = []
        candidates = raw.candidates or []
        if not candidates:
            feedback = raw.prompt_feedback
            if feedback is not None and feedback.block_reason:
                raise _blocked(raw, None, [])
            return text, thoughts, calls
        cand = candidates[0]
        if cand.safety_ratings:
            self.ratings = _ratings(cand.safety_ratings)
        if cand.finish_reason is not None:
            self.finish = _enum(cand.finish_reason)
        for part in (cand.content.parts if cand.content and cand.content.parts else []) or []:
            if part.function_call is not None:
                fc = part.function_call
                call_id = fc.id or f"call_{uuid.uuid4().hex[:24]}"
                call = ToolCall(name=fc.name or "", args=dict(fc.args or {}), id=call_id)
                calls.append(call)
                if part.thought_signature:
                    self.signatures[call_id] = base64.b64encode(part.thought_signature).decode()
            elif part.text:
                if part.thought:
                    thoughts += part.text
                else:
                    text += part.text
        self.text.append(text)
        self.thoughts.append(thoughts)
        self.calls.extend(calls)
        return text, thoughts, calls

    def check(self) -> None:
        """Raise when the answer was blocked with nothing usable, or never finished."""
        usable = "".join(self.text).strip() or self.calls
        if self.finish in BLOCKED_FINISHES and not usable:
            raise _blocked(self.last, self.finish, self.ratings)
        if self.finish is None:
            raise IncompleteResponseError(
                "the response has no finishReason",
                partial_text="".join(self.text),
                backend=BACKEND,
            )

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"finish_reason": self.finish, "model_name": self.model}
        if self.version:
            meta["model_version"] = self.version
        if self.ratings:
            meta["safety_ratings"] = self.ratings
        return meta

    def extra(self, thoughts: str) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if thoughts:
            extra["reasoning_content"] = thoughts
        return extra


# ------------------------------------------------------------------ the model


class ChatGemini(TopK, Seed, ToolsAndStructuredOutputMixin):
    """Chat with Google's Gemini models (the Gemini API, through google-genai).

    Example:
        ```python
        from langchain_multillm import ChatGemini

        llm = ChatGemini(model="gemini-2.5-flash", max_tokens=256)  # GEMINI_API_KEY from env
        msg = llm.invoke([("system", "Be brief."), ("human", "What is the capital of France?")])
        msg.usage_metadata, msg.response_metadata["finish_reason"]
        llm.get_limits()      # models.get: inputTokenLimit / outputTokenLimit, asked once
        llm.check_fit("...")  # the cheap bound first; countTokens only when it cannot decide
        llm.health()          # models.get: free
        ```
    """

    model_name: str = Field(
        default_factory=from_env("GEMINI_MODEL", default=DEFAULT_MODEL), alias="model"
    )
    """Gemini model, e.g. ``gemini-2.5-flash`` (env ``GEMINI_MODEL``)."""

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env(["GEMINI_API_KEY", "GOOGLE_API_KEY"], default=None),
        alias="google_api_key",
    )
    """Gemini API key (env ``GEMINI_API_KEY``, then ``GOOGLE_API_KEY``). Required."""

    base_url: str | None = Field(default_factory=from_env("GEMINI_BASE_URL", default=None))
    """API root (env ``GEMINI_BASE_URL``; default google-genai's, the Gemini API)."""

    api_version: str = API_VERSION
    """REST API version in the path (``v1beta``)."""

    timeout: float | None = Field(default=None, gt=0, alias="request_timeout")
    """Seconds a request may take (None: the SDK's default)."""

    default_headers: dict[str, str] | None = None
    """Headers sent with every request."""

    http_client: Any = Field(default=None, exclude=True)
    """An ``httpx.Client`` for the SDK (proxies, tests), passed through."""

    http_async_client: Any = Field(default=None, exclude=True)
    """An ``httpx.AsyncClient`` for the SDK, passed through."""

    top_k: int | None = Field(default=None, gt=0)
    """Sample from the k most likely tokens (Gemini takes a positive k)."""

    thinking_budget: int | None = Field(default=None, ge=-1)
    """Tokens the model may think (``0`` off, ``-1`` dynamic; None: the model's default)."""

    include_thoughts: bool | None = None
    """Whether thought summaries come back (in ``additional_kwargs["reasoning_content"]``)."""

    safety_settings: dict[str, str] | list[dict[str, str]] | None = None
    """Safety thresholds: ``{"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH", ...}``."""

    response_mime_type: str | None = None
    """Response MIME type (``text/plain``, ``application/json``)."""

    default_structured_method: StructuredMethod = "json_schema"
    """Gemini constrains decoding to a JSON schema (``responseJsonSchema``)."""

    _backend: ClassVar[str] = BACKEND
    _call_params = CALL_PARAMS
    _local_call_params = frozenset({"parallel_tool_calls"})  # Gemini has no such switch
    _param_fields = ("thinking_budget", "include_thoughts", "safety_settings", "response_mime_type")
    _client_obj: Any = PrivateAttr(default=None)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, v: str | None) -> str | None:
        return check_url("base_url", v) if v else None

    @model_validator(mode="after")
    def _check_key(self) -> ChatGemini:
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise InvalidInputError(
                "api_key",
                "is required: pass api_key=... or set GEMINI_API_KEY (or GOOGLE_API_KEY)",
            )
        return self

    @property
    def _llm_type(self) -> str:
        return "gemini-chat"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "GEMINI_API_KEY"}

    # ---- the SDK client ----
    @property
    def _client(self) -> Any:
        if self._client_obj is None:
            genai = _genai()
            types = genai.types
            options: dict[str, Any] = {
                "api_version": self.api_version,
                "retry_options": types.HttpRetryOptions(attempts=1),
            }
            if self.base_url:
                options["base_url"] = self.base_url
            if self.timeout:
                options["timeout"] = int(self.timeout * 1000)
            if self.default_headers:
                options["headers"] = dict(self.default_headers)
            if self.http_client is not None:
                options["httpx_client"] = self.http_client
            if self.http_async_client is not None:
                options["httpx_async_client"] = self.http_async_client
            assert self.api_key is not None
            self._client_obj = genai.Client(
                api_key=self.api_key.get_secret_value(),
                http_options=types.HttpOptions(**options),
            )
        return self._client_obj

    # ---- requests ----
    def _check_offline(self, req: ChatRequest) -> None:
        """Gemini's own checks of the values (before the fit check asks anything)."""
        self._check_params(req.params)

    def _check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The per-call parameters Gemini takes (their keys checked in ``_start``), their values
        checked; local keys left out."""
        p = self._wire_params(params)
        for key, low in (("top_k", 1), ("thinking_budget", -1)):
            value = p.get(key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < low
            ):
                raise InvalidInputError(key, f"must be an integer >= {low}; got {value!r}")
        return p

    def _model(self, req: ChatRequest | None = None) -> str:
        return str((req.params.get("model") if req else None) or self.model_name)

    def _config(self, req: ChatRequest) -> tuple[list[Any], Any]:
        """(contents, GenerateContentConfig) of a request."""
        types = _genai().types
        p = self._check_params(req.params)
        system, contents = to_gemini(req.messages)
        cfg: dict[str, Any] = {"automatic_function_calling": {"disable": True}}
        if system:
            cfg["system_instruction"] = system
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("max_tokens", "max_output_tokens"),
            ("stop", "stop_sequences"),
            ("seed", "seed"),
            ("response_mime_type", "response_mime_type"),
        ):
            if p.get(ours) is not None:
                cfg[theirs] = p[ours]
        thinking = {
            k: p[k] for k in ("thinking_budget", "include_thoughts") if p.get(k) is not None
        }
        if thinking:
            cfg["thinking_config"] = thinking
        safety = _safety(p.get("safety_settings"))
        if safety:
            cfg["safety_settings"] = safety
        tools = _tools(req.tools)
        if tools:
            cfg["tools"] = tools
            tool_config = _tool_config(p.get("tool_choice"), req.tools)
            if tool_config:
                cfg["tool_config"] = tool_config
        fmt = p.get("response_format")
        if isinstance(fmt, dict):
            if fmt.get("type") in ("json_object", "json_schema"):
                cfg["response_mime_type"] = "application/json"
            if fmt.get("type") == "json_schema":
                cfg["response_json_schema"] = (fmt.get("json_schema") or {}).get("schema")
        try:
            config = types.GenerateContentConfig(**cfg)
            parsed = [types.Content.model_validate(c) for c in contents]
        except ValueError as exc:
            raise InvalidInputError("request", f"Gemini cannot take it: {exc}") from None
        return parsed, config

    def _result(self, raw: Any, model: str) -> ChatResult:
        answer = _Answer(model)
        _, thoughts, _ = answer.feed(raw)
        answer.check()
        extra = answer.extra(thoughts)
        if answer.signatures:
            extra["thought_signatures"] = answer.signatures
        message = AIMessage(
            content="".join(answer.text),
            tool_calls=answer.calls,
            additional_kwargs=extra,
            usage_metadata=answer.usage,
            response_metadata=answer.metadata(),
            id=answer.response_id,
        )
        info = {"finish_reason": answer.finish}
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    def _chat(self, req: ChatRequest) -> ChatResult:
        contents, config = self._config(req)
        model = self._model(req)
        with mapped(from_genai_error, BACKEND, self._secrets()):
            raw = self._client.models.generate_content(
                model=model, contents=contents, config=config
            )
        return self._result(raw, model)

    async def _achat(self, req: ChatRequest) -> ChatResult:
        contents, config = self._config(req)
        model = self._model(req)
        with mapped(from_genai_error, BACKEND, self._secrets()):
            raw = await self._client.aio.models.generate_content(
                model=model, contents=contents, config=config
            )
        return self._result(raw, model)

    def _chunk(self, answer: _Answer, raw: Any) -> ChatGenerationChunk | None:
        text, thoughts, calls = answer.feed(raw)
        if not text and not thoughts and not calls:
            return None
        start = len(answer.calls) - len(calls)
        tool_chunks = [
            {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": start + i}
            for i, c in enumerate(calls)
        ]
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=text,
                tool_call_chunks=tool_chunks,  # type: ignore[arg-type]
                additional_kwargs=answer.extra(thoughts),
                id=answer.response_id,
            )
        )

    def _last(self, answer: _Answer) -> ChatGenerationChunk:
        answer.check()
        extra: dict[str, Any] = {}
        if answer.signatures:
            extra["thought_signatures"] = answer.signatures
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                additional_kwargs=extra,
                usage_metadata=answer.usage if self.stream_usage else None,
                response_metadata=answer.metadata(),
                id=answer.response_id,
                chunk_position="last",
            ),
            generation_info={"finish_reason": answer.finish},
        )

    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        contents, config = self._config(req)
        model = self._model(req)
        answer = _Answer(model)
        with mapped(from_genai_error, BACKEND, self._secrets()):
            for raw in self._client.models.generate_content_stream(
                model=model, contents=contents, config=config
            ):
                chunk = self._chunk(answer, raw)
                if chunk is not None:
                    yield chunk
        yield self._last(answer)

    async def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        contents, config = self._config(req)
        model = self._model(req)
        answer = _Answer(model)
        with mapped(from_genai_error, BACKEND, self._secrets()):
            stream = await self._client.aio.models.generate_content_stream(
                model=model, contents=contents, config=config
            )
            async for raw in stream:
                chunk = self._chunk(answer, raw)
                if chunk is not None:
                    yield chunk
        yield self._last(answer)

    # ---- limits and counts ----
    def _limits_of(self, info: Any) -> Limits:
        return Limits(
            max_input_tokens=info.input_token_limit or None,
            max_output_tokens=info.output_token_limit or None,
        )

    def _get_model(self, timeout: float | None = None) -> Any:
        config = {"http_options": {"timeout": int(timeout * 1000)}} if timeout else None
        with mapped(from_genai_error, BACKEND, self._secrets()):
            return self._client.models.get(model=self.model_name, config=config)

    async def _aget_model(self, timeout: float | None = None) -> Any:
        config = {"http_options": {"timeout": int(timeout * 1000)}} if timeout else None
        with mapped(from_genai_error, BACKEND, self._secrets()):
            return await self._client.aio.models.get(model=self.model_name, config=config)

    def _fetch_limits(self) -> Limits:
        return self._limits_of(self._get_model())

    async def _afetch_limits(self) -> Limits:
        return self._limits_of(await self._aget_model())

    def _count_args(self, prompt: Prompt) -> dict[str, Any] | None:
        """Arguments of ``models.count_tokens`` for a prompt; None where it cannot count."""
        types = _genai().types
        if prompt.text is not None:
            return {"model": self.model_name, "contents": [prompt.text]}
        system, contents = to_gemini(convert_to_messages(prompt.messages or []))
        tools = _tools(prompt.tools)
        kwargs: dict[str, Any] = {
            "model": self.model_name,
            "contents": [types.Content.model_validate(c) for c in contents],
        }
        if system or tools:
            # The Gemini API counts a system instruction and tools only inside a
            # generateContentRequest (and then ignores ``contents``).
            request: dict[str, Any] = {
                "model": f"models/{self.model_name}",
                "contents": [
                    c.model_dump(mode="json", by_alias=True, exclude_none=True)
                    for c in kwargs["contents"]
                ],
            }
            if system:
                request["systemInstruction"] = types.Content.model_validate(system).model_dump(
                    mode="json", by_alias=True, exclude_none=True
                )
            if tools:
                request["tools"] = [
                    types.Tool.model_validate(t).model_dump(
                        mode="json", by_alias=True, exclude_none=True
                    )
                    for t in tools
                ]
            kwargs["config"] = {"http_options": {"extra_body": {"generateContentRequest": request}}}
        return kwargs

    def _count_exact(self, prompt: Prompt) -> int | None:
        kwargs = self._count_args(prompt)
        if kwargs is None:
            return None
        with mapped(from_genai_error, BACKEND, self._secrets()):
            return int(self._client.models.count_tokens(**kwargs).total_tokens)

    async def _acount_exact(self, prompt: Prompt) -> int | None:
        kwargs = self._count_args(prompt)
        if kwargs is None:
            return None
        with mapped(from_genai_error, BACKEND, self._secrets()):
            return int((await self._client.aio.models.count_tokens(**kwargs)).total_tokens)

    def _count_bound(self, prompt: Prompt) -> int | None:
        if prompt.messages is not None:
            prompt = Prompt(messages=convert_to_messages(prompt.messages), tools=prompt.tools)
        return chat_bound(prompt, None)

    # ---- health: models.get ----
    def _judge(self, started: float, info: Any) -> HealthReport:
        methods = list(info.supported_actions or [])
        ready = not methods or "generateContent" in methods
        limits = self._limits_of(info)
        return HealthReport(
            alive=True,
            ready=ready,
            latency_s=time.perf_counter() - started,
            model=self.model_name,
            context_window=limits.max_input_tokens,
            detail=f"serving {self.model_name} (input limit {limits.max_input_tokens}, "
            f"output limit {limits.max_output_tokens})"
            if ready
            else f"{self.model_name} does not offer generateContent (only {methods})",
        )

    def _refused(self, started: float, exc: MultiLLMError) -> HealthReport:
        """``models.get`` failed: a refusal (the key, no such model, a rate limit) is alive, not
        ready; no answer, or a 5xx (503 overloaded), is down."""
        if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
            return not_ready(started, self.model_name, f"the API refused the key: {describe(exc)}")
        if isinstance(exc, ModelNotFoundError):
            detail = f"{self.model_name!r} is not served: {describe(exc)}"
            return not_ready(started, self.model_name, detail)
        return probe_failed(started, self.model_name, "models.get failed", exc)

    def _health(self) -> HealthReport:
        return run_steps(self._health_steps())

    async def _ahealth(self) -> HealthReport:
        return await arun_steps(self._health_steps())

    def _health_steps(self) -> HealthSteps:
        started = time.perf_counter()
        timeout = self.health_timeout
        try:
            info = yield Call(
                lambda: self._get_model(timeout=timeout),
                lambda: self._aget_model(timeout=timeout),
            )
        except MultiLLMError as exc:
            return self._refused(started, exc)
        return self._judge(started, info)

    def close(self) -> None:
        """Close the SDK client this model opened (injected HTTP clients are left alone)."""
        if self._client_obj is not None and self.http_client is None:
            self._client_obj.close()
        self._client_obj = None

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        if self._client_obj is not None and self.http_async_client is None:
            await self._client_obj.aio.aclose()
        self.close()
