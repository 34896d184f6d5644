"""``ChatVLLM``: chat on vLLM's engine in this process (the model's chat template)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.language_models.chat_models import agenerate_from_stream
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from langchain_multillm._base import ChatRequest
from langchain_multillm._openai import ChatStream, ToolsAndStructuredOutputMixin, to_openai_messages
from langchain_multillm._tool_forcing import forced_tool
from langchain_multillm.backends.vllm._engine import BACKEND, EngineHandle
from langchain_multillm.backends.vllm._model import (
    _CHAT_ONLY,
    _check_finish,
    _internal,
    _structured,
    _usage,
    _VLLMEngineModel,
)
from langchain_multillm.backends.vllm._tools import (
    _ParsedTools,
    _Plan,
    _response_format,
)


class ChatVLLM(_VLLMEngineModel, ToolsAndStructuredOutputMixin):
    """Chat with a model on vLLM's engine in this process (the model's own chat template).

    Example:
        ```python
        from langchain_multillm import ChatVLLM

        llm = ChatVLLM(model="Qwen/Qwen2.5-1.5B-Instruct", max_tokens=256)
        llm.check_fit("Hello!")  # exact: the engine's template and tokenizer
        llm.batch(["Hi!", "Name a colour."])  # both in flight together: vLLM batches them
        llm.release()  # the last holder shuts the engine down
        ```

    Structured output (``with_structured_output``, json_schema or json_mode) and forced tool
    calls (``tool_choice`` a tool's name, or "required") use vLLM's structured decoding over
    the schema, so the answer always parses. Unforced tool calls (``tool_choice="auto"``) are
    read out of the answer by ``tool_call_parser`` (one of vLLM's tool parsers) when it is
    set; without one the answer comes back as text.
    """

    chat_template: str | None = None
    """A Jinja chat template to use instead of the model's (None: the model's own)."""

    tool_call_parser: str | None = None
    """vLLM's tool parser for unforced calls, as its server's ``--tool-call-parser`` (e.g.
    ``hermes`` for Qwen2.5 and Hermes models, ``llama3_json``, ``mistral``); None: none."""

    _backend = BACKEND
    _call_params = frozenset(_CHAT_ONLY | {"tools"})
    # vLLM batches what is in flight together: a sync batch/generate of several inputs submits
    # them all at once (the base runs them on the async path) instead of a few at a time.
    _batches_in_engine = True

    @property
    def _llm_type(self) -> str:
        return "vllm-chat"

    def _own_template(self) -> str | None:
        return self.chat_template

    # ---- one request ----
    def _plan(self, req: ChatRequest, eng: EngineHandle) -> tuple[EngineHandle, Any, _Plan]:
        self._check_model(req.params)
        forced = forced_tool(req.params.get("tool_choice"), req.tools)
        plan: _Plan = forced
        rf = _response_format(req.params.get("response_format"))
        eng.check_alive()
        internal = _internal(req.params, req.stream)
        if forced is not None:
            internal["structured_outputs"] = _structured({"json": forced.schema})
        elif rf is not None:
            internal["structured_outputs"] = _structured(rf)
        elif self.tool_call_parser and req.tools and req.params.get("tool_choice") != "none":
            plan = _ParsedTools(
                self.tool_call_parser,
                eng.llm.tokenizer,
                self.model_name,
                to_openai_messages(req.messages),
                req.tools,
            )
            internal["skip_special_tokens"] = plan.skip_special_tokens
        return eng, self._sampling(eng, req.params, chat=True, **internal), plan

    def _check_offline(self, req: ChatRequest) -> None:
        self._check_call(req.params, req.tools, chat=True)
        if self.tool_call_parser and req.tools:
            _ParsedTools.parser_class(self.tool_call_parser)

    def _outputs(self, eng: EngineHandle, req: ChatRequest, sampling: Any) -> Any:
        messages = to_openai_messages(req.messages)
        return lambda: eng.generate(
            lambda: eng.render_chat(messages, req.tools, limit=True, template=self.chat_template),
            sampling,
        )

    def _chunks(self, outputs: Iterator[Any], plan: _Plan) -> Iterator[dict[str, Any]]:
        """vLLM's delta outputs as OpenAI stream chunks (usage from the engine's token ids)."""
        generated = 0
        held: list[str] = []
        for out in outputs:
            yield from self._one(out, plan, held, generated)
            generated += sum(len(o.token_ids) for o in out.outputs[:1])
            if out.finished:
                c = out.outputs[0] if out.outputs else None
                finish = (c.finish_reason if c is not None else None) or "stop"
                yield from self._last(out, plan, held, finish, generated)

    async def _achunks(
        self, outputs: AsyncIterator[Any], plan: _Plan
    ) -> AsyncIterator[dict[str, Any]]:
        generated = 0
        held: list[str] = []
        async for out in outputs:
            for chunk in self._one(out, plan, held, generated):
                yield chunk
            generated += sum(len(o.token_ids) for o in out.outputs[:1])
            if out.finished:
                c = out.outputs[0] if out.outputs else None
                finish = (c.finish_reason if c is not None else None) or "stop"
                for chunk in self._last(out, plan, held, finish, generated):
                    yield chunk

    @staticmethod
    def _one(out: Any, plan: _Plan, held: list[str], generated: int) -> Iterator[dict[str, Any]]:
        text = out.outputs[0].text if out.outputs else ""
        if not text:
            return
        if plan is not None:  # a call: hold the answer until it is complete
            held.append(text)
            return
        yield {"choices": [{"index": 0, "delta": {"content": text}}]}

    @staticmethod
    def _last(
        out: Any, plan: _Plan, held: list[str], finish: str, generated: int
    ) -> Iterator[dict[str, Any]]:
        _check_finish(finish, "".join(held))
        usage = _usage(len(out.prompt_token_ids or []), generated)
        if isinstance(plan, _ParsedTools):
            content, calls = plan.read("".join(held))
            if content:
                yield {"choices": [{"index": 0, "delta": {"content": content}}]}
            if calls:
                yield {"choices": [{"index": 0, "delta": {"tool_calls": calls}}]}
                finish = "tool_calls"
        elif plan is not None:
            call = plan.call("".join(held)) if finish == "stop" else None
            if call is None:  # cut short (length): pass the text on, nothing looks like a call
                yield {"choices": [{"index": 0, "delta": {"content": "".join(held)}}]}
            else:
                yield {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
                finish = "tool_calls"
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": usage}

    def _state(self) -> ChatStream:
        return ChatStream(backend=BACKEND, model=self.model_name, model_from_chunks=False)

    def _usage_wanted(self, req: ChatRequest, chunk: dict[str, Any]) -> dict[str, Any]:
        if req.stream and not self.stream_usage:
            chunk.pop("usage", None)
        return chunk

    def _gen(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        eng, sampling, plan = self._plan(req, self.engine)
        outputs = eng.iterate(self._outputs(eng, req, sampling))
        try:
            chunks = (self._usage_wanted(req, c) for c in self._chunks(outputs, plan))
            yield from self._state().run(chunks)
        finally:
            outputs.close()  # type: ignore[attr-defined]

    async def _agen(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        eng, sampling, plan = await self._aplan(req)
        outputs = eng.aiterate(self._outputs(eng, req, sampling))
        try:
            chunks = (self._usage_wanted(req, c) async for c in self._achunks(outputs, plan))
            async for chunk in self._state().arun(chunks):
                yield chunk
        finally:
            await outputs.aclose()

    def _chat(self, req: ChatRequest) -> ChatResult:
        from langchain_core.language_models.chat_models import generate_from_stream

        return generate_from_stream(self._gen(req))

    async def _achat(self, req: ChatRequest) -> ChatResult:
        return await agenerate_from_stream(self._agen(req))

    def _chat_stream(self, req: ChatRequest) -> Iterator[ChatGenerationChunk]:
        return self._gen(req)

    def _achat_stream(self, req: ChatRequest) -> AsyncIterator[ChatGenerationChunk]:
        return self._agen(req)
