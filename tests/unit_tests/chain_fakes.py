"""A chat model from outside this package, and a retriever, for the chain tests."""

from __future__ import annotations

import threading
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from pydantic import PrivateAttr


class EchoChat(BaseChatModel):
    """Answers with the first ``words`` words of the last message; records every prompt (and
    the keyword arguments of every call); the first ``failures`` calls raise ``error``."""

    words: int = 12
    reply: str | None = None
    max_tokens: int | None = None
    failures: int = 0
    error: type[Exception] = ConnectionError
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _kwargs: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _attempts: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "echo"

    @property
    def calls(self) -> list[list[BaseMessage]]:
        """The prompts of the calls that answered."""
        return self._calls

    @property
    def call_kwargs(self) -> list[dict[str, Any]]:
        """The keyword arguments of the calls that answered."""
        return self._kwargs

    @property
    def attempts(self) -> int:
        """Every call, failed or not."""
        return self._attempts

    def _answer(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        with self._lock:
            self._attempts += 1
            if self._attempts <= self.failures:
                raise self.error(f"attempt {self._attempts} fails")
            self._calls.append(list(messages))
            self._kwargs.append(dict(kwargs))
        if self.reply is not None:
            return self.reply
        return " ".join(messages[-1].text.split()[: self.words])

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        answer = self._answer(messages, kw)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(answer))])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Any:
        for i, word in enumerate(self._answer(messages, kw).split(" ")):
            yield ChatGenerationChunk(message=AIMessageChunk(content=(" " if i else "") + word))


class ListRetriever(BaseRetriever):
    """Returns its documents, best first; counts how often it was asked."""

    documents: list[Document]
    asked: int = 0

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        self.asked += 1
        return list(self.documents)
