"""Chain templates that use the fit contract: RAG with context-aware packing, summarization.

``index`` (``load_folder``, ``BM25Retriever``, ``EmbeddingRetriever``) is a small document index
for them; its search libraries load only when an index is built.
"""

from langchain_multillm.chains.index import BM25Retriever, EmbeddingRetriever, load_folder
from langchain_multillm.chains.rag import DEFAULT_RAG_PROMPT, RAGChain, create_rag_chain
from langchain_multillm.chains.summarize import (
    SummarizeChain,
    SummaryReduceError,
    TurnOptions,
    TurnResult,
    TurnSummarizer,
    consolidate_turns,
    create_summarize_chain,
    split_turns,
    summarize_turns,
)

__all__ = [
    "DEFAULT_RAG_PROMPT",
    "BM25Retriever",
    "EmbeddingRetriever",
    "RAGChain",
    "SummarizeChain",
    "SummaryReduceError",
    "TurnOptions",
    "TurnResult",
    "TurnSummarizer",
    "consolidate_turns",
    "create_rag_chain",
    "create_summarize_chain",
    "load_folder",
    "split_turns",
    "summarize_turns",
]
