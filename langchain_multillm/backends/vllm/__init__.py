"""vLLM in this process: ``ChatVLLM`` (chat, with the model's chat template) and ``VLLM``
(text completion), on vLLM's async engine (``vllm.v1.engine.async_llm.AsyncLLM``).

One engine per model and engine settings in a process, shared by every instance that asks for
it (a registry keyed by the settings, refcounted by leases). Each engine runs on its own
background event-loop thread; sync calls are bridged to it (``run_coroutine_threadsafe``), async
calls await it from any loop. Every request goes to the engine as soon as it is made, so
``batch`` / ``abatch`` / ``generate`` with many inputs put all of them in flight together and
vLLM batches them. A stream that is closed or cancelled early aborts its request in the engine.

Prompts are rendered by the engine's own renderer (the model's chat template, tools included
where the template takes them) and tokenized by the engine's tokenizer, so ``count_tokens`` is
exactly the prompt the model sees, and usage comes from the engine's token ids.

Sampling settings go into ``vllm.SamplingParams``; a key the installed vLLM does not accept is
refused with an :class:`~langchain_multillm.errors.InvalidInputError` naming it, never dropped.
vLLM's errors are translated in one place, :func:`~langchain_multillm.errors.from_vllm_error`
(``VLLM_ERROR_NAMES``, in ``errors.py`` with the other SDK families).

``vllm`` is imported lazily: ``import langchain_multillm`` and building the classes' schema
never import it (or torch).

The package: ``_engine.py`` (the engine handle and the registry of running engines),
``_model.py`` (what both classes share), ``_tools.py`` (tool calls and structured output),
``chat.py`` (``ChatVLLM``) and ``completion.py`` (``VLLM``).
"""

from __future__ import annotations

from langchain_multillm.backends.vllm._engine import BACKEND as BACKEND
from langchain_multillm.backends.vllm._engine import INSTALL_HINT as INSTALL_HINT
from langchain_multillm.backends.vllm._engine import EngineHandle as EngineHandle
from langchain_multillm.backends.vllm._engine import _drop as _drop
from langchain_multillm.backends.vllm._engine import engines as engines
from langchain_multillm.backends.vllm._engine import get_engine as get_engine
from langchain_multillm.backends.vllm._engine import sampling_fields as sampling_fields
from langchain_multillm.backends.vllm._engine import shutdown_engines as shutdown_engines
from langchain_multillm.backends.vllm.chat import ChatVLLM
from langchain_multillm.backends.vllm.completion import VLLM

__all__ = [
    "VLLM",
    "ChatVLLM",
    "EngineHandle",
    "shutdown_engines",
]
