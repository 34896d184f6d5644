"""Embedding retrieval with the real offline all-MiniLM-L6-v2 (the ``[embeddings]`` extra)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.documents import Document

from langchain_multillm.chains import BM25Retriever, EmbeddingRetriever

pytestmark = [pytest.mark.peer, pytest.mark.embeddings, pytest.mark.timeout(300)]

DOCS = [
    Document("Our automobile needs new tyres before the winter.", metadata={"title": "garage"}),
    Document("The recipe calls for two eggs and a cup of flour.", metadata={"title": "kitchen"}),
    Document("Invoices are paid within thirty days of receipt.", metadata={"title": "accounts"}),
]


def test_meaning_not_words(minilm_path: str) -> None:
    query = "When should I change the car wheels?"  # shares no word with the garage note
    assert BM25Retriever.from_documents(DOCS, k=1).invoke(query) == []
    hits = EmbeddingRetriever.from_documents(DOCS, k=2, model_path=minilm_path).invoke(query)
    assert hits[0].metadata["title"] == "garage"
    assert hits[0].metadata["score"] > hits[1].metadata["score"]
    assert "score" not in DOCS[0].metadata  # scores go on copies


def test_cli_rag_with_embeddings(tmp_path: Path, gguf_path: str, minilm_path: str) -> None:
    for doc in DOCS:
        (tmp_path / f"{doc.metadata['title']}.md").write_text(doc.page_content)
    env = {**os.environ, "LLAMACPP_MODEL_PATH": gguf_path}
    proc = subprocess.run(
        [sys.executable, "-m", "langchain_multillm.cli", "rag", "--docs", str(tmp_path),
         "--embeddings", "--k", "1", "--max-tokens", "20", "--json",
         "When should I change the car wheels?"],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [s["metadata"]["source"] for s in out["sources"]] == ["garage.md"]
    assert out["fit"]["fits"] is True
