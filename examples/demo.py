"""`make demo`: RAG over this project's own docs with the embedded tiny model.

The docs are indexed with BM25, the best chunks are packed into the room the model's 2048-token
window leaves (counted with the model's own tokenizer), the answer streams, then the numbered
sources it may cite, and what the packing did.

Run: python examples/demo.py ["your question"]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from langchain_multillm import ChatLlamaCpp, create_rag_chain
from langchain_multillm.chains.index import BM25Retriever, load_folder

DOCS = Path(__file__).resolve().parent.parent / "docs"
QUESTION = "What happens when a prompt does not fit the context window?"


def main() -> None:
    question = " ".join(sys.argv[1:]) or QUESTION
    started = time.perf_counter()
    chunks = load_folder(DOCS, chunk_chars=600)
    retriever = BM25Retriever.from_documents(chunks, k=3)
    indexed = time.perf_counter() - started
    # The bundled SmolLM2-135M-Instruct GGUF; a mild repetition penalty keeps it from looping.
    llm = ChatLlamaCpp(temperature=0, repeat_penalty=1.1)
    chain = create_rag_chain(llm, retriever, answer_tokens=160)

    print(f"indexed {len(chunks)} chunks of {DOCS.name}/ in {indexed * 1000:.0f} ms")
    print(f"Q: {question}\nA: ", end="", flush=True)
    started = time.perf_counter()
    final: dict = {}
    for chunk in chain.stream({"question": question}):
        if "answer" in chunk:
            print(chunk["answer"], end="", flush=True)
        else:
            final = chunk
    elapsed = time.perf_counter() - started
    print("\n\nSources:")
    for source in final["sources"]:
        meta = source["metadata"]
        print(f"  [{source['id']}] {meta['title']} ({meta['source']}, score {meta['score']:.2f})")
    print(f"\nfit:    {final['fit']}")
    n, cut, dropped = len(final["sources"]), final["cut"], final["dropped"]
    print(f"packed: {n} documents, {cut} cut, {dropped} dropped")
    print(f"time:   {elapsed:.1f} s for retrieval, packing and the streamed answer")


if __name__ == "__main__":
    main()
