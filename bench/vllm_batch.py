"""ChatVLLM.batch against raw vLLM and against a naive LangChain wrapper; prints a table.

Run from the vLLM venv (`make bench-vllm`, or `.peers/vllm/bin/python bench/vllm_batch.py`).

* ``ChatVLLM.batch`` of 32 chats (this package; every chat in flight in the engine at once);
* raw ``vllm.LLM.chat`` of the same 32 chats in one call, in a separate process run right after
  (only one vLLM engine fits these machines at a time);
* a naive wrapper, in that second process: a minimal ``BaseChatModel`` whose ``_generate``
  calls the sync engine (``vllm.LLM.chat``) for its one input, batched through LangChain's
  default thread pool (``vllm.LLM`` is not thread-safe, so the calls take turns);
* single-stream tokens per second: ``ChatVLLM.stream`` of one chat against raw ``LLM.chat``
  of that one chat.

Every request generates exactly ``--max-tokens`` tokens (``ignore_eos``), so throughputs compare
the same work. Defaults: SmolLM2 (``.peers/smollm2-hf``), window 2048, bfloat16, eager, on the
CPU with VLLM_CPU_KVCACHE_SPACE=1 (PEERS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / ".peers" / "smollm2-hf"
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_CACHE_ROOT": str(ROOT / ".peers" / "cache"),
}
TOPICS = [
    "the sea", "a city", "bread", "music", "rain", "a cat", "the moon", "trains",
    "coffee", "a forest", "winter", "books", "a bridge", "the desert", "bees", "a garden",
    "rivers", "snow", "a market", "clocks", "the wind", "an island", "tea", "mountains",
    "a lamp", "bicycles", "the sky", "a harbour", "apples", "a storm", "owls", "a violin",
]  # fmt: skip


def chats(n: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}."}]
        for i in range(n)
    ]


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "max_model_len": 2048,
        "dtype": "bfloat16",
        "enforce_eager": True,
    }


# ------------------------------------------------------------------ phase 1: this package


def run_package(args: argparse.Namespace) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage

    from langchain_multillm import ChatVLLM

    convs = [[HumanMessage(c[0]["content"])] for c in chats(args.n)]
    t0 = time.perf_counter()
    chat = ChatVLLM(**engine_settings(args), temperature=0, max_tokens=args.max_tokens).load()
    load_s = time.perf_counter() - t0
    chat.batch(convs[:4], max_tokens=8)  # warm-up
    best = None
    for _ in range(args.repeat):
        t = time.perf_counter()
        outs = chat.batch(convs, ignore_eos=True)
        dt = time.perf_counter() - t
        tokens = sum(o.usage_metadata["output_tokens"] for o in outs)
        if best is None or tokens / dt > best[0] / best[1]:
            best = (tokens, dt)
    assert best is not None
    t = time.perf_counter()
    n_stream = 0
    first = None
    for chunk in chat.stream(convs[0], max_tokens=args.stream_tokens, ignore_eos=True):
        if first is None and chunk.content:
            first = time.perf_counter() - t
        if chunk.usage_metadata:
            n_stream = chunk.usage_metadata["output_tokens"]
    stream_s = time.perf_counter() - t
    chat.release()
    return {
        "load_s": load_s,
        "batch_tokens": best[0],
        "batch_s": best[1],
        "stream_tokens": n_stream,
        "stream_s": stream_s,
        "stream_ttft_s": first,
    }


# ------------------------------------------------------------------ phase 2: raw vLLM, naive


def run_raw(args: argparse.Namespace) -> dict[str, Any]:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(**engine_settings(args))
    load_s = time.perf_counter() - t0
    convs = chats(args.n)
    sp = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.chat(convs[:4], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)  # warm-up
    best = None
    for _ in range(args.repeat):
        t = time.perf_counter()
        outs = llm.chat(convs, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        if best is None or tokens / dt > best[0] / best[1]:
            best = (tokens, dt)
    assert best is not None
    one = SamplingParams(temperature=0, max_tokens=args.stream_tokens, ignore_eos=True)
    t = time.perf_counter()
    out = llm.chat(convs[:1], one, use_tqdm=False)
    single_s = time.perf_counter() - t
    single_tokens = len(out[0].outputs[0].token_ids)

    lock = threading.Lock()  # vllm.LLM is not thread-safe: one call at a time

    class NaiveVLLMChat(BaseChatModel):
        """What a minimal wrapper does: one sync engine call per input."""

        @property
        def _llm_type(self) -> str:
            return "naive-vllm"

        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> ChatResult:
            conv = [{"role": "user", "content": str(m.content)} for m in messages]
            with lock:
                res = llm.chat([conv], sp, use_tqdm=False)[0]
            msg = AIMessage(
                res.outputs[0].text,
                usage_metadata={
                    "input_tokens": len(res.prompt_token_ids),
                    "output_tokens": len(res.outputs[0].token_ids),
                    "total_tokens": len(res.prompt_token_ids) + len(res.outputs[0].token_ids),
                },
            )
            return ChatResult(generations=[ChatGeneration(message=msg)])

    naive = NaiveVLLMChat()
    lc_convs = [[HumanMessage(c[0]["content"])] for c in convs]
    t = time.perf_counter()
    nouts = naive.batch(lc_convs)
    naive_s = time.perf_counter() - t
    naive_tokens = sum(o.usage_metadata["output_tokens"] for o in nouts)
    return {
        "load_s": load_s,
        "batch_tokens": best[0],
        "batch_s": best[1],
        "single_tokens": single_tokens,
        "single_s": single_s,
        "naive_tokens": naive_tokens,
        "naive_s": naive_s,
    }


# ------------------------------------------------------------------ the table


def child(phase: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--phase", phase, "--n", str(args.n),
        "--max-tokens", str(args.max_tokens), "--stream-tokens", str(args.stream_tokens),
        "--repeat", str(args.repeat), "--model", args.model,
    ]  # fmt: skip
    env = {**os.environ, **ENV}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"phase {phase} failed with {proc.returncode}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"phase {phase} printed no result")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=["package", "raw"], default=None)
    ap.add_argument("--n", type=int, default=32, help="chats in the batch")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens each chat generates")
    ap.add_argument("--stream-tokens", type=int, default=128, help="tokens of the single stream")
    ap.add_argument("--repeat", type=int, default=3, help="batch runs per phase (best kept)")
    ap.add_argument("--model", default=str(MODEL))
    args = ap.parse_args()
    if args.phase == "package":
        print("RESULT " + json.dumps(run_package(args)), flush=True)
        return
    if args.phase == "raw":
        print("RESULT " + json.dumps(run_raw(args)), flush=True)
        return

    pkg = child("package", args)  # one engine at a time: this process, then the raw one
    raw = child("raw", args)
    ours = pkg["batch_tokens"] / pkg["batch_s"]
    theirs = raw["batch_tokens"] / raw["batch_s"]
    naive = raw["naive_tokens"] / raw["naive_s"]
    s_ours = pkg["stream_tokens"] / pkg["stream_s"]
    s_raw = raw["single_tokens"] / raw["single_s"]
    rows = [
        (f"ChatVLLM.batch ({args.n} chats)", pkg["batch_tokens"], pkg["batch_s"], ours, "1.00x"),
        (
            f"raw vllm.LLM.chat ({args.n} chats)",
            raw["batch_tokens"],
            raw["batch_s"],
            theirs,
            f"{ours / theirs:.2f}x of raw",
        ),
        (
            f"naive wrapper, thread pool ({args.n})",
            raw["naive_tokens"],
            raw["naive_s"],
            naive,
            f"ChatVLLM {ours / naive:.1f}x faster",
        ),
        ("ChatVLLM.stream (1 chat)", pkg["stream_tokens"], pkg["stream_s"], s_ours, "1.00x"),
        (
            "raw vllm.LLM.chat (1 chat)",
            raw["single_tokens"],
            raw["single_s"],
            s_raw,
            f"{s_ours / s_raw:.2f}x of raw",
        ),
    ]
    print(
        f"\nvLLM in-process on {os.cpu_count()} CPU cores, {Path(args.model).name}, "
        f"{args.max_tokens} tokens per chat (ignore_eos), best of {args.repeat}\n"
    )
    print(f"| {'run':<38} | {'tokens':>6} | {'seconds':>7} | {'tok/s':>7} | {'compared':<22} |")
    print(f"|{'-' * 40}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 24}|")
    for name, tokens, secs, rate, note in rows:
        print(f"| {name:<38} | {tokens:>6} | {secs:>7.2f} | {rate:>7.1f} | {note:<22} |")
    ttft = pkg["stream_ttft_s"]
    print(
        f"\nengine load: ChatVLLM {pkg['load_s']:.1f}s, raw {raw['load_s']:.1f}s; "
        f"ChatVLLM stream first token after {ttft:.2f}s"
    )


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    main()
