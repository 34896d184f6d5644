"""The OpenAI wire format on the serving side: requests in, answers and stream chunks out.

Requests are checked by the pydantic models below (they are also the OpenAPI schema of the
routes); messages become LangChain messages through ``langchain_core``'s own converter, which
takes OpenAI message dicts, and answers go back out through :mod:`langchain_multillm._openai`'s
``to_openai_messages`` (the converter the clients use), so the package converts each way once.

Request fields beyond the ones named here are passed to the model as call parameters: the
model takes them or refuses them by name (a 400 naming the field).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages
from langchain_core.messages.ai import UsageMetadata
from pydantic import BaseModel, ConfigDict, Field

from langchain_multillm._openai import to_openai_messages
from langchain_multillm.errors import InvalidInputError

__all__ = [
    "ChatCall",
    "ChatCompletionRequest",
    "ChunkWriter",
    "CompletionCall",
    "CompletionRequest",
    "TokenizeRequest",
    "chat_completion_body",
    "text_completion_body",
    "to_chat_call",
    "to_completion_call",
    "usage_json",
]

Policy = Literal["raise", "clamp", "ignore"]

_OPEN = ConfigDict(extra="allow")
_CLOSED = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ request models


class FunctionCall(BaseModel):
    """A function call an assistant made: its name and JSON-encoded arguments."""

    model_config = _OPEN
    name: str
    arguments: str


class ToolCall(BaseModel):
    """A tool call in an assistant message."""

    model_config = _OPEN
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(BaseModel):
    """A piece of text."""

    model_config = _CLOSED
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    """Where an image is: a URL or a ``data:`` URL."""

    model_config = _CLOSED
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    """An image (models without vision refuse it)."""

    model_config = _CLOSED
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(BaseModel):
    """Audio, base64-encoded."""

    model_config = _CLOSED
    data: str
    format: str


class AudioPart(BaseModel):
    """Audio (models without audio input refuse it)."""

    model_config = _CLOSED
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(BaseModel):
    """A file (models without file input refuse it)."""

    model_config = _CLOSED
    type: Literal["file"]
    file: dict[str, Any]


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
Text = str | list[TextPart]


class _Message(BaseModel):
    model_config = _OPEN
    name: str | None = None


class SystemMessage(_Message):
    """Instructions for the model."""

    role: Literal["system"]
    content: Text


class DeveloperMessage(_Message):
    """Instructions for the model (OpenAI's newer name for system)."""

    role: Literal["developer"]
    content: Text


class UserMessage(_Message):
    """The user's turn: text, or content parts."""

    role: Literal["user"]
    content: str | list[UserPart]


class AssistantMessage(_Message):
    """An earlier answer of the model: text, tool calls, or both."""

    role: Literal["assistant"]
    content: Text | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(_Message):
    """A tool's result, for the call it answers."""

    role: Literal["tool"]
    content: Text
    tool_call_id: str = Field(min_length=1)


class FunctionMessage(_Message):
    """A function's result (OpenAI's older tool protocol)."""

    role: Literal["function"]
    name: str = Field(min_length=1)
    content: str | None = None


MESSAGE_CLASSES: tuple[type[BaseModel], ...] = (
    SystemMessage,
    DeveloperMessage,
    UserMessage,
    AssistantMessage,
    ToolMessage,
    FunctionMessage,
)
ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
ChatMessage = Annotated[
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage,
    Field(discriminator="role"),
]


class FunctionDefinition(BaseModel):
    """A function the model may call."""

    model_config = _OPEN
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """A tool, in OpenAI's format."""

    model_config = _OPEN
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    """The name of the function a named tool choice forces."""

    name: str


class NamedToolChoice(BaseModel):
    """Force one tool by name."""

    type: Literal["function"] = "function"
    function: NamedFunction


class TextFormat(BaseModel):
    """Plain text answers."""

    type: Literal["text"]


class JSONObjectFormat(BaseModel):
    """Any JSON object."""

    type: Literal["json_object"]


class JSONSchema(BaseModel):
    """A JSON schema the answer follows."""

    model_config = _OPEN
    name: str = Field(min_length=1)
    description: str | None = None
    schema_: dict[str, Any] = Field(
        alias="schema", description="Required here: without it there is nothing to follow."
    )
    strict: bool | None = None


class JSONSchemaFormat(BaseModel):
    """Answers shaped by a JSON schema."""

    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormat = Annotated[
    TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")
]


class StreamOptions(BaseModel):
    """Stream settings; ``include_usage`` ends the stream with a usage chunk."""

    model_config = _OPEN
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both routes share."""

    model_config = _OPEN

    model: str = Field(min_length=1, description="A model name of GET /v1/models.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate.")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Alias of max_tokens (the replaced microservice's name)."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, description="Only 1 is served.")
    top_k: int | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(default=None, description="An end-user id; not passed on.")
    data: dict[str, Any] | None = Field(
        default=None,
        description="Any JSON object, returned untouched as the response's `data` (in a stream: "
        "one line `json: {...}` after `data: [DONE]`).",
    )
    context_overflow: Policy | None = Field(
        default=None,
        description="Over the window: raise (400 context_length_exceeded; the default), clamp "
        "max_tokens to the room left, or ignore (send it anyway).",
    )


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = Field(default=None, description="Not served: only false.")
    top_logprobs: int | None = None


NonEmpty = Annotated[str, Field(min_length=1)]


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: NonEmpty | list[NonEmpty] = Field(
        description="The text to complete (a list holds one prompt: one per request)."
    )
    echo: bool | None = None
    suffix: str | None = Field(default=None, description="Not served.")
    logprobs: int | None = Field(default=None, description="Not served.")
    best_of: int | None = Field(default=None, description="Only 1 is served.")


class TokenizeRequest(BaseModel):
    """``POST /tokenize`` as vLLM takes it: a prompt, or messages through the chat template."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Default: the first model served.")
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True


# ------------------------------------------------------------------ requests -> calls

# Keys LangChain's invoke takes itself (a request field of that name would clash with them), and
# fields of the wire the gateway answers itself.
_RESERVED = frozenset(
    {"callbacks", "tags", "metadata", "run_name", "run_id", "config", "input", "prompts"}
)
_HANDLED = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_new_tokens",
        "max_completion_tokens",
        "stop",
        "stream",
        "stream_options",
        "n",
        "user",
        "data",
        "context_overflow",
        "tools",
        "logprobs",
        "top_logprobs",
        "suffix",
        "best_of",
    }
)


@dataclass
class _Call:
    """What both routes hand to a model."""

    kwargs: dict[str, Any]
    max_tokens: int | None
    stop: list[str] | None
    stream: bool
    include_usage: bool
    policy: Policy | None
    data: dict[str, Any] | None


@dataclass
class ChatCall(_Call):
    """A chat request, as a model call."""

    messages: list[BaseMessage] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


@dataclass
class CompletionCall(_Call):
    """A completion request, as a model call."""

    prompt: str = ""


def _max_tokens(req: _Sampling) -> int | None:
    names = ("max_completion_tokens", "max_tokens", "max_new_tokens")
    given = {n: getattr(req, n, None) for n in names}
    given = {n: v for n, v in given.items() if v is not None}
    if len(set(given.values())) > 1:
        raise InvalidInputError(
            ", ".join(given), f"give one of {', '.join(names)} (they are aliases); got {given}"
        )
    return next(iter(given.values()), None)


def _call_kwargs(req: _Sampling) -> dict[str, Any]:
    """Fields passed to the model as call parameters: every field set (None left out) but
    the ones the gateway answers itself; names LangChain's invoke keeps for itself are refused."""
    out: dict[str, Any] = {}
    for name in type(req).model_fields:
        value = getattr(req, name)
        if value is not None and name not in _HANDLED:
            out[name] = (
                value.model_dump(by_alias=True, exclude_none=True)
                if isinstance(value, BaseModel)
                else value
            )
    for name, value in (req.model_extra or {}).items():
        if name in _RESERVED or name.startswith("ls_"):
            raise InvalidInputError(name, "is not a request field of this API")
        if value is not None:
            out[name] = value
    return out


def _common(req: _Sampling) -> dict[str, Any]:
    if req.n is not None and req.n != 1:
        raise InvalidInputError("n", f"only n=1 is served; got {req.n}")
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return {
        "kwargs": _call_kwargs(req),
        "max_tokens": _max_tokens(req),
        "stop": stop,
        "stream": req.stream,
        "include_usage": include_usage,
        "policy": req.context_overflow,
        "data": req.data,
    }


def to_messages(messages: list[ChatMessage]) -> list[BaseMessage]:
    """OpenAI messages as LangChain messages (langchain_core's converter), one at a time so a
    message it cannot read is named by its index."""
    out: list[BaseMessage] = []
    for i, m in enumerate(messages):
        raw = m.model_dump(exclude_none=True)
        raw.setdefault("content", "")
        try:
            out.extend(convert_to_messages([raw]))
        except Exception as exc:
            text = " ".join(str(exc).split("For troubleshooting")[0].split())
            raise InvalidInputError(f"messages[{i}]", text or type(exc).__name__) from None
    return out


def to_chat_call(req: ChatCompletionRequest) -> ChatCall:
    """Check a chat request and turn it into a model call (:class:`InvalidInputError` names
    the field)."""
    if req.logprobs:
        raise InvalidInputError("logprobs", "log probabilities are not served; only false")
    common = _common(req)
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    if tools:
        common["kwargs"]["tools"] = tools
    elif req.tool_choice == "none":
        common["kwargs"].pop("tool_choice")  # no tools, none chosen: nothing to say
    elif req.tool_choice is not None:
        raise InvalidInputError("tool_choice", "needs tools")
    return ChatCall(**common, messages=to_messages(req.messages), tools=tools)


def to_completion_call(req: CompletionRequest) -> CompletionCall:
    """Check a completion request and turn it into a model call."""
    if req.logprobs is not None:
        raise InvalidInputError("logprobs", "log probabilities are not served")
    if req.suffix:
        raise InvalidInputError("suffix", "insertion (suffix) is not served")
    if req.best_of not in (None, 1):
        raise InvalidInputError("best_of", f"only best_of=1 is served; got {req.best_of}")
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidInputError("prompt", f"one prompt per request; got {len(prompt)}")
        prompt = prompt[0]
    if not prompt:
        raise InvalidInputError("prompt", "must not be empty")
    common = _common(req)
    if req.echo is False:
        common["kwargs"].pop("echo")  # the default: nothing to ask of the model
    return CompletionCall(**common, prompt=prompt)


# ------------------------------------------------------------------ answers -> JSON


def new_id(prefix: str) -> str:
    """A response id (``chatcmpl-...``, ``cmpl-...``)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def usage_json(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """LangChain's ``UsageMetadata`` as OpenAI's ``usage``."""
    if not usage:
        return None
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }
    cached = (usage.get("input_token_details") or {}).get("cache_read")
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    reasoning = (usage.get("output_token_details") or {}).get("reasoning")
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": int(reasoning)}
    return out


def content_text(content: Any) -> str:
    """The text of a message content (a string, or its text parts joined)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def assistant_json(message: AIMessage) -> dict[str, Any]:
    """An answer as OpenAI's assistant message (tool calls through ``to_openai_messages``)."""
    out = to_openai_messages([message])[0]
    text = content_text(message.content)
    out["content"] = text if text or not out.get("tool_calls") else None
    reasoning = message.additional_kwargs.get("reasoning_content")
    if reasoning:
        out["reasoning_content"] = reasoning
    return out


def chat_completion_body(
    message: AIMessage, *, model: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``chat.completion`` object for an answer."""
    body: dict[str, Any] = {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": assistant_json(message),
                "finish_reason": message.response_metadata.get("finish_reason"),
                "logprobs": None,
            }
        ],
    }
    usage = usage_json(message.usage_metadata)
    if usage is not None:
        body["usage"] = usage
    if data is not None:
        body["data"] = data
    return body


def text_completion_body(
    text: str,
    info: Mapping[str, Any] | None,
    *,
    model: str,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``text_completion`` object (``info``: the generation's info: finish reason, usage)."""
    info = info or {}
    body: dict[str, Any] = {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "finish_reason": info.get("finish_reason"),
                "logprobs": None,
            }
        ],
    }
    usage = info.get("usage")
    if usage:
        body["usage"] = dict(usage)
    if data is not None:
        body["data"] = data
    return body


class ChunkWriter:
    """Turns LangChain stream chunks into OpenAI ``chat.completion.chunk`` objects.

    The first chunk out carries ``role``; content, tool-call pieces and reasoning go out as they
    come; the finish reason goes out as the model gave it; the usage (the last chunk's) is kept
    for the closing usage chunk. Chunks with nothing to say are skipped.
    """

    def __init__(self, model: str) -> None:
        self.id = new_id("chatcmpl")
        self.created = int(time.time())
        self.model = model
        self.started = False
        self.finish_reason: str | None = None
        self.usage: UsageMetadata | None = None
        self.output_chars = 0

    def _chunk(self, choice: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice] if choice is not None else [],
        }

    def feed(self, chunk: AIMessageChunk) -> dict[str, Any] | None:
        """One LangChain chunk in; an OpenAI chunk out, or None when it says nothing."""
        if chunk.usage_metadata:
            self.usage = chunk.usage_metadata
        delta: dict[str, Any] = {}
        if not self.started:
            delta["role"] = "assistant"
        text = content_text(chunk.content)
        if text:
            delta["content"] = text
            self.output_chars += len(text)
        calls = []
        for i, tc in enumerate(chunk.tool_call_chunks):
            call: dict[str, Any] = {"index": tc.get("index") if tc.get("index") is not None else i}
            if tc.get("id"):
                call["id"] = tc["id"]
                call["type"] = "function"
            fn: dict[str, Any] = {}
            if tc.get("name"):
                fn["name"] = tc["name"]
            fn["arguments"] = tc.get("args") or ""
            call["function"] = fn
            calls.append(call)
        if calls:
            delta["tool_calls"] = calls
        reasoning = chunk.additional_kwargs.get("reasoning_content")
        if reasoning:
            delta["reasoning_content"] = reasoning
        finish = chunk.response_metadata.get("finish_reason")
        if finish:
            self.finish_reason = finish
        if not delta and not finish:
            return None
        if "role" in delta and "content" not in delta and "tool_calls" not in delta:
            delta["content"] = ""
        self.started = True
        return self._chunk({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None})

    def whole(self, message: AIMessage) -> list[dict[str, Any]]:
        """A whole answer as the chunks of a stream: everything at once, then the finish."""
        delta = assistant_json(message)
        if delta.get("content") is None:
            delta["content"] = ""
        for i, call in enumerate(delta.get("tool_calls") or []):
            call["index"] = i
        self.started = True
        self.usage = message.usage_metadata
        self.finish_reason = message.response_metadata.get("finish_reason")
        return [
            self._chunk({"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}),
            self._chunk(
                {"index": 0, "delta": {}, "finish_reason": self.finish_reason, "logprobs": None}
            ),
        ]

    def usage_chunk(self) -> dict[str, Any] | None:
        """The closing usage chunk (``choices: []``), where the model reported usage."""
        usage = usage_json(self.usage)
        if usage is None:
            return None
        out = self._chunk(None)
        out["usage"] = usage
        return out


class TextChunkWriter:
    """The ``text_completion`` twin of :class:`ChunkWriter`."""

    def __init__(self, model: str) -> None:
        self.id = new_id("cmpl")
        self.created = int(time.time())
        self.model = model

    def chunk(self, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        """One streamed piece of text (with the finish reason on the last)."""
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
            ],
        }

    def usage_chunk(self, usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The closing usage chunk, where the model reported usage."""
        if not usage:
            return None
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": dict(usage),
        }
