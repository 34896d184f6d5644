"""``create_rag_chain``: retrieved documents packed into the room the context window leaves.

The chain retrieves, then packs the documents best first into the prompt tokens the model's
limits leave after the instructions, the history, the question and the answer budget, counted
with the model's own tokenizer (a conservative estimate for chat models of other packages). A
document that does not fit whole is cut at a sentence boundary or dropped; when the history
leaves no room for any document, its oldest turns go first. The prompt never overflows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage, HumanMessage, convert_to_messages
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor
from langchain_core.runnables.utils import AddableDict

from langchain_multillm.chains._budget import Budget
from langchain_multillm.chains._text import sentence_cuts
from langchain_multillm.errors import ContextWindowExceededError, InvalidInputError
from langchain_multillm.fit import FitReport

__all__ = ["DEFAULT_RAG_PROMPT", "RAGChain", "create_rag_chain"]

OnOverflow = Literal["cut", "drop"]

SYSTEM = (
    "You answer questions using only the numbered documents the user gives you. After each "
    "statement, cite the documents it comes from by number in square brackets, like [1] or "
    '[2][3]. If the documents do not contain the answer, say "I don\'t know".'
)

DEFAULT_RAG_PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", SYSTEM),
        MessagesPlaceholder("chat_history", optional=True),
        ("human", "Documents:\n\n{context}\n\nQuestion: {question}"),
    ]
)
"""The default prompt: instructions, the history, then the numbered documents and the question."""

PROMPT_VARIABLES = {"context", "question", "chat_history"}

DEFAULT_ANSWER_TOKENS = 512
"""Output tokens kept for the answer when neither ``answer_tokens`` nor the model's own
``max_tokens`` is set: 512, or a quarter of the context window where that is less."""

NO_DOCUMENTS = "I don't know: the retriever found no documents for this question."
NONE_FIT = (
    "I don't know: none of the {n} documents found fits in the room the model's context window "
    "leaves for them."
)

# Tokens kept free per document for merges at the boundaries between blocks.
SLACK_PER_DOCUMENT = 2


def format_document(n: int, doc: Document) -> str:
    """One numbered block of the context: ``[n] title`` then the content."""
    label = doc.metadata.get("title") or doc.metadata.get("source")
    head = f"[{n}] {label}" if label else f"[{n}]"
    return f"{head}\n{doc.page_content.strip()}"


@dataclass
class Packed:
    """What went into the prompt, and what did not."""

    messages: list[BaseMessage]
    documents: list[Document]
    fit: FitReport
    dropped: int = 0
    cut: int = 0
    history_dropped: int = 0
    empty_answer: str | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)

    def result(self, answer: str | None = None) -> dict[str, Any]:
        """Everything but the answer; the answer too when given."""
        out: dict[str, Any] = {} if answer is None else {"answer": answer}
        out.update(
            sources=[
                {"id": i, "content": d.page_content, "metadata": d.metadata}
                for i, d in enumerate(self.documents, 1)
            ],
            fit=self.fit,
            dropped=self.dropped,
            cut=self.cut,
            history_dropped=self.history_dropped,
        )
        return out


def _turns(history: list[BaseMessage]) -> list[list[BaseMessage]]:
    """The history as turns, each starting at a human message (leading others form one turn)."""
    turns: list[list[BaseMessage]] = []
    for m in history:
        if not turns or isinstance(m, HumanMessage):
            turns.append([m])
        else:
            turns[-1].append(m)
    return turns


class RAGChain(Runnable[dict[str, Any], dict[str, Any]]):
    """Retrieve, pack into the window, answer with citations; see :func:`create_rag_chain`."""

    def __init__(
        self,
        llm: Runnable[LanguageModelInput, BaseMessage],
        retriever: Runnable[str, list[Document]],
        *,
        prompt: BasePromptTemplate,
        answer_tokens: int | None,
        on_overflow: OnOverflow,
        context_window: int | None,
    ) -> None:
        self.llm = llm
        self.retriever = retriever
        self.prompt = prompt
        self.answer_tokens = answer_tokens
        self.on_overflow = on_overflow
        self.budget = Budget(llm, context_window)
        self.takes_history = "chat_history" in {*prompt.input_variables, *prompt.optional_variables}
        self.name = "RAGChain"

    # ---- input ----
    def _parse(self, value: Any) -> tuple[str, list[BaseMessage]]:
        if isinstance(value, str):
            value = {"question": value}
        if not isinstance(value, dict):
            raise InvalidInputError(
                "input", f"must be a dict with 'question'; got {type(value).__name__}"
            )
        question = value.get("question")
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError("question", f"must be a non-empty string; got {question!r}")
        raw = value.get("chat_history") or []
        try:
            history = convert_to_messages(raw)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise InvalidInputError("chat_history", f"must be a list of messages: {exc}") from exc
        if history and not self.takes_history:
            raise InvalidInputError(
                "chat_history", "was given, but the prompt has no chat_history placeholder"
            )
        return question, history

    # ---- packing ----
    def _render(
        self, question: str, history: list[BaseMessage], docs: Sequence[Document]
    ) -> list[BaseMessage]:
        values: dict[str, Any] = {
            "question": question,
            "context": "\n\n".join(format_document(i, d) for i, d in enumerate(docs, 1)),
        }
        if self.takes_history:
            values["chat_history"] = history
        return self.prompt.invoke(values).to_messages()

    def _smallest_block(self, docs: Sequence[Document]) -> int:
        """Tokens of the smallest piece packing could place first: the best document's first
        sentence when documents are cut, else the smallest whole document."""
        if self.on_overflow == "cut":
            text = docs[0].page_content.strip()
            cuts = sentence_cuts(text)
            first = Document(page_content=text[: cuts[0]].strip() if cuts else text)
            return self.budget.text(format_document(1, first)) + SLACK_PER_DOCUMENT
        return min(self.budget.text(format_document(1, d)) for d in docs) + SLACK_PER_DOCUMENT

    def _fit_cut(self, n: int, doc: Document, room: int) -> tuple[Document, int] | None:
        """The longest sentence-bounded start of ``doc`` whose block fits ``room``, if any."""
        text = doc.page_content.strip()
        cuts = sentence_cuts(text)
        best: tuple[Document, int] | None = None
        lo, hi = 0, len(cuts) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            part = Document(page_content=text[: cuts[mid]].strip(), metadata=doc.metadata)
            tokens = self.budget.text(format_document(n, part)) + SLACK_PER_DOCUMENT
            if tokens <= room:
                best, lo = (part, tokens), mid + 1
            else:
                hi = mid - 1
        return best

    def answer_budget(self) -> tuple[int, dict[str, Any]]:
        """The output tokens kept free for the answer, and the keyword arguments of the call.

        ``answer_tokens`` when given (sent as ``max_tokens`` to this package's models); else
        the model's own ``max_tokens`` (bound or set on it; with fallbacks, the largest), which
        the model already applies, so nothing is sent; where a model has none,
        :data:`DEFAULT_ANSWER_TOKENS` (sent when no model has one). Never more than the
        models' ``max_output_tokens``.
        """
        budget = self.budget
        limits = budget.limits()
        if self.answer_tokens is not None:
            answer, send = self.answer_tokens, True
        else:
            default = DEFAULT_ANSWER_TOKENS
            if limits.context_window is not None:
                default = max(1, min(default, limits.context_window // 4))
            own = budget.max_tokens()
            answer = max(n if n is not None else default for n in own)
            send = all(n is None for n in own)
        if limits.max_output_tokens is not None and answer > limits.max_output_tokens:
            answer, send = limits.max_output_tokens, True
        return answer, ({"max_tokens": answer} if send and budget.sends_max_tokens else {})

    def _answer_hint(self, answer: int) -> str:
        """Where the ``answer`` tokens kept for the answer come from, for a refusal."""
        own = [n for n in self.budget.max_tokens() if n is not None]
        if self.answer_tokens is not None:
            where = f"answer_tokens={self.answer_tokens}"
        elif own and answer == max(own):
            where = "answer_tokens unset: the model's own max_tokens"
        elif own or answer != self.budget.limits().max_output_tokens:
            where = "answer_tokens unset, and the model sets no max_tokens"
        else:
            where = "answer_tokens unset: the model's max_output_tokens"
        return (
            f"{answer} tokens are kept free for the answer ({where}); pass a smaller "
            f"answer_tokens, or ask a shorter question"
        )

    def pack(
        self, question: str, history: list[BaseMessage], retrieved: Sequence[Document]
    ) -> Packed:
        """Choose what goes into the prompt (counts only; no generation)."""
        budget = self.budget
        answer, kwargs = self.answer_budget()
        docs = [d for d in retrieved if d.page_content.strip()]

        if not docs:
            messages = self._render(question, history, [])
            return Packed(messages, [], budget.fit(messages, answer), empty_answer=NO_DOCUMENTS)
        messages = self._render(question, history, docs)
        report = budget.fit(messages, answer)
        if report.fits:  # everything fits: decided by the cheap bound far from the limit
            return Packed(messages, docs, report, call_kwargs=kwargs)

        room = budget.room(answer)
        assert room is not None  # a prompt that does not fit has known limits
        # History gives way, oldest turn first, only while it is what keeps the smallest
        # packable document out (and, of course, when the question alone does not fit).
        need = self._smallest_block(docs)
        alone = budget.count(self._render(question, [], []))
        docs_can_fit = alone + need <= room
        turns, history_dropped = _turns(history), 0
        while True:
            history = [m for t in turns for m in t]
            base = budget.count(self._render(question, history, []))
            if not turns or (base <= room and (base + need <= room or not docs_can_fit)):
                break
            history_dropped += len(turns.pop(0))
        if base > room:
            report = budget.fit(self._render(question, history, []), answer)
            raise ContextWindowExceededError(
                f"the question does not fit the model even without documents or history: "
                f"{report.reason}. {self._answer_hint(answer)}",
                prompt_tokens=base,
                max_tokens=answer,
                limit=room,
                fit=report,
                backend="rag",
            )

        left = room - base
        chosen: list[Document] = []
        was_cut: list[bool] = []
        dropped = 0
        for doc in docs:
            n = len(chosen) + 1
            tokens = budget.text(format_document(n, doc)) + SLACK_PER_DOCUMENT
            piece: tuple[Document, int] | None = (doc, tokens) if tokens <= left else None
            if piece is None and self.on_overflow == "cut":
                piece = self._fit_cut(n, doc, left)
            if piece is None:
                dropped += 1
                continue
            chosen.append(piece[0])
            was_cut.append(piece[0] is not doc)
            left -= piece[1]

        # Counted block by block; the whole prompt is checked once more, and trimmed if the
        # tokenizer merged across a boundary differently.
        while True:
            messages = self._render(question, history, chosen)
            report = budget.fit(messages, answer)
            if report.fits or not chosen:
                break
            chosen.pop()
            was_cut.pop()
            dropped += 1
        empty = NONE_FIT.format(n=len(docs)) if not chosen else None
        return Packed(
            messages,
            chosen,
            report,
            dropped=dropped,
            cut=sum(was_cut),
            history_dropped=history_dropped,
            empty_answer=empty,
            call_kwargs=kwargs,
        )

    # ---- the Runnable ----
    def _retrieve(self, value: Any, config: RunnableConfig) -> Packed:
        question, history = self._parse(value)
        return self.pack(question, history, self.retriever.invoke(question, config))

    async def _aretrieve(self, value: Any, config: RunnableConfig) -> Packed:
        question, history = self._parse(value)
        docs = await self.retriever.ainvoke(question, config)
        return cast(Packed, await run_in_executor(config, self.pack, question, history, docs))

    def _invoke(
        self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        packed = self._retrieve(value, config)
        if packed.empty_answer is not None:
            return packed.result(packed.empty_answer)
        message = self.llm.invoke(packed.messages, config, **packed.call_kwargs)
        return packed.result(message.text)

    async def _ainvoke(
        self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        packed = await self._aretrieve(value, config)
        if packed.empty_answer is not None:
            return packed.result(packed.empty_answer)
        message = await self.llm.ainvoke(packed.messages, config, **packed.call_kwargs)
        return packed.result(message.text)

    def invoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """``{"answer", "sources", "fit", "dropped", "cut", "history_dropped"}`` for a question."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Async twin of :meth:`invoke`."""
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def _transform(
        self,
        inputs: Iterator[Any],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> Iterator[dict[str, Any]]:
        for value in inputs:
            packed = self._retrieve(value, config)
            if packed.empty_answer is not None:
                yield AddableDict(answer=packed.empty_answer)
            else:
                for chunk in self.llm.stream(packed.messages, config, **packed.call_kwargs):
                    if chunk.text:
                        yield AddableDict(answer=chunk.text)
            yield AddableDict(packed.result())

    async def _atransform(
        self,
        inputs: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[dict[str, Any]]:
        async for value in inputs:
            packed = await self._aretrieve(value, config)
            if packed.empty_answer is not None:
                yield AddableDict(answer=packed.empty_answer)
            else:
                async for chunk in self.llm.astream(packed.messages, config, **packed.call_kwargs):
                    if chunk.text:
                        yield AddableDict(answer=chunk.text)
            yield AddableDict(packed.result())

    def stream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """``{"answer": delta}`` chunks, then one with sources, fit, dropped and cut."""
        yield from self.transform(iter([input]), config, **kwargs)

    def transform(
        self, input: Iterator[dict[str, Any]], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    async def astream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Async twin of :meth:`stream`."""

        async def one() -> AsyncIterator[dict[str, Any]]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk

    async def atransform(
        self,
        input: AsyncIterator[dict[str, Any]],
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._atransform_stream_with_config(
            input, self._atransform, config, **kwargs
        ):
            yield chunk


def create_rag_chain(
    llm: Runnable[LanguageModelInput, BaseMessage],
    retriever: Runnable[str, list[Document]],
    *,
    prompt: BasePromptTemplate | None = None,
    answer_tokens: int | None = None,
    on_overflow: OnOverflow = "cut",
    context_window: int | None = None,
) -> RAGChain:
    """A Runnable that answers a question from retrieved documents, with numbered citations.

    Args:
        llm: any LangChain chat model, or one wrapped by ``bind``, ``with_config``,
            ``with_retry`` or ``with_fallbacks`` (the chain calls the wrapper, and counts
            through the models inside, with the ``max_tokens`` and tools bound; with fallbacks
            the budget holds for every model that may answer). This package's models count
            exactly with their own tokenizer, others with a conservative estimate.
        retriever: any LangChain retriever (or Runnable from a query to documents), best first.
        prompt: a prompt taking ``context`` and ``question`` (and optionally ``chat_history``);
            the default numbers the documents, asks for ``[n]`` citations and for "I don't
            know" when the documents do not answer.
        answer_tokens: output tokens kept free for the answer, and sent as ``max_tokens`` to
            this package's models. Unset (``None``): the model's own ``max_tokens`` (bound or
            set on it; the largest among fallbacks), left to the model to apply; where the
            model sets none, 512, or a quarter of the context window where that is less (then
            sent). Never more than the model's ``max_output_tokens``.
        on_overflow: a document that does not fit whole is ``"cut"`` at a sentence boundary,
            or ``"drop"``-ped.
        context_window: the window of a chat model from another package that declares none.

    Input ``{"question": str, "chat_history": [messages]}`` (or the question alone). Output
    ``{"answer", "sources": [{"id", "content", "metadata"}], "fit", "dropped", "cut",
    "history_dropped"}``; ``stream`` yields ``{"answer": delta}`` then the rest in one chunk.
    """
    if answer_tokens is not None and (
        not isinstance(answer_tokens, int) or isinstance(answer_tokens, bool) or answer_tokens <= 0
    ):
        raise InvalidInputError(
            "answer_tokens", f"must be a positive integer or None; got {answer_tokens!r}"
        )
    if on_overflow not in ("cut", "drop"):
        raise InvalidInputError("on_overflow", f"must be 'cut' or 'drop'; got {on_overflow!r}")
    if not isinstance(retriever, Runnable):
        raise InvalidInputError(
            "retriever",
            f"must be a LangChain retriever or Runnable; got {type(retriever).__name__}",
        )
    prompt = prompt if prompt is not None else DEFAULT_RAG_PROMPT
    variables = set(prompt.input_variables) | set(prompt.optional_variables)
    missing = {"context", "question"} - variables
    unknown = variables - PROMPT_VARIABLES - set(prompt.partial_variables)
    if missing or unknown:
        raise InvalidInputError(
            "prompt",
            f"must take 'context' and 'question' (and optionally 'chat_history'); "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}",
        )
    return RAGChain(
        llm,
        retriever,
        prompt=prompt,
        answer_tokens=answer_tokens,
        on_overflow=on_overflow,
        context_window=context_window,
    )
