"""The RAG chain and the summarizer over the real vLLM CPU server: counts from its /tokenize."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from langchain_multillm import ChatVLLMServer
from langchain_multillm.chains import create_rag_chain, create_summarize_chain
from tests.unit_tests.chain_fakes import ListRetriever

pytestmark = [pytest.mark.vllm_server, pytest.mark.timeout(300)]

FACT = "The Eiffel Tower is 330 metres tall. It was completed in 1889. "


@pytest.fixture
def chat(vllm_server_url: str) -> ChatVLLMServer:
    return ChatVLLMServer(base_url=vllm_server_url, model="smollm2", temperature=0, seed=1)


def test_rag_packs_to_the_servers_own_count_and_answers(chat: ChatVLLMServer) -> None:
    docs = [
        Document(FACT, metadata={"title": "Eiffel", "url": "https://example.org/e"}),
        Document("Paris is the capital of France. " * 200, metadata={"title": "Paris"}),
        Document("Bananas are yellow. " * 200, metadata={"title": "Bananas"}),
    ]
    chain = create_rag_chain(chat, ListRetriever(documents=docs), answer_tokens=64)
    packed = chain.pack("How tall is the Eiffel Tower?", [], docs)
    assert packed.cut + packed.dropped >= 1  # the documents are ~3x the window
    assert chat.count_tokens(packed.messages) + 64 <= 2048  # /tokenize, with the chat template
    chunks = list(chain.stream({"question": "How tall is the Eiffel Tower?"}))
    answer = "".join(c.get("answer", "") for c in chunks)
    final = chunks[-1]
    assert answer.strip() and final["fit"].fits
    assert final["sources"][0]["metadata"] == {"title": "Eiffel", "url": "https://example.org/e"}


def test_summarizer_prompts_fit_the_servers_window(chat: ChatVLLMServer) -> None:
    text = "\n".join(f"Speaker{i % 3}: Item {i}. {FACT}" for i in range(120))
    assert chat.count_tokens(text) > 2048
    out = create_summarize_chain(chat, turn_tokens=200, summary_tokens=60).invoke(text)
    assert out["rounds"] >= 2 and out["summary"].strip()
