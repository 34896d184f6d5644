"""The ``multillm`` command end to end, in its own process, on the embedded SmolLM2 GGUF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from langchain_multillm import ChatLlamaCpp

pytestmark = [pytest.mark.peer, pytest.mark.llamacpp, pytest.mark.timeout(300)]


def multillm(*args: str, gguf: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLAMACPP_MODEL_PATH": gguf}
    env.pop("MULTILLM_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "langchain_multillm.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def test_ask_streams_an_answer(llama_cpp_available: str) -> None:
    proc = multillm(
        "ask", "What is the capital of France?", "--max-tokens", "20", gguf=llama_cpp_available
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "Traceback" not in proc.stderr

    proc = multillm("ask", "Say hi.", "--max-tokens", "20", "--json", gguf=llama_cpp_available)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"].strip()
    assert 0 < out["usage"]["output_tokens"] <= 20


def test_fit_reports_against_the_real_window(llama_cpp_available: str, tmp_path: Path) -> None:
    text = "Llamas live in the Andes. " * 20
    file = tmp_path / "note.txt"
    file.write_text(text)
    proc = multillm("fit", str(file), "--max-tokens", "20", "--json", gguf=llama_cpp_available)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    exact = ChatLlamaCpp(model_path=llama_cpp_available).count_tokens([HumanMessage(text)])
    assert report["fits"] is True and report["context_window"] == 2048
    assert report["max_tokens"] == 20
    assert report["prompt_tokens"] >= exact  # exact, or a proven upper bound
    assert report["prompt_tokens"] == exact or not report["exact"]

    big = tmp_path / "big.txt"
    big.write_text("word " * 3000)
    proc = multillm("fit", str(big), gguf=llama_cpp_available)
    assert proc.returncode == 1, proc.stderr  # does not fit: the report, and exit 1
    assert proc.stdout.startswith("does not fit") and "Traceback" not in proc.stderr


def test_a_missing_gguf_is_a_usage_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.gguf")
    for args in (["ask", "hi", "--model", f"llamacpp:{missing}"], ["health"]):
        proc = multillm(*args, gguf=missing)  # the default model's path from the environment
        assert proc.returncode == 2, proc.stderr
        assert "'--model'" in proc.stderr and "no GGUF file" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_rag_answers_with_sources(llama_cpp_available: str, tmp_path: Path) -> None:
    (tmp_path / "llamas.md").write_text("# Llamas\n\nLlamas live in the Andes mountains.\n")
    (tmp_path / "rust.txt").write_text("Rust is a programming language.\n")
    proc = multillm(
        "rag",
        "--docs",
        str(tmp_path),
        "Where do llamas live?",
        "--max-tokens",
        "20",
        gguf=llama_cpp_available,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("[1] Llamas (llamas.md)")


def test_make_demo_script_streams_then_numbers_its_sources(llama_cpp_available: str) -> None:
    # What `make demo` runs (examples/demo.py), with the embedded model and the project's docs.
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo.py"
    proc = subprocess.run(
        [sys.executable, str(demo), "What does check_fit return?"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    answer = out.split("A: ", 1)[1].split("\n\nSources:", 1)[0]
    assert answer.strip()  # the streamed answer came before the sources
    sources = out.split("Sources:", 1)[1].split("\nfit:", 1)[0].strip().splitlines()
    assert sources and sources[0].strip().startswith("[1] ")
    assert "docs/" in out.split("Sources:", 1)[1] or ".md" in sources[0]
    assert "fits" in out.split("fit:", 1)[1].splitlines()[0]
