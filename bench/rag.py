"""``create_rag_chain`` with the embedded model: what packing costs, and how often it cites.

Two markdown tables on stdout, with ``ChatLlamaCpp(temperature=0, seed=1)`` (the bundled
SmolLM2-135M-Instruct GGUF, window 2048) and ``answer_tokens=64``:

1. Packing cost: ``chain.pack(question, [], docs)`` (counting with the model's tokenizer, no
   generation) against the model call for the packed prompt
   (``llm.invoke(packed.messages, max_tokens=64)``), in three situations: far from the limit
   (3 short documents: the cheap bound decides), and near it (8 long documents, about 3x the
   window in all) with ``on_overflow="cut"`` and with ``"drop"``. Packs run interleaved in
   rounds whose order rotates; medians with their interquartile range. Before every timed
   model call the model's KV cache is reset (untimed), so each call evaluates its whole prompt,
   as a new question with new documents would; llama.cpp would otherwise reuse the prefix of
   the previous identical prompt.
2. Citation rate on ``bench/rag_questions.json`` (12 questions over made-up facts, 3–4 short
   documents each, one of which holds the answer; each item's documents shuffled with a fixed
   seed): how often the answer cites any ``[n]``, cites the document that holds the answer,
   says "I don't know", and contains the expected answer. Reported, not asserted.

Usage: ``.venv/bin/python bench/rag.py [--pack-reps N] [--call-reps N] [--answers]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

HERE = Path(__file__).resolve().parent
QUESTIONS = HERE / "rag_questions.json"

ANSWER_TOKENS = 64
SHUFFLE_SEED = 20240601  # the per-item document order of the citation set
TRACING_VARS = (
    "LANGSMITH_TRACING",
    "LANGCHAIN_TRACING_V2",
    "LANGCHAIN_TRACING",
    "LANGSMITH_API_KEY",
)

CITATION = re.compile(r"\[(\d+)\]")
DONT_KNOW = re.compile(r"\bI\s+(?:don['’]t|do\s+not)\s+know\b", re.IGNORECASE)

# The long documents of the near-limit situations: plain made-up harbour facts, one per
# sentence, so a cut falls at a sentence boundary.
PLACES = (
    "Venna", "Orsk", "Talby", "Merrow", "Quill", "Dassen", "Ebbing", "Falk",
    "Garrow", "Hesk", "Ilden", "Jorvik", "Kell", "Lunder", "Mossby", "Nareth",
)  # fmt: skip
GOODS = ("timber", "salt", "wool", "grain", "coal", "fish", "wine", "copper", "glass", "tea")
SENTENCES = (
    "The harbour at {p} handled {n} ships in {y}.",
    "Most of the cargo landed at {p} that year was {g}.",
    "A new pier was built at {p} in {y}, long enough for {m} ships at once.",
    "The pilots of {p} guided {n} vessels through the sandbanks in {y}.",
    "In {y} the price of {g} at {p} rose by {m} percent after a poor season.",
    "The customs house of {p} recorded {n} barrels of {g} in {y}.",
    "Storms closed the harbour at {p} for {m} days in the winter of {y}.",
    "The merchants of {p} sent {g} inland on {m} barges a week.",
)
LONG_QUESTION = "Which harbour handled the most ships, and in which year?"
N_LONG = 8


# ------------------------------------------------------------------ helpers


class ListRetriever(BaseRetriever):
    """Returns its documents, in order."""

    documents: list[Document]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return list(self.documents)


@dataclass
class Stat:
    median: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, xs: list[float]) -> Stat:
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        return cls(statistics.median(xs), q[0], q[2], len(xs))


def fmt_t(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_stat(st: Stat) -> str:
    return f"{fmt_t(st.median)} (IQR {fmt_t(st.q1)}–{fmt_t(st.q3)}, n={st.n})"


def render(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cells = [head, *rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def rounds(contenders: dict[str, Callable[[], Any]], n_rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, one call each a round, the order rotating."""
    names = list(contenders)
    samples: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter
    for r in range(n_rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = clock()
            contenders[name]()
            samples[name].append(clock() - t0)
    return samples


def quiet_gc() -> None:
    """Collect, then freeze what is alive, so later collections stay small and even."""
    gc.collect()
    gc.freeze()


def pct(k: int, n: int) -> str:
    return f"{k / n:.0%}" if n else "–"


# ------------------------------------------------------------------ 1. packing cost


def long_documents(llm: Any, target_tokens: int) -> list[Document]:
    """``N_LONG`` documents of about ``target_tokens`` each (made-up harbour facts)."""
    docs = []
    for k in range(N_LONG):
        rng = random.Random(k)
        sentences: list[str] = []
        while not sentences or llm.count_tokens(" ".join(sentences)) < target_tokens:
            sentences.append(
                rng.choice(SENTENCES).format(
                    p=rng.choice(PLACES),
                    g=rng.choice(GOODS),
                    n=rng.randint(40, 2400),
                    m=rng.randint(2, 30),
                    y=rng.randint(1820, 1990),
                )
            )
        docs.append(
            Document(page_content=" ".join(sentences), metadata={"title": f"Harbour records {k}"})
        )
    return docs


@dataclass
class Situation:
    label: str
    chain: Any
    question: str
    docs: list[Document]


def check_situation(key: str, packed: Any, n_docs: int) -> None:
    """Each situation must be what its label says."""
    fit = packed.fit
    if not fit.fits or packed.empty_answer is not None:
        raise RuntimeError(f"{key}: the packed prompt does not fit or is empty: {fit}")
    if key == "far" and (fit.exact or packed.cut or packed.dropped or len(packed.documents) != 3):
        raise RuntimeError(f"far: not all 3 documents in, decided by the bound: {fit}")
    if key == "cut" and not packed.cut:
        raise RuntimeError(f"cut: no document was cut ({len(packed.documents)}/{n_docs} in)")
    if key == "drop" and (packed.cut or not packed.dropped):
        raise RuntimeError(f"drop: expected drops and no cuts ({packed.dropped} dropped)")


def bench_packing(
    llm: Any, situations: dict[str, Situation], pack_reps: int, call_reps: int
) -> list[tuple[str, ...]]:
    packs: dict[str, Callable[[], Any]] = {}
    packed: dict[str, Any] = {}
    for key, s in situations.items():
        packs[key] = lambda s=s: s.chain.pack(s.question, [], s.docs)
        packed[key] = packs[key]()
        check_situation(key, packed[key], len(s.docs))
    rounds(packs, 3)  # warm-up
    quiet_gc()
    pack_s = rounds(packs, pack_reps)
    gc.unfreeze()

    llama = llm.engine.llama
    call_s: dict[str, list[float]] = {k: [] for k in situations}
    answers: dict[str, str] = {}
    llm.invoke(packed["far"].messages, max_tokens=ANSWER_TOKENS)  # warm-up, untimed
    for r in range(call_reps):
        keys = list(situations)
        keys = keys[r % len(keys) :] + keys[: r % len(keys)]
        for key in keys:
            llama.reset()  # no prefix reuse from the previous call: the whole prompt is evaluated
            t0 = time.perf_counter()
            msg = llm.invoke(packed[key].messages, max_tokens=ANSWER_TOKENS)
            call_s[key].append(time.perf_counter() - t0)
            answers[key] = msg.text

    rows = []
    for key, s in situations.items():
        p = packed[key]
        pack, call = Stat.of(pack_s[key]), Stat.of(call_s[key])
        out_tokens = llm.count_tokens(answers[key]) if answers[key] else 0
        rows.append(
            (
                s.label,
                f"{len(p.documents)}/{len(s.docs)} in, {p.cut} cut, {p.dropped} dropped",
                f"{p.fit.prompt_tokens} ({'exact' if p.fit.exact else 'bound'})",
                fmt_stat(pack),
                f"{fmt_stat(call)}, ~{out_tokens} tokens out",
                f"{pack.median / call.median:.2%}",
            )
        )
    return rows


# ------------------------------------------------------------------ 2. citation rate


@dataclass
class Outcome:
    question: str
    position: int  # 1-based place of the answer document in the prompt
    answer: str
    cites: list[int]
    right: bool
    wrong: bool
    dont_know: bool
    expected: bool


def bench_citations(llm: Any, items: list[dict[str, Any]]) -> list[Outcome]:
    from langchain_multillm.chains import create_rag_chain

    rng = random.Random(SHUFFLE_SEED)
    llama = llm.engine.llama
    out = []
    for item in items:
        docs = [
            Document(page_content=d["text"], metadata={"title": d["title"], "index": i})
            for i, d in enumerate(item["documents"])
        ]
        rng.shuffle(docs)
        chain = create_rag_chain(llm, ListRetriever(documents=docs), answer_tokens=ANSWER_TOKENS)
        llama.reset()  # each item from a clean cache, so the run does not depend on the order
        result = chain.invoke({"question": item["question"]})
        answer = result["answer"]
        sources = result["sources"]
        holds = {s["id"] for s in sources if s["metadata"]["index"] == item["answer"]}
        cites = [int(n) for n in CITATION.findall(answer)]
        valid = [n for n in cites if 1 <= n <= len(sources)]
        out.append(
            Outcome(
                question=item["question"],
                position=next(iter(holds)) if holds else 0,
                answer=answer,
                cites=cites,
                right=any(n in holds for n in valid),
                wrong=any(n not in holds for n in cites),
                dont_know=bool(DONT_KNOW.search(answer)),
                expected=item["expected"].lower() in answer.lower(),
            )
        )
    return out


def citation_rows(outcomes: list[Outcome]) -> list[tuple[str, ...]]:
    n = len(outcomes)
    measures = (
        ("cites any `[n]`", sum(bool(o.cites) for o in outcomes)),
        ("cites the document that holds the answer", sum(o.right for o in outcomes)),
        ("cites a document that does not (or no such `[n]`)", sum(o.wrong for o in outcomes)),
        ('says "I don\'t know"', sum(o.dont_know for o in outcomes)),
        ("contains the expected answer", sum(o.expected for o in outcomes)),
        (
            "expected answer and the right citation",
            sum(o.expected and o.right for o in outcomes),
        ),
    )
    return [(label, f"{k}/{n}", pct(k, n)) for label, k in measures]


# ------------------------------------------------------------------ main


def versions() -> str:
    from importlib.metadata import version

    pkgs = ("llama-cpp-python", "langchain-core")
    return ", ".join(f"{p} {version(p)}" for p in pkgs)


def main() -> int:
    parser = argparse.ArgumentParser(description="RAG chain packing cost and citation rate")
    parser.add_argument("--pack-reps", type=int, default=30, help="timed packs per situation")
    parser.add_argument("--call-reps", type=int, default=3, help="timed model calls per situation")
    parser.add_argument("--answers", action="store_true", help="also print every answer")
    args = parser.parse_args()
    for var in TRACING_VARS:
        os.environ.pop(var, None)

    from langchain_multillm import ChatLlamaCpp
    from langchain_multillm.chains import create_rag_chain

    started = time.perf_counter()
    llm = ChatLlamaCpp(temperature=0, seed=1)
    window = llm.get_limits().context_window
    assert window is not None
    items = json.loads(QUESTIONS.read_text(encoding="utf-8"))["items"]

    first = items[0]
    short = [
        Document(page_content=d["text"], metadata={"title": d["title"]})
        for d in first["documents"][:3]
    ]
    long = long_documents(llm, window * 3 // N_LONG)
    long_tokens = sum(llm.count_tokens(d.page_content) for d in long)
    retriever = ListRetriever(documents=[])

    def chain(on_overflow: Any) -> Any:
        return create_rag_chain(
            llm, retriever, answer_tokens=ANSWER_TOKENS, on_overflow=on_overflow
        )

    situations = {
        "far": Situation("far: 3 short docs", chain("cut"), first["question"], short),
        "cut": Situation(f"near: {N_LONG} long docs, `cut`", chain("cut"), LONG_QUESTION, long),
        "drop": Situation(f"near: {N_LONG} long docs, `drop`", chain("drop"), LONG_QUESTION, long),
    }
    t0 = time.perf_counter()
    pack_rows = bench_packing(llm, situations, args.pack_reps, args.call_reps)
    pack_elapsed = time.perf_counter() - t0
    t0 = time.perf_counter()
    outcomes = bench_citations(llm, items)
    cite_elapsed = time.perf_counter() - t0
    elapsed = time.perf_counter() - started

    print(f"## RAG chain with the embedded model ({elapsed:.0f} s)")
    print()
    print(f"### Packing against the model call ({pack_elapsed:.0f} s)")
    print()
    print(
        render(
            (
                "situation",
                "packed",
                "prompt tokens",
                "`pack` median",
                "model call median",
                "pack / call",
            ),
            pack_rows,
        )
    )
    print()
    print(
        f"Window {window}, answer_tokens={ANSWER_TOKENS}. Far: the first 3 documents of "
        f"the first citation item. Near: {N_LONG} documents of made-up harbour records, "
        f"{long_tokens} tokens in all ({long_tokens / window:.1f}x the window). `pack`: "
        f"{args.pack_reps} interleaved rounds after 3 warm-up; model call: "
        f"`llm.invoke(packed.messages, max_tokens={ANSWER_TOKENS})`, {args.call_reps} "
        "interleaved rounds after one warm-up call, the KV cache reset (untimed) before each."
    )
    print()
    positions = sorted(o.position for o in outcomes)
    spread = ", ".join(f"{p}: {positions.count(p)}" for p in sorted(set(positions)))
    print(f"### Citation rate ({cite_elapsed:.0f} s)")
    print()
    print(render(("measure", "count", "%"), citation_rows(outcomes)))
    print()
    print(
        f"{len(outcomes)} questions from {QUESTIONS.relative_to(HERE.parent)}, 3–4 documents "
        f"each, shuffled with seed {SHUFFLE_SEED} (answer document at position {spread}); "
        f"default prompt, answer_tokens={ANSWER_TOKENS}, temperature 0, seed 1; KV cache "
        "reset before each. Citations are `[n]` in the answer; reported, not asserted."
    )
    if args.answers:
        print()
        rows = [
            (str(i), str(o.position), o.question, " ".join(o.answer.split()))
            for i, o in enumerate(outcomes, 1)
        ]
        print(render(("#", "answer doc", "question", "answer"), rows))
    print()
    print(
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()} on "
        f"{platform.machine()}; {versions()}; model {Path(llm.model_path).name}, "
        f"n_threads={llm.n_threads}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
