"""``VLLM``: text completion on vLLM's engine in this process (no chat template)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

from langchain_core.outputs import Generation, GenerationChunk

from langchain_multillm._base import CompletionRequest, MultiLLMCompletionModel, join_chunks
from langchain_multillm.backends.vllm._engine import BACKEND, EngineHandle
from langchain_multillm.backends.vllm._model import (
    _check_finish,
    _internal,
    _usage,
    _VLLMEngineModel,
)


class VLLM(_VLLMEngineModel, MultiLLMCompletionModel):
    """Text completion on vLLM's engine in this process (no chat template).

    Follows LangChain's ``BaseLLM`` input contract, so ``PromptTemplate | VLLM(...)`` works.
    ``generate`` / ``batch`` with many prompts submit all of them to the engine at once.
    """

    _backend = BACKEND
    _call_params: ClassVar[frozenset[str]] = frozenset()
    _batches_in_engine = True  # all prompts of a sync call submitted to the engine at once

    @property
    def _llm_type(self) -> str:
        return "vllm"

    def _plan(self, req: CompletionRequest, eng: EngineHandle) -> tuple[EngineHandle, Any]:
        self._check_model(req.params)
        eng.check_alive()
        internal = _internal(req.params, req.stream)
        return eng, self._sampling(eng, req.params, chat=False, **internal)

    def _check_offline(self, req: CompletionRequest) -> None:
        self._check_call(req.params, None, chat=False)

    def _outputs(self, eng: EngineHandle, req: CompletionRequest, sampling: Any) -> Any:
        return lambda: eng.generate(lambda: eng.render_text(req.prompt, limit=True), sampling)

    def _chunk(self, out: Any, generated: int) -> GenerationChunk | None:
        c = out.outputs[0] if out.outputs else None
        text = c.text if c is not None else ""
        if not out.finished:
            return GenerationChunk(text=text) if text else None
        finish = (c.finish_reason if c is not None else None) or "stop"
        _check_finish(finish, "")
        info = {
            "finish_reason": finish,
            "model_name": self.model_name,
            "usage": _usage(len(out.prompt_token_ids or []), generated),
        }
        return GenerationChunk(text=text, generation_info=info)

    def _gen(self, req: CompletionRequest) -> Iterator[GenerationChunk]:
        eng, sampling = self._plan(req, self.engine)
        outputs = eng.iterate(self._outputs(eng, req, sampling))
        generated = 0
        try:
            for out in outputs:
                generated += sum(len(o.token_ids) for o in out.outputs[:1])
                chunk = self._chunk(out, generated)
                if chunk is not None:
                    yield chunk
        finally:
            outputs.close()  # type: ignore[attr-defined]

    async def _agen(self, req: CompletionRequest) -> AsyncIterator[GenerationChunk]:
        eng, sampling = await self._aplan(req)
        outputs = eng.aiterate(self._outputs(eng, req, sampling))
        generated = 0
        try:
            async for out in outputs:
                generated += sum(len(o.token_ids) for o in out.outputs[:1])
                chunk = self._chunk(out, generated)
                if chunk is not None:
                    yield chunk
        finally:
            await outputs.aclose()

    def _complete(self, req: CompletionRequest) -> Generation:
        return join_chunks(list(self._gen(req)), backend=BACKEND)

    async def _acomplete(self, req: CompletionRequest) -> Generation:
        return join_chunks([c async for c in self._agen(req)], backend=BACKEND)

    def _complete_stream(self, req: CompletionRequest) -> Iterator[GenerationChunk]:
        return self._gen(req)

    def _acomplete_stream(self, req: CompletionRequest) -> AsyncIterator[GenerationChunk]:
        return self._agen(req)
