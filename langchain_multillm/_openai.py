"""The OpenAI wire format, written once: payloads out, results and stream chunks in.

Shared by every backend that speaks it (the vLLM server, llama.cpp's in-process API, which
returns the same dicts, and later Azure and DeepSeek). Bodies are read as plain dicts, not
SDK models: that is both faster and the same code for every backend.
"""

from __future__ import annotations

import abc
import json
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from operator import itemgetter
from typing import Any, ClassVar, Literal, final

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    InvalidToolCall,
    ToolCall,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
    make_invalid_tool_call,
    parse_tool_call,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, GenerationChunk
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from langchain_multillm._base import ChatRequest, MultiLLMChatModel, wire_params
from langchain_multillm._http import HTTPConnection
from langchain_multillm._structured import stop_if_cut
from langchain_multillm.errors import (
    IncompleteResponseError,
    InvalidInputError,
    error_message_from_body,
    from_status,
    malformed_body,
)

__all__ = [
    "ChatStream",
    "OpenAIChatOverHTTP",
    "ToolsAndStructuredOutput",
    "ToolsAndStructuredOutputMixin",
    "aiter_sse",
    "chat_payload",
    "chat_result",
    "completion_payload",
    "iter_sse",
    "usage_metadata",
]


# ------------------------------------------------------------------ requests


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI chat messages (reasoning text is never sent back, and a tool
    message carries no name: the wire format has none, as langchain-openai also strips it)."""
    out = convert_to_openai_messages(list(messages))
    for m in out:
        m.pop("reasoning_content", None)
        if m.get("role") == "tool":  # the wire format's tool message has no name
            m.pop("name", None)
        elif m.get("role") == "assistant" and isinstance(m.get("content"), list):
            m["content"] = _assistant_content(m["content"], has_calls=bool(m.get("tool_calls")))
    return out


# Content blocks of an AIMessage (output_version "v1") that the wire format carries elsewhere
# (tool calls in ``tool_calls``) or never sends back (reasoning).
_NOT_SENT_BLOCKS = {"tool_call", "tool_call_chunk", "invalid_tool_call", "reasoning"}


def _assistant_content(blocks: list[Any], *, has_calls: bool) -> str | list[Any] | None:
    """An assistant message's content for the wire: text parts joined, the rest kept."""
    kept = [b for b in blocks if not (isinstance(b, dict) and b.get("type") in _NOT_SENT_BLOCKS)]
    if all(isinstance(b, dict) and b.get("type") == "text" for b in kept):
        text = "".join(str(b.get("text", "")) for b in kept)
        return text if text or not has_calls else None
    return kept


def _params(params: dict[str, Any]) -> dict[str, Any]:
    """The keys of a call that go into the body; a call's ``extra_body`` (a dict, as the
    openai SDK takes it) is merged in last, its entries unchecked."""
    out = wire_params(params, also=("extra_body",))
    extra = params.get("extra_body")
    if extra is not None:  # a dict: checked with the call's keys (_base.check_extra_body)
        out.update(extra)
    return out


def chat_payload(req: ChatRequest, model: str, *, stream_usage: bool) -> dict[str, Any]:
    """The body of ``POST /chat/completions`` for a request."""
    payload: dict[str, Any] = {"model": model, "messages": to_openai_messages(req.messages)}
    payload.update(_params(req.params))
    if req.tools:
        payload["tools"] = req.tools
    if req.stream:
        payload["stream"] = True
        if stream_usage:
            payload["stream_options"] = {"include_usage": True}
    return payload


def completion_payload(
    prompt: str, params: dict[str, Any], model: str, *, stream: bool, stream_usage: bool
) -> dict[str, Any]:
    """The body of ``POST /completions``."""
    payload: dict[str, Any] = {"model": model, "prompt": prompt, **_params(params)}
    if stream:
        payload["stream"] = True
        if stream_usage:
            payload["stream_options"] = {"include_usage": True}
    return payload


# ------------------------------------------------------------------ responses


def usage_metadata(usage: dict[str, Any] | None) -> UsageMetadata | None:
    """OpenAI ``usage`` as LangChain's ``UsageMetadata``."""
    if not usage:
        return None
    inp = int(usage.get("prompt_tokens") or 0)
    out = int(usage.get("completion_tokens") or 0)
    result = UsageMetadata(
        input_tokens=inp,
        output_tokens=out,
        total_tokens=int(usage.get("total_tokens") or inp + out),
    )
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:  # DeepSeek reports its context cache at the top level
        cached = usage.get("prompt_cache_hit_tokens")
    if cached is not None:
        result["input_token_details"] = {"cache_read": int(cached)}
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        result["output_token_details"] = {"reasoning": int(reasoning)}
    return result


def _tool_calls(raw: list[dict[str, Any]] | None) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for rc in raw or []:
        try:
            parsed = parse_tool_call(rc, return_id=True)
        except Exception as exc:  # a bad call is reported, not raised
            invalid.append(make_invalid_tool_call(rc, str(exc)))
            continue
        if parsed is None:
            continue
        if not isinstance(parsed.get("args"), dict):
            # Valid JSON that is not an object (a list, a string) is no call's arguments.
            invalid.append(make_invalid_tool_call(rc, "arguments are not a JSON object"))
            continue
        calls.append(parsed)  # type: ignore[arg-type]
    return calls, invalid


def chat_result(body: Any, *, backend: str, fallback_model: str) -> ChatResult:
    """A ``/chat/completions`` body as a ``ChatResult``; a body of another shape is an error."""
    try:
        choice = body["choices"][0]
        msg = choice["message"]
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError) as exc:
        raise malformed_body(
            f"no choices[0].message ({exc!r})", body=body, backend=backend
        ) from None
    if not finish:
        raise IncompleteResponseError(
            "the response has no finish_reason",
            partial_text=msg.get("content") or "",
            backend=backend,
        )
    calls, invalid = _tool_calls(msg.get("tool_calls"))
    extra: dict[str, Any] = {}
    if msg.get("reasoning_content"):
        extra["reasoning_content"] = msg["reasoning_content"]
    meta = {"finish_reason": finish, "model_name": body.get("model") or fallback_model}
    if body.get("system_fingerprint"):
        meta["system_fingerprint"] = body["system_fingerprint"]
    message = AIMessage(
        content=msg.get("content") or "",
        tool_calls=calls,
        invalid_tool_calls=invalid,
        additional_kwargs=extra,
        usage_metadata=usage_metadata(body.get("usage")),
        response_metadata=meta,
        id=body.get("id"),
    )
    gen_info = {"finish_reason": finish}
    if choice.get("logprobs"):
        gen_info["logprobs"] = choice["logprobs"]
    return ChatResult(generations=[ChatGeneration(message=message, generation_info=gen_info)])


def completion_text(body: Any, *, backend: str) -> tuple[str, str, dict[str, Any] | None]:
    """(text, finish_reason, usage) of a ``/completions`` body."""
    try:
        choice = body["choices"][0]
        text = choice["text"]
    except (KeyError, IndexError, TypeError) as exc:
        raise malformed_body(f"no choices[0].text ({exc!r})", body=body, backend=backend) from None
    finish = choice.get("finish_reason")
    if not finish:
        raise IncompleteResponseError(
            "the response has no finish_reason", partial_text=text, backend=backend
        )
    return text, finish, body.get("usage")


# ------------------------------------------------------------------ streams


_DONE: dict[str, Any] = {}


# TGI names an in-stream error by type; the status its routes answer for that type.
ERROR_TYPE_STATUS = {"validation": 422, "overloaded": 429, "generation": 424, "healthcheck": 503}
# TGI's chat stream gives every error ``http_status_code: 422``, its overload too (infer's
# ``Overloaded`` error, whose text is this): that one is a 429, retried like its routes' 429.
TGI_OVERLOADED = "Model is overloaded"


def _sse_event(line: str, *, backend: str) -> dict[str, Any] | None:
    """One SSE line: its JSON event, ``_DONE`` at ``[DONE]``, None for other lines."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    try:
        event = json.loads(data)
    except ValueError:
        raise malformed_body(f"stream event is not JSON: {data[:200]!r}", backend=backend) from None
    if isinstance(event, dict) and "error" in event:
        err = event["error"]
        code = (err.get("code") or err.get("http_status_code")) if isinstance(err, dict) else None
        if not isinstance(code, int):  # TGI: {"error": "...", "error_type": "overloaded"}
            code = ERROR_TYPE_STATUS.get(str(event.get("error_type")), 500)
        elif code == 422 and isinstance(err, dict) and err.get("message") == TGI_OVERLOADED:
            code = 429
        raise from_status(
            code,
            error_message_from_body(event, "error in stream"),
            body=event,
            backend=backend,
        )
    return event if isinstance(event, dict) else None


def _no_done(backend: str) -> IncompleteResponseError:
    return IncompleteResponseError("the stream ended without its [DONE] marker", backend=backend)


def iter_sse(
    lines: Iterable[str], *, backend: str, require_done: bool = True
) -> Iterator[dict[str, Any]]:
    """JSON events of an SSE stream; an error event raises, and so does a missing ``[DONE]``
    (where the protocol ends with one: OpenAI's does, TGI's generate stream does not)."""
    for line in lines:
        event = _sse_event(line, backend=backend)
        if event is _DONE:
            return
        if event is not None:
            yield event
    if require_done:
        raise _no_done(backend)


async def aiter_sse(
    lines: AsyncIterable[str], *, backend: str, require_done: bool = True
) -> AsyncIterator[dict[str, Any]]:
    """Async twin of :func:`iter_sse`."""
    async for line in lines:
        event = _sse_event(line, backend=backend)
        if event is _DONE:
            return
        if event is not None:
            yield event
    if require_done:
        raise _no_done(backend)


class _StreamState(abc.ABC):
    """What both stream states share: feed every chunk, then close (``finish``)."""

    @abc.abstractmethod
    def feed(self, chunk: dict[str, Any]) -> Any:
        """One chunk in; what to yield, or None."""

    @abc.abstractmethod
    def finish(self) -> Any:
        """The closing item; raises where the stream was cut."""

    async def _before_finish(self) -> None:  # noqa: B027 (optional hook)
        """Async work before the closing chunk (an async usage count)."""

    def run(self, chunks: Iterable[dict[str, Any]]) -> Iterator[Any]:
        """Feed every chunk, then close."""
        for raw in chunks:
            out = self.feed(raw)
            if out is not None:
                yield out
        yield self.finish()

    async def arun(self, chunks: AsyncIterable[dict[str, Any]]) -> AsyncIterator[Any]:
        """Async twin of :meth:`run`."""
        async for raw in chunks:
            out = self.feed(raw)
            if out is not None:
                yield out
        await self._before_finish()
        yield self.finish()


class ChatStream(_StreamState):
    """Turns OpenAI stream chunks (dicts) into LangChain chunks and checks the ending.

    Content, tool-call pieces and reasoning go out as they come; ``finish_reason`` and
    ``model_name`` go on the last chunk (so merged metadata equals ``invoke``'s), together with
    usage. A stream with no finish reason raises :class:`IncompleteResponseError`.
    """

    def __init__(
        self,
        *,
        backend: str,
        model: str,
        usage_fallback: Callable[[str], UsageMetadata | None] | None = None,
        ausage_fallback: Callable[[str], Awaitable[UsageMetadata | None]] | None = None,
        model_from_chunks: bool = True,
    ) -> None:
        self.backend = backend
        self.model_from_chunks = model_from_chunks
        self.model = model
        self.finish_reason: str | None = None
        self.usage: UsageMetadata | None = None
        self.text: list[str] = []
        self.tool_text: list[str] = []
        self._tool_seen: dict[Any, set[str]] = {}
        self.id: str | None = None
        self.fingerprint: str | None = None
        self.usage_fallback = usage_fallback
        self.ausage_fallback = ausage_fallback

    def feed(self, chunk: dict[str, Any]) -> ChatGenerationChunk | None:
        """One stream chunk in; a LangChain chunk out, or None for bookkeeping-only chunks."""
        self.id = self.id or chunk.get("id")
        if chunk.get("system_fingerprint"):
            self.fingerprint = chunk["system_fingerprint"]
        if self.model_from_chunks and chunk.get("model"):
            self.model = chunk["model"]
        if chunk.get("usage"):
            self.usage = usage_metadata(chunk["usage"])
        choices = chunk.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        content = delta.get("content") or ""
        tool_chunks = []
        for tc in delta.get("tool_calls") or []:
            fn = tc.get("function") or {}
            index = tc.get("index")
            # Some servers (llama.cpp) repeat the name and id in every chunk; send them once.
            name, call_id = fn.get("name"), tc.get("id")
            seen = self._tool_seen.setdefault(index, set())
            if name in seen:
                name = None
            if call_id in seen:
                call_id = None
            seen.update(x for x in (name, call_id) if x)
            if fn.get("arguments"):
                self.tool_text.append(fn["arguments"])
            tool_chunks.append(
                {"name": name, "args": fn.get("arguments"), "id": call_id, "index": index}
            )
        extra = {}
        if delta.get("reasoning_content"):
            extra["reasoning_content"] = delta["reasoning_content"]
        if not content and not tool_chunks and not extra:
            return None
        self.text.append(content)
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=content,
                tool_call_chunks=tool_chunks,  # type: ignore[arg-type]
                additional_kwargs=extra,
                id=self.id,
            )
        )

    def output_text(self) -> str:
        """Everything the model generated so far: content and tool-call arguments."""
        return "".join(self.text) + "".join(self.tool_text)

    def finish(self) -> ChatGenerationChunk:
        """The closing chunk (finish reason, model, usage); raises if the stream was cut."""
        if not self.finish_reason:
            raise IncompleteResponseError(
                "the stream ended before the model finished (no finish_reason)",
                partial_text="".join(self.text),
                backend=self.backend,
            )
        usage = self.usage
        if usage is None and self.usage_fallback is not None:
            usage = self.usage_fallback(self.output_text())
        meta = {"finish_reason": self.finish_reason, "model_name": self.model}
        if self.fingerprint:
            meta["system_fingerprint"] = self.fingerprint
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage,
                response_metadata=meta,
                id=self.id,
                chunk_position="last",
            ),
            generation_info={"finish_reason": self.finish_reason},
        )

    async def _before_finish(self) -> None:
        if self.usage is None and self.finish_reason and self.ausage_fallback is not None:
            self.usage = await self.ausage_fallback(self.output_text())


class CompletionStream(_StreamState):
    """The ``/completions`` twin of :class:`ChatStream`."""

    def __init__(self, *, backend: str, model: str) -> None:
        self.backend = backend
        self.model = model
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.text: list[str] = []

    def feed(self, chunk: dict[str, Any]) -> GenerationChunk | None:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        text = choice.get("text") or ""
        if not text:
            return None
        self.text.append(text)
        return GenerationChunk(text=text)

    def finish(self) -> GenerationChunk:
        if not self.finish_reason:
            raise IncompleteResponseError(
                "the stream ended before the model finished (no finish_reason)",
                partial_text="".join(self.text),
                backend=self.backend,
            )
        info: dict[str, Any] = {"finish_reason": self.finish_reason, "model_name": self.model}
        if self.usage:
            info["usage"] = self.usage
        return GenerationChunk(text="", generation_info=info)


# ------------------------------------------------------------------ tools and structured output

StructuredMethod = Literal["json_schema", "function_calling", "json_mode"]


class ToolsAndStructuredOutput(BaseChatModel):
    """``bind_tools`` and ``with_structured_output`` in the OpenAI tool format, LangChain's
    common one, written once for every chat model of the package: the backends (through
    :class:`ToolsAndStructuredOutputMixin`) and ``ChatRouter`` (which passes the bound tools
    to the candidate each call is routed to). A backend whose API takes another format
    (Gemini) converts the tools where it builds its request."""

    default_structured_method: StructuredMethod = "json_schema"
    """How ``with_structured_output`` asks for structure when no method is given."""

    _backend: ClassVar[str]  # names the errors (the class's own; not given a default here)

    @final
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools in the OpenAI format; ``tool_choice`` takes a name, "auto", "none",
        "required"/"any"/True, or an OpenAI tool-choice dict (a name that is no bound tool is
        refused here)."""
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        names = [t["function"]["name"] for t in formatted if "function" in t]
        if tool_choice is not None and tool_choice is not False:
            if tool_choice is True or tool_choice == "any":
                tool_choice = "required"
            if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
                if tool_choice not in names:
                    raise InvalidInputError(
                        "tool_choice", f"names no bound tool; got {tool_choice!r}, tools: {names}"
                    )
                tool_choice = {"type": "function", "function": {"name": tool_choice}}
            kwargs["tool_choice"] = tool_choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(tools=formatted, **kwargs)

    @final
    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: StructuredMethod | None = None,
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Answers shaped by ``schema`` (pydantic class, TypedDict or JSON schema).

        ``method``: ``"json_schema"`` (the server constrains decoding; the default),
        ``"function_calling"`` (a forced tool call), or ``"json_mode"`` (any JSON object).
        An answer cut by ``max_tokens`` before its JSON was complete raises
        :class:`~langchain_multillm.errors.IncompleteResponseError` saying so (with
        ``include_raw=True`` it is the ``parsing_error``).
        """
        if kwargs:
            raise InvalidInputError(
                "with_structured_output", f"unexpected arguments {sorted(kwargs)}"
            )
        method = method or self.default_structured_method
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        parser: OutputParserLike
        if method == "function_calling":
            if schema is None:
                raise InvalidInputError("schema", "function_calling needs a schema")
            tool = convert_to_openai_tool(schema, strict=strict)
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [schema],
                tool_choice=name,
                strict=strict,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": tool},
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method == "json_schema":
            if schema is None:
                raise InvalidInputError("schema", "json_schema needs a schema")
            json_schema = convert_to_json_schema(schema)
            name = json_schema.get("title", "output")
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": json_schema, "strict": bool(strict)},
            }
            llm = self.bind(
                response_format=response_format,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": json_schema},
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_pydantic
                else JsonOutputParser()
            )
        elif method == "json_mode":
            llm = self.bind(
                response_format={"type": "json_object"},
                ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_pydantic
                else JsonOutputParser()
            )
        else:
            raise InvalidInputError(
                "method", f"must be json_schema, function_calling or json_mode; got {method!r}"
            )
        # An answer cut by max_tokens raises IncompleteResponseError, not the parser's error.
        checked = stop_if_cut(tools=method == "function_calling", backend=self._backend) | parser
        if not include_raw:
            return llm | checked
        parser_assign = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | checked, parsing_error=lambda _: None
        )
        parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
        parser_with_fallback = parser_assign.with_fallbacks(
            [parser_none], exception_key="parsing_error"
        )
        return RunnableMap(raw=llm) | parser_with_fallback


class ToolsAndStructuredOutputMixin(ToolsAndStructuredOutput, MultiLLMChatModel):
    """:class:`ToolsAndStructuredOutput` on a chat backend (Azure, Gemini, llama.cpp,
    in-process vLLM, and every :class:`OpenAIChatOverHTTP`)."""


# ------------------------------------------------------------------ chat over HTTP


class OpenAIChatOverHTTP(HTTPConnection, ToolsAndStructuredOutputMixin):
    """A chat model that posts OpenAI chat bodies over an :class:`HTTPConnection`.

    A backend names its URL (``_chat_url``, required) and may reshape the body
    (``_chat_body``), check the request before it goes (``_before_send`` /
    ``_abefore_send``), and fill stream usage a server leaves out (``_usage_fallback`` /
    ``_ausage_fallback``). The four chat hooks of :class:`MultiLLMChatModel` are filled here
    (final): a backend on this layer does not write them.
    """

    @abc.abstractmethod
    def _chat_url(self) -> str:
        """The URL of ``POST /chat/completions`` (required)."""

    def _chat_body(self, req: ChatRequest, *, stream_usage: bool) -> dict[str, Any]:
        return chat_payload(
            req, req.params.get("model", self.model_name), stream_usage=stream_usage
        )

    def _before_send(self, req: ChatRequest) -> None:
        """Checks of a request the backend makes before sending it."""

    async def _abefore_send(self, req: ChatRequest) -> None:
        """Async twin of :meth:`_before_send`."""
        self._before_send(req)

    def _usage_fallback(self, req: ChatRequest) -> Callable[[str], UsageMetadata | None] | None:
        return None

    def _ausage_fallback(
        self, req: ChatRequest
    ) -> Callable[[str], Awaitable[UsageMetadata | None]] | None:
        return None

    @final
    def _chat(self, req: ChatRequest) -> ChatResult:
        self._before_send(req)
        body = self._post_json(self._chat_url(), self._chat_body(req, stream_usage=False))
        return chat_result(body, backend=self._backend, fallback_model=self.model_name)

    @final
    async def _achat(self, req: ChatRequest) -> ChatResult:
        await self._abefore_send(req)
        body = await self._apost_json(self._chat_url(), self._chat_body(req, stream_usage=False))
        return chat_result(body, backend=self._backend, fallback_model=self.model_name)

    @final
    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        self._before_send(req)
        body = self._chat_body(req, stream_usage=self.stream_usage)
        state = ChatStream(
            backend=self._backend,
            model=body.get("model") or self.model_name,
            usage_fallback=self._usage_fallback(req),
        )
        yield from state.run(self._sse(self._chat_url(), body, iter_sse))

    @final
    async def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        await self._abefore_send(req)
        body = self._chat_body(req, stream_usage=self.stream_usage)
        state = ChatStream(
            backend=self._backend,
            model=body.get("model") or self.model_name,
            ausage_fallback=self._ausage_fallback(req),
        )
        async for chunk in state.arun(self._asse(self._chat_url(), body, aiter_sse)):
            yield chunk
