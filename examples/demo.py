"""`make demo`: the embedded tiny model answers a question, streaming, then the fit and health.

Run: python examples/demo.py ["your question"]
"""

from __future__ import annotations

import sys
import time

from langchain_core.messages import HumanMessage, SystemMessage

from langchain_multillm import ChatLlamaCpp


def main() -> None:
    question = " ".join(sys.argv[1:]) or "In two sentences, why is the sky blue?"
    llm = ChatLlamaCpp(temperature=0.2, max_tokens=120)  # the bundled SmolLM2-135M-Instruct GGUF
    messages = [SystemMessage("You are a concise, helpful assistant."), HumanMessage(question)]

    fit = llm.check_fit(messages, max_tokens=llm.max_tokens)
    print(f"Q: {question}\nA: ", end="", flush=True)
    started = time.perf_counter()
    usage = None
    for chunk in llm.stream(messages):
        print(chunk.content, end="", flush=True)
        usage = chunk.usage_metadata or usage
    elapsed = time.perf_counter() - started
    print("\n")
    print(f"fit:    {fit}")  # far from the limit: decided by the cheap bound
    print(f"exact:  {llm.count_tokens(messages)} prompt tokens (the model's own tokenizer)")
    if usage:
        rate = usage["output_tokens"] / elapsed if elapsed > 0 else 0.0
        print(
            f"usage:  {usage['input_tokens']} in, {usage['output_tokens']} out ({rate:.0f} tok/s)"
        )
    print(f"health: {llm.health()}")


if __name__ == "__main__":
    main()
