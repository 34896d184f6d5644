"""Client-side overhead of ``ChatVLLMServer``, next to the raw ``openai`` SDK and ``ChatOpenAI``.

One run, one table (markdown, on stdout). Every number is a median over many repetitions
after a warm-up; contenders run interleaved in rounds (their order rotating) so drift, GC and
CPU-frequency noise fall on all of them alike. All three talk to one local fake vLLM server
(``bench/fake_openai_server.py``, a plain-asyncio HTTP server started in its own process on a
free port) that answers at once, so what is measured is the client's own cost.

1. ``invoke``: raw SDK ``chat.completions.create`` vs ``ChatOpenAI.invoke`` vs
   ``ChatVLLMServer.invoke``.
2. stream: consuming a whole stream (20 content chunks, a finish chunk, a usage chunk).
3. ``check_fit``: far from the limit (decided by the cheap bound, no request) and near it
   (the bound cannot decide: one exact ``/tokenize`` count), against one ``invoke``.
4. import times, each in a fresh interpreter.

Usage: ``python bench/run.py [--quick] [--strict]`` (``--strict``: exit 1 if a target fails).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER = HERE / "fake_openai_server.py"

MODEL = "bench/fake-model"  # what the fake server serves; the same name for every contender
PROMPT = "Write one short sentence about the sea."  # the same message for every contender
MAX_TOKENS = 64
EXPECTED = "".join(f"w{i} " for i in range(20))  # the fake server's fixed completion
WINDOW = 32768  # the fake server's max_model_len

# Near the limit: ~30 kB of text plus max_tokens=4096 is over the window by the byte bound,
# but well inside it by the exact count (the fake tokenizer gives ~1 token per 4 characters).
NEAR_PROMPT = "lorem " * 5000
NEAR_MAX_TOKENS = 4096
TRACING_VARS = (
    "LANGSMITH_TRACING",
    "LANGCHAIN_TRACING_V2",
    "LANGCHAIN_TRACING",
    "LANGSMITH_API_KEY",
)

# Fresh-interpreter import snippets; each prints the seconds its import statement took.
IMPORTS: dict[str, tuple[str, str]] = {
    "lm": ("import langchain_multillm", ""),
    "lo": ("import langchain_openai", ""),
    "lm_cls": (
        "from langchain_multillm import ChatVLLMServer",
        "assert ChatVLLMServer.__module__ == 'langchain_multillm.backends.vllm_server'\n"
        "assert 'langchain_multillm.backends.vllm_server' in sys.modules",
    ),
    "lo_cls": ("from langchain_openai import ChatOpenAI", "assert ChatOpenAI.__name__"),
}
IMPORT_TEMPLATE = """\
import sys, time
_t0 = time.perf_counter()
{stmt}
_dt = time.perf_counter() - _t0
{check}
print(repr(_dt))
"""


@dataclass(frozen=True)
class Plan:
    warmup: int
    call_rounds: int  # rounds of invoke / stream, each contender `per_round` calls a round
    per_round: int
    fit_rounds: int  # rounds of check_fit (far: a batch of `far_batch` calls; near: one call)
    far_batch: int
    import_runs: int


FULL = Plan(warmup=40, call_rounds=150, per_round=3, fit_rounds=300, far_batch=20, import_runs=7)
QUICK = Plan(warmup=15, call_rounds=40, per_round=2, fit_rounds=80, far_batch=20, import_runs=3)


# ------------------------------------------------------------------ the fake server


class Server:
    """The fake server in its own process; stopped by :meth:`stop` (also at exit or SIGTERM)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        atexit.register(self.stop)
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = ""
        while not line.startswith("PORT "):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None or not sel.select(left):
                raise RuntimeError(f"the fake server did not start (exit code {self.proc.poll()})")
            line = self.proc.stdout.readline()
        sel.close()
        self.port = int(line.split()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/_stats").json()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# ------------------------------------------------------------------ timing helpers


def rounds(
    contenders: dict[str, Callable[[], Any]], n_rounds: int, per_round: int, batch: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each contender, interleaved round by round (order rotating).

    A sample is one call, or the mean over ``batch`` calls for very cheap ones.
    """
    names = list(contenders)
    samples: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter
    for r in range(n_rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn = contenders[name]
            out = samples[name]
            for _ in range(per_round):
                t0 = clock()
                for _ in range(batch):
                    fn()
                out.append((clock() - t0) / batch)
    return samples


def quiet_gc() -> None:
    """Collect, then freeze what is alive, so later collections stay small and even."""
    gc.collect()
    gc.freeze()


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


# ------------------------------------------------------------------ the measurements


def contenders_for(base_url: str) -> dict[str, Any]:
    import openai
    from langchain_openai import ChatOpenAI

    from langchain_multillm import ChatVLLMServer

    return {
        "sdk": openai.OpenAI(base_url=base_url, api_key="x", max_retries=0),
        "lco": ChatOpenAI(
            base_url=base_url,
            api_key="x",  # type: ignore[arg-type]
            model=MODEL,
            max_retries=0,
            max_tokens=MAX_TOKENS,  # type: ignore[call-arg]
            stream_usage=True,
        ),
        "vllm": ChatVLLMServer(
            base_url=base_url, model=MODEL, max_retries=0, max_tokens=MAX_TOKENS
        ),
    }


def bench_calls(c: dict[str, Any], plan: Plan) -> tuple[dict[str, Stat], dict[str, Stat]]:
    sdk, lco, vllm = c["sdk"], c["lco"], c["vllm"]
    messages = [{"role": "user", "content": PROMPT}]

    def sdk_invoke() -> str:
        r = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS)
        return r.choices[0].message.content

    def sdk_stream() -> str:
        parts = []
        for ch in sdk.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if ch.choices and ch.choices[0].delta.content:
                parts.append(ch.choices[0].delta.content)
        return "".join(parts)

    def lc_stream(model: Any) -> Callable[[], str]:
        def run() -> str:
            return "".join(str(ch.content) for ch in model.stream(PROMPT))

        return run

    invokes: dict[str, Callable[[], Any]] = {
        "sdk": sdk_invoke,
        "lco": lambda: lco.invoke(PROMPT).content,
        "vllm": lambda: vllm.invoke(PROMPT).content,
    }
    streams: dict[str, Callable[[], Any]] = {
        "sdk": sdk_stream,
        "lco": lc_stream(lco),
        "vllm": lc_stream(vllm),
    }
    # Correctness first (and the first calls: connections, ChatVLLMServer's limits discovery).
    for group in (invokes, streams):
        for name, fn in group.items():
            got = fn()
            if got != EXPECTED:
                raise RuntimeError(f"{name} returned {got!r}, expected {EXPECTED!r}")
    usage = list(vllm.stream(PROMPT))[-1].usage_metadata
    if not usage or usage["total_tokens"] != 32:
        raise RuntimeError(f"ChatVLLMServer's stream lost its usage chunk: {usage!r}")

    for group in (invokes, streams):
        rounds(group, 1, plan.warmup)
    quiet_gc()
    inv = rounds(invokes, plan.call_rounds, plan.per_round)
    quiet_gc()
    st = rounds(streams, plan.call_rounds, plan.per_round)
    return {k: Stat.of(v) for k, v in inv.items()}, {k: Stat.of(v) for k, v in st.items()}


def bench_fit(vllm: Any, server: Server, plan: Plan) -> tuple[Stat, Stat]:
    far = vllm.check_fit(PROMPT, max_tokens=MAX_TOKENS)
    near = vllm.check_fit(NEAR_PROMPT, max_tokens=NEAR_MAX_TOKENS)
    if not (far.fits and not far.exact):
        raise RuntimeError(f"far check_fit was not decided by the bound: {far}")
    if not (near.fits and near.exact):
        raise RuntimeError(f"near check_fit did not count exactly: {near}")
    contenders = {
        "far": lambda: vllm.check_fit(PROMPT, max_tokens=MAX_TOKENS),
        "near": lambda: vllm.check_fit(NEAR_PROMPT, max_tokens=NEAR_MAX_TOKENS),
    }
    rounds(contenders, 1, plan.warmup)
    quiet_gc()
    # Far and near are each timed in their own loop (far in batches); the server's request
    # counts show that far sends nothing and near sends exactly one /tokenize per check.
    before = server.stats()
    far_s = rounds({"far": contenders["far"]}, plan.fit_rounds, 1, batch=plan.far_batch)["far"]
    mid = server.stats()
    near_s = rounds({"near": contenders["near"]}, plan.fit_rounds, 1)["near"]
    after = server.stats()
    key = "POST /tokenize"
    if mid.get(key, 0) != before.get(key, 0):
        raise RuntimeError("far check_fit sent /tokenize requests")
    if after.get(key, 0) - mid.get(key, 0) != plan.fit_rounds:
        raise RuntimeError("near check_fit did not send exactly one /tokenize per check")
    return Stat.of(far_s), Stat.of(near_s)


def bench_imports(plan: Plan) -> dict[str, Stat]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    codes = {
        name: IMPORT_TEMPLATE.format(stmt=stmt, check=check)
        for name, (stmt, check) in IMPORTS.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in codes}
    names = list(codes)
    for r in range(plan.import_runs + 1):  # round 0 warms the disk cache and .pyc files
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out = subprocess.run(
                [sys.executable, "-c", codes[name]],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"import snippet {name!r} failed:\n{out.stderr}")
            if r:
                samples[name].append(float(out.stdout.strip().splitlines()[-1]))
    return {k: Stat.of(v) for k, v in samples.items()}


# ------------------------------------------------------------------ the table


@dataclass
class Row:
    what: str
    value: str
    comparison: str
    target: str
    result: str


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def build_rows(
    inv: dict[str, Stat], st: dict[str, Stat], far: Stat, near: Stat, imp: dict[str, Stat]
) -> list[Row]:
    rows: list[Row] = []
    labels = {"sdk": "raw openai SDK", "lco": "ChatOpenAI", "vllm": "ChatVLLMServer"}
    for title, stats, limit in (("invoke", inv, 1.10), ("stream (whole)", st, 1.20)):
        base = stats["sdk"].median
        for key in ("sdk", "lco", "vllm"):
            ratio = stats[key].median / base
            delta = stats[key].median - base
            sign = "+" if delta >= 0 else "−"
            cmp = "baseline" if key == "sdk" else f"{ratio:.2f}x SDK ({sign}{fmt_t(abs(delta))})"
            target, result = "", ""
            if key == "vllm":
                target, result = f"<= {limit:.2f}x SDK", verdict(ratio <= limit)
            rows.append(Row(f"{title}: {labels[key]}", fmt_stat(stats[key]), cmp, target, result))
    call = inv["vllm"].median
    rows.append(
        Row(
            "check_fit far from the limit (bound, no request)",
            fmt_stat(far),
            f"{far.median / call:.2%} of a ChatVLLMServer invoke",
            "<= 5% of a call",
            verdict(far.median / call <= 0.05),
        )
    )
    rows.append(
        Row(
            "check_fit near the limit (one exact /tokenize)",
            fmt_stat(near),
            f"{near.median / call:.2%} of a ChatVLLMServer invoke",
            "",
            "",
        )
    )
    pairs = (
        ("lm", "lo", "import langchain_multillm", "import langchain_openai", 0.30),
        (
            "lm_cls",
            "lo_cls",
            "from langchain_multillm import ChatVLLMServer",
            "from langchain_openai import ChatOpenAI",
            1.00,
        ),
    )
    for ours, theirs, ours_label, theirs_label, limit in pairs:
        ratio = imp[ours].median / imp[theirs].median
        rows.append(
            Row(
                f"`{ours_label}`",
                fmt_stat(imp[ours]),
                f"{ratio:.2f}x `{theirs_label}`",
                f"<= {limit:.2f}x",
                verdict(ratio <= limit),
            )
        )
        rows.append(Row(f"`{theirs_label}`", fmt_stat(imp[theirs]), "baseline", "", ""))
    return rows


def render(rows: list[Row]) -> str:
    head = ("measurement", "median", "comparison", "target", "result")
    cells = [head] + [(r.what, r.value, r.comparison, r.target, r.result) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import version

    pkgs = ("langchain-core", "langchain-openai", "openai", "httpx", "pydantic")
    return ", ".join(f"{p} {version(p)}" for p in pkgs)


def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description="ChatVLLMServer overhead benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a rough look)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target fails")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _sigterm)
    # No tracing or callbacks from the environment: they would add network calls to LangChain.
    for var in TRACING_VARS:
        os.environ.pop(var, None)

    started = time.perf_counter()
    imp = bench_imports(plan)
    server = Server()
    try:
        server.start()
        c = contenders_for(server.base_url)
        inv, st = bench_calls(c, plan)
        far, near = bench_fit(c["vllm"], server, plan)
        for model in c.values():
            if hasattr(model, "close"):
                model.close()
    finally:
        server.stop()
    elapsed = time.perf_counter() - started

    rows = build_rows(inv, st, far, near, imp)
    print(f"## ChatVLLMServer overhead ({'quick' if args.quick else 'full'} run, {elapsed:.0f} s)")
    print()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{versions()}."
    )
    print(
        f"Fake vLLM server (plain asyncio, own process) on 127.0.0.1; model {MODEL!r}; "
        f"message {PROMPT!r}, max_tokens={MAX_TOKENS}; stream = 20 content chunks + finish "
        f"+ usage + [DONE]. Calls: {plan.call_rounds} interleaved rounds x {plan.per_round} "
        f"after {plan.warmup} warm-up each; check_fit: {plan.fit_rounds} samples (far: mean of "
        f"{plan.far_batch} calls each; near: {len(NEAR_PROMPT)} chars, "
        f"max_tokens={NEAR_MAX_TOKENS}, window {WINDOW}); imports: {plan.import_runs} fresh "
        "interpreters each, after one warm-up round."
    )
    print()
    print(render(rows))
    failed = [r.what for r in rows if r.result == "FAIL"]
    print()
    print(f"{len(failed)} target(s) missed" + (": " + "; ".join(failed) if failed else ""))
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
