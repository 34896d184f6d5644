"""Chain templates that use the fit contract: RAG with context-aware packing, summarization."""

from langchain_multillm.chains.rag import DEFAULT_RAG_PROMPT, RAGChain, create_rag_chain
from langchain_multillm.chains.summarize import SummarizeChain, create_summarize_chain

__all__ = [
    "DEFAULT_RAG_PROMPT",
    "RAGChain",
    "SummarizeChain",
    "create_rag_chain",
    "create_summarize_chain",
]
