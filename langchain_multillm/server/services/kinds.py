"""The three kinds of service: ``chat``, ``rag`` and ``summary``.

Each has a ``check`` (cheap, before the job is queued: the flavor exists, its window can hold
the template and the least the job needs) and a ``run`` (the job itself, through a
:class:`~langchain_multillm.server.jobs.JobContext`: progress per batch, cancellation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from langchain_multillm.chains._budget import Budget
from langchain_multillm.errors import ContextWindowExceededError, InvalidInputError
from langchain_multillm.server.jobs import complete
from langchain_multillm.server.services.files import FlavorSpec, Template

if TYPE_CHECKING:
    from langchain_multillm.server.jobs import JobContext, JobRequest, Runtime
    from langchain_multillm.server.services.registry import LoadedService

__all__ = ["DoesNotFitError", "check", "run"]


class DoesNotFitError(InvalidInputError):
    """The job cannot fit the flavor's window at all (refused before it is queued)."""


# ------------------------------------------------------------------ shared


def flavor_of(service: LoadedService, name: str) -> FlavorSpec:
    """The flavor ``name`` of ``service``; ``InvalidInputError`` (field ``flavor``) if none."""
    for f in service.spec.flavor:
        if f.name == name:
            return f
    known = ", ".join(f.name for f in service.spec.flavor)
    raise InvalidInputError(
        "flavor", f"{name!r} is not a flavor of service {service.route!r}; flavors: {known}"
    )


async def _window(model: Any, flavor: FlavorSpec) -> int | None:
    """The flavor's window: the model's own, lowered by ``totalContextLength``."""
    own: int | None = None
    aget = getattr(model, "aget_limits", None)
    if aget is not None:
        try:
            own = (await aget()).context_window
        except Exception:
            own = None
    if own is None:
        own = await asyncio.to_thread(lambda: Budget(model).limits().context_window)
    caps = [w for w in (own, flavor.totalContextLength) if w is not None]
    return min(caps) if caps else None


def _sampling(flavor: FlavorSpec, job: JobRequest) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("temperature", "top_p"):
        value = job.params.get(key, getattr(flavor, key))
        if value is not None:
            out[key] = float(value)
    return out


class _Setup:
    """A job's model, bound with its sampling settings, its budget and its window."""

    def __init__(self, runtime: Runtime, service: LoadedService, job: JobRequest) -> None:
        self.service = service
        self.flavor = flavor_of(service, job.flavor)
        self.model = runtime.model(self.flavor.modelName)
        sampling = _sampling(self.flavor, job)
        self.llm = self.model.bind(**sampling) if sampling else self.model
        self.window: int | None = None
        self.budget: Budget | None = None

    async def prepare(self) -> _Setup:
        self.window = await _window(self.model, self.flavor)
        self.budget = Budget(self.llm, self.window)
        return self

    def where(self) -> str:
        return f"flavor {self.flavor.name!r} of {self.service.route!r}"


def _prompt(template: Template, names: Sequence[str], **partial: str) -> ChatPromptTemplate:
    prompt = ChatPromptTemplate.from_messages([("human", template.as_fstring(names))])
    keep = {k: v for k, v in partial.items() if k in prompt.input_variables}
    return prompt.partial(**keep) if keep else prompt


# ------------------------------------------------------------------ chat


def _chat_messages(service: LoadedService, text: str) -> list[BaseMessage]:
    if service.template is None:
        return [HumanMessage(text)]
    return [HumanMessage(service.template.render([text], {"text": text}))]


async def _check_chat(s: _Setup, job: JobRequest) -> None:
    assert s.budget is not None
    messages = _chat_messages(s.service, job.content)
    report = await asyncio.to_thread(s.budget.fit, messages, s.flavor.maxGenerationLength)
    if not report.fits:
        raise DoesNotFitError(
            "content",
            f"does not fit {s.where()}: {report.reason} (the template and the text, with "
            f"maxGenerationLength={s.flavor.maxGenerationLength} kept for the answer)",
        )


async def _run_chat(
    runtime: Runtime, s: _Setup, job: JobRequest, ctx: JobContext
) -> dict[str, Any]:
    messages = _chat_messages(s.service, job.content)
    async with runtime.slot(s.flavor.modelName):
        message = await ctx.call(s.llm.ainvoke(messages, max_tokens=s.flavor.maxGenerationLength))
    await ctx.progress(1, 1)
    return complete(str(message.text))


# ------------------------------------------------------------------ rag


def _rag_chain(s: _Setup, docs: list[Document]) -> Any:
    from langchain_multillm.chains.rag import create_rag_chain

    template = s.service.template
    prompt = _prompt(template, ["context", "question"]) if template is not None else None
    return create_rag_chain(
        s.llm,
        RunnableLambda(lambda _q: docs),
        prompt=prompt,
        answer_tokens=s.flavor.maxGenerationLength,
        context_window=s.window,
    )


def _documents(job: JobRequest) -> list[Document]:
    out = []
    for i, d in enumerate(job.documents or []):
        content = d.get("page_content", d.get("content"))
        if not isinstance(content, str):
            raise InvalidInputError(
                f"documents[{i}].page_content", "must be a string (the document's text)"
            )
        metadata = d.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InvalidInputError(f"documents[{i}].metadata", "must be an object")
        out.append(Document(page_content=content, metadata=metadata))
    return out


async def _check_rag(s: _Setup, job: JobRequest) -> None:
    chain = _rag_chain(s, [])
    try:
        await asyncio.to_thread(chain.pack, job.content, [], [])
    except ContextWindowExceededError as exc:
        raise DoesNotFitError("content", f"the question does not fit {s.where()}: {exc}") from None


async def _run_rag(runtime: Runtime, s: _Setup, job: JobRequest, ctx: JobContext) -> dict[str, Any]:
    chain = _rag_chain(s, _documents(job))
    async with runtime.slot(s.flavor.modelName):
        out = await ctx.call(chain.ainvoke({"question": job.content}))
    await ctx.progress(1, 1)
    return complete(
        str(out["answer"]),
        sources=out["sources"],
        dropped=out["dropped"],
        cut=out["cut"],
    )


# ------------------------------------------------------------------ summary


def _summarizer(runtime: Runtime, s: _Setup, job: JobRequest) -> Any:
    """The chains' turn summarizer for this flavor (built in a thread: it counts the template
    and refuses a flavor whose window cannot hold it and one turn)."""
    from langchain_multillm.chains.summarize import TurnOptions, TurnSummarizer

    assert s.service.template is not None
    f = s.flavor
    reduce = f.reduce_prompt
    options = TurnOptions.from_flavor(
        {**f.model_dump(), **job.params},
        fields=s.service.spec.fields,
        reduce_prompt=s.service.reduce_templates[reduce].text if reduce is not None else None,
    )
    try:
        return TurnSummarizer(s.model, s.service.template.text, options)
    except InvalidInputError as exc:
        if exc.field in ("createNewTurnAfter", "maxGenerationLength", "totalContextLength"):
            raise DoesNotFitError(
                "flavor", f"{s.where()} cannot run: {exc.field}: {exc.problem}"
            ) from None
        raise


async def _check_summary(runtime: Runtime, s: _Setup, job: JobRequest) -> None:
    await asyncio.to_thread(_summarizer, runtime, s, job)


async def _run_summary(
    runtime: Runtime, s: _Setup, job: JobRequest, ctx: JobContext
) -> dict[str, Any]:
    summarizer = await asyncio.to_thread(_summarizer, runtime, s, job)
    name = s.flavor.modelName

    async def guard(call: Coroutine[Any, Any, BaseMessage]) -> BaseMessage:
        async with runtime.slot(name):  # the model's max_concurrency holds for each call
            return await ctx.call(call)

    out = await summarizer.asummarize(job.content, progress=ctx.progress, guard=guard)
    return complete(
        out.summary, turns=out.turns, batches=out.batches, rounds=out.rounds, calls=out.calls
    )


# ------------------------------------------------------------------ dispatch


async def check(runtime: Runtime, service: LoadedService, job: JobRequest) -> None:
    """Refuse a job that cannot run at all (before it is queued)."""
    s = await _Setup(runtime, service, job).prepare()
    kind = service.spec.type
    if kind == "chat":
        await _check_chat(s, job)
    elif kind == "rag":
        _documents(job)
        await _check_rag(s, job)
    else:
        await _check_summary(runtime, s, job)


async def run(
    runtime: Runtime, service: LoadedService, job: JobRequest, ctx: JobContext
) -> dict[str, Any]:
    """Run the job; its ``complete`` status."""
    s = await _Setup(runtime, service, job).prepare()
    kind = service.spec.type
    if kind == "chat":
        return await _run_chat(runtime, s, job, ctx)
    if kind == "rag":
        return await _run_rag(runtime, s, job, ctx)
    return await _run_summary(runtime, s, job, ctx)
