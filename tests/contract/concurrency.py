"""Many calls on one model at once: what the contract suite runs in a child process, so that a
deadlock (a stream holding a lock no worker thread can reach) fails one test instead of
freezing the session. Prints one JSON line: what finished, and what failed how.

    python -m tests.contract.concurrency ROW_ID TARGET PHASE N

``TARGET`` is what the row builds from (the proxy's URL, or the GGUF path); ``PHASE``:

* ``astreams``: ``N`` ``astream`` calls gathered at once, then ``abatch`` of ``N`` inputs with
  ``streaming=True`` (both go through asyncio's default executor where a backend uses threads);
* ``interleaved``: in one thread, a stream paused after its first chunk while the same model
  answers an ``invoke``, then two streams advanced in turn (``zip``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk


def _merge(chunks: list[Any]) -> AIMessageChunk:
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return total


def _usage_ok(message: Any) -> bool:
    usage = getattr(message, "usage_metadata", None)
    return usage is not None and usage["input_tokens"] > 0


_STARTED = time.monotonic()


def _progress(what: str) -> None:
    """A line on stderr: what a parent that gives up waiting shows."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {what}", file=sys.stderr, flush=True)


class Progress(BaseCallbackHandler):
    """Reports liveness: each call that ends, and (at most every 2 s) that tokens flow."""

    def __init__(self) -> None:
        self.last = 0.0
        self.ended = 0

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        if time.monotonic() - self.last > 2:
            self.last = time.monotonic()
            _progress(f"tokens flowing ({self.ended} calls ended)")

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ended += 1
        _progress(f"{self.ended} calls ended")


async def astreams(model: Any, streaming: Any, n: int) -> dict[str, Any]:
    """``n`` astreams at once on ``model``, then ``abatch`` of ``n`` on ``streaming`` (the same
    model built with ``streaming=True``)."""

    progress = Progress()
    config: Any = {"callbacks": [progress]}

    async def one(i: int) -> bool:
        chunks = [c async for c in model.astream(f"Say the number {i}.", config=config)]
        return bool(chunks) and _usage_ok(_merge(chunks))

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    _progress("all astreams returned; abatch next")
    batch = await streaming.abatch(
        [f"Name the colour number {i}." for i in range(n)], config=config, return_exceptions=True
    )
    _progress("abatch returned")
    return {
        "astream_ok": sum(r is True for r in results),
        "astream_errors": [f"{type(r).__name__}: {r}" for r in results if r is not True],
        "abatch_ok": sum(not isinstance(r, BaseException) for r in batch),
        "abatch_errors": [
            f"{type(r).__name__}: {r}" for r in batch if isinstance(r, BaseException)
        ],
    }


def interleaved(model: Any) -> dict[str, Any]:
    """A paused stream and a call on the same model, in one thread; then two streams in turn."""
    paused = model.stream("Count from one to five.")
    first = next(paused)
    _progress("a stream paused after its first chunk; invoke next")
    answer = model.invoke("Say hi.")
    _progress("invoke returned; the paused stream goes on")
    rest = list(paused)
    _progress("the paused stream finished; two streams in turn next")
    pairs = list(zip(model.stream("Say one."), model.stream("Say two."), strict=False))
    _progress("both streams finished")
    return {
        "paused_stream_chunks": 1 + len(rest),
        "paused_stream_finished": bool(first is not None and rest),
        "invoke_while_paused": bool(answer.content is not None),
        "zip_pairs": len(pairs),
    }


def main(argv: list[str]) -> int:
    from tests.contract.rows import BY_ID

    row_id, target, phase, n = argv[0], argv[1], argv[2], int(argv[3])
    row = BY_ID[row_id]
    # Retries: a peer that caps concurrent requests (TGI answers 429 "overloaded" past its
    # max_concurrent_requests) is retried, as a caller would be; a deadlock is not.
    # What is asserted is that every call finishes: two tokens each are enough.
    model = row.build(target, max_retries=8, max_tokens=2)
    if phase == "astreams":
        streaming = row.build(target, max_retries=8, max_tokens=2, streaming=True)
        out = asyncio.run(astreams(model, streaming, n))
    elif phase == "interleaved":
        out = interleaved(model)
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
