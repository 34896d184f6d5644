"""The bench of the contract suite: builds a row's models, instruments them, counts prompts as
the peer does, and undoes everything afterwards."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk

from langchain_multillm.fit import Limits
from tests.contract.proxy import FaultProxy
from tests.contract.rows import Instrument, Row


# The filler whose tokens the suite counts: "the the the ...". One token per word in SmolLM2's
# tokenizer and in o200k_base (checked at calibration): 4 bytes per token, so a prompt of it
# is far over a byte bound long before it is over the window.
def filler(words: int) -> str:
    return " ".join(["the"] * words)


@dataclass
class Calibration:
    """Prompt tokens of ``filler(k)`` as one user message, as the peer counts them:
    ``base + k`` (the chat template's and the message's own tokens, then one per word)."""

    base: int

    def words_for(self, tokens: int) -> int:
        return tokens - self.base


_CALIBRATIONS: dict[str, Calibration] = {}


@dataclass
class Bench:
    """The row under test, its peer, and an instrument; builds models and cleans up."""

    row: Row
    peer: Any
    instrument: Instrument
    proxy: FaultProxy | None
    models: list[Any] = field(default_factory=list)

    @property
    def target(self) -> Any:
        return self.proxy.url if self.proxy is not None else self.peer

    def make(self, **overrides: Any) -> Any:
        """A fresh model of the row (through the proxy for HTTP rows), instrumented."""
        model = self.row.build(self.target, **overrides)
        self.models.append(model)
        self.instrument.attach(model)
        return model

    def require(self, promise: str) -> None:
        """Skip, saying why, where the row marks ``promise`` as not applicable."""
        why = self.row.why_not(promise)
        if why:
            pytest.skip(f"{self.row.id}: {promise} does not apply: {why}")

    def calibration(self) -> Calibration:
        """How the peer counts ``filler(k)`` (asked once per row and session, from the usage of
        three one-token generations: the peer's truth, whether or not the model counts exactly)."""
        cached = _CALIBRATIONS.get(self.row.id)
        if cached is not None:
            return cached
        model = self.make()
        seen = {}
        for words in (24, 48, 96):
            usage = model.invoke(filler(words), max_tokens=1).usage_metadata
            assert usage is not None, f"{self.row.id}: no usage to calibrate with"
            seen[words] = usage["input_tokens"]
        slope = (seen[96] - seen[48]) / 48
        assert slope == 1 and seen[48] - seen[24] == 24, (
            f"{self.row.id}: 'the the ...' is not one token per word for this peer: {seen}; "
            "the suite's filler needs changing"
        )
        calibration = Calibration(base=seen[24] - 24)
        _CALIBRATIONS[self.row.id] = calibration
        return calibration

    def prompt_of(self, tokens: int) -> str:
        """A user message the peer counts as exactly ``tokens`` prompt tokens."""
        words = self.calibration().words_for(tokens)
        assert words > 0, f"{self.row.id}: {tokens} tokens is less than the template's own"
        return filler(words)

    def close(self) -> None:
        self.instrument.close()
        for model in self.models:
            close = getattr(model, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # never connected, or down
                    close()
        if self.proxy is not None:
            errors = list(self.proxy.errors)
            self.proxy.errors.clear()
            assert not errors, f"the contract proxy itself failed: {errors}"


def input_room(limits: Limits, max_tokens: int | None) -> int:
    """The most prompt tokens that fit with ``max_tokens`` of output (None: one token)."""
    room = []
    if limits.max_input_tokens is not None:
        room.append(limits.max_input_tokens)
    if limits.context_window is not None:
        room.append(limits.context_window - (max_tokens or 1))
    assert room, f"no limit is known: {limits}"
    return min(room)


def merge(chunks: list[Any]) -> AIMessageChunk:
    """A stream's chunks added up into one message."""
    assert chunks, "the stream gave no chunk"
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return total


async def acollect(stream: Any) -> list[Any]:
    """An async stream's items, in order."""
    return [c async for c in stream]
