"""The ``multillm`` command: ask, chat, RAG over a folder, summarize, health and fit checks.

The default model is the embedded one (``ChatLlamaCpp`` on the bundled SmolLM2 GGUF);
``--model provider:model`` builds any other through :func:`langchain_multillm.load_chat_model`
(endpoints and keys from the environment, e.g. ``VLLM_BASE_URL``). Answers stream to stdout;
progress and errors go to stderr. ``--json`` prints one JSON document instead (``chat``: one
line per turn).

Exit codes: 0 ok; 1 error (one line ``error: ...`` on stderr; ``MULTILLM_DEBUG=1`` lets the
traceback through), and ``fit`` when the prompt does not fit; 2 usage: the command line is
wrong (an unknown option, a bad value, a missing file, a bad ``--model`` spec, a model the
options and environment cannot build); 3 ``health`` found the backend down.

Needs the ``[cli]`` extra (typer, rich, bm25s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

try:
    import typer
    from rich.console import Console
    from typer.exceptions import TyperException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the multillm command needs typer and rich: pip install 'langchain-multillm[cli]'"
    ) from exc

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage

__all__ = ["app", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DOWN = 0, 1, 2, 3
EXIT_DOES_NOT_FIT = EXIT_ERROR  # ``fit``: the prompt does not fit (the report is still printed)
DEBUG_ENV = "MULTILLM_DEBUG"
DEFAULT_MODEL_LABEL = "the embedded SmolLM2 (llama.cpp)"

app = typer.Typer(
    name="multillm",
    help="Run LLMs from the command line: ask, chat, RAG over your files, summarize, "
    "check health and token fit. Default model: the embedded SmolLM2 GGUF.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# ---- shared options ----
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="provider:model, e.g. vllm-server:Qwen/Qwen2.5-7B-Instruct or llamacpp:/x.gguf "
        "(default: the embedded SmolLM2).",
    ),
]
MaxTokensOpt = Annotated[
    int | None, typer.Option("--max-tokens", min=1, help="Most tokens to generate.")
]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", min=0.0, help="Sampling temperature.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ExistingFile = Annotated[
    Path,
    typer.Argument(
        exists=True, dir_okay=False, readable=True, metavar="FILE", help="A text file (UTF-8)."
    ),
]


def _stderr() -> Console:
    return Console(stderr=True)


@contextlib.contextmanager
def _progress(message: str) -> Iterator[None]:
    """A spinner on stderr while something slow runs (indexing, loading a model)."""
    with _stderr().status(message, spinner="dots"):
        yield


def _files_bar(files: Sequence[Path]) -> Iterable[Path]:
    """A progress bar on stderr over the files being read (on a terminal only)."""
    from rich.progress import track

    console = _stderr()
    if not console.is_terminal:
        return files
    return track(files, description="reading files", console=console, transient=True)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Any exception becomes one ``error: ...`` line on stderr and exit code 1."""
    try:
        yield
    except (typer.Exit, typer.Abort, TyperException):
        raise
    except Exception as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        typer.echo(f"error: {_one_line(exc)}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            msg = str(e["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        text = f"invalid settings for {exc.title}: " + "; ".join(parts)
    else:
        from langchain_multillm.errors import MultiLLMError

        text = str(exc).strip()
        if not text or not isinstance(exc, (MultiLLMError, ValueError, OSError, ImportError)):
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return " ".join(text.split())


def _emit_json(data: Any) -> None:
    """One JSON document on stdout; what JSON cannot hold is stringified (here only)."""
    typer.echo(json.dumps(data, ensure_ascii=False, default=str))


# ---- the model ----
def _make_model(spec: str | None, **params: Any) -> BaseChatModel:
    """The chat model for ``--model`` (``None``: the embedded llama.cpp model).

    ``params`` are model fields (``max_tokens``, ``temperature``); tests patch this function.
    """
    if spec is None:
        from langchain_multillm import ChatLlamaCpp

        return ChatLlamaCpp(**params)
    from langchain_multillm.loader import load_chat_model

    return load_chat_model(spec, **params)


# Model fields the command's options set; any other field a model refuses is --model's.
OPTION_OF_FIELD = {"max_tokens": "'--max-tokens'", "temperature": "'--temperature'"}


def _load_model(spec: str | None, *, warm: bool = True, **params: Any) -> BaseChatModel:
    """Build the model under a spinner; ``warm`` also loads an in-process engine now.

    A model that cannot be built from the options (a bad spec, a setting the model refuses,
    a model file that is not there) is a usage error (exit 2) naming the option.
    """
    from pydantic import ValidationError

    from langchain_multillm.errors import InvalidInputError

    given = {k: v for k, v in params.items() if v is not None}
    with _progress(f"loading {spec or DEFAULT_MODEL_LABEL}..."):
        try:
            model = _make_model(spec, **given)
        except InvalidInputError as exc:
            if exc.field == "spec":
                raise typer.BadParameter(exc.problem, param_hint="'--model'") from None
            hint = OPTION_OF_FIELD.get(exc.field, "'--model'")
            raise typer.BadParameter(_one_line(exc), param_hint=hint) from None
        except ValidationError as exc:
            fields = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            hints = sorted({OPTION_OF_FIELD.get(f, "'--model'") for f in fields}) or ["'--model'"]
            raise typer.BadParameter(_one_line(exc), param_hint=" / ".join(hints)) from None
        if warm:
            # In-process engines (llama.cpp) load on first use: do it here, under the spinner.
            getattr(model, "engine", None)
    return model


def _text(content: Any) -> str:
    """The text of a message's content (a string, or a list of content blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b if isinstance(b, str) else str(b.get("text", ""))
            for b in content
            if isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text")
        )
    return str(content)


def _stream_answer(model: BaseChatModel, messages: list[BaseMessage]) -> str:
    """Stream the model's answer to stdout as it comes; returns the whole answer."""
    parts: list[str] = []
    for chunk in model.stream(messages):
        delta = _text(chunk.content)
        if delta:
            parts.append(delta)
            typer.echo(delta, nl=False)
    typer.echo()
    return "".join(parts)


def _read_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{path} has no text")
    return text


# ---- commands ----
@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask the model one question; the answer streams to stdout."""
    with _errors():
        from langchain_core.messages import HumanMessage

        if not question.strip():
            raise typer.BadParameter("must not be empty", param_hint="'QUESTION'")
        llm = _load_model(model, max_tokens=max_tokens, temperature=temperature)
        messages: list[BaseMessage] = [HumanMessage(question)]
        if not as_json:
            _stream_answer(llm, messages)
            return
        reply = llm.invoke(messages)
        _emit_json(
            {
                "answer": _text(reply.content),
                "model": reply.response_metadata.get("model_name"),
                "finish_reason": reply.response_metadata.get("finish_reason"),
                "usage": getattr(reply, "usage_metadata", None),
            }
        )


@app.command()
def chat(
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    system: Annotated[
        str | None, typer.Option("--system", help="A system message for the conversation.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Talk with the model: one line from stdin per turn, until end of input or /exit.

    When the conversation outgrows the model's window, the oldest turns are left out.
    """
    with _errors():
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        llm = _load_model(model, max_tokens=max_tokens, temperature=temperature)
        head: list[BaseMessage] = [SystemMessage(system)] if system else []
        history: list[BaseMessage] = []
        interactive = sys.stdin.isatty()
        if interactive and not as_json:
            _stderr().print("[dim]/exit or Ctrl-D to leave[/dim]")
        while True:
            if interactive:
                _stderr().print("[bold]>[/bold] ", end="")
            line = sys.stdin.readline()
            if not line or line.strip() in ("/exit", "/quit"):
                break
            question = line.strip()
            if not question:
                continue
            history.append(HumanMessage(question))
            history = _trim_history(llm, head, history, max_tokens)
            if as_json:
                answer = _text(llm.invoke(head + history).content)
                _emit_json({"question": question, "answer": answer})
            else:
                answer = _stream_answer(llm, head + history)
            history.append(AIMessage(answer))


def _trim_history(
    llm: BaseChatModel, head: list[BaseMessage], history: list[BaseMessage], max_tokens: int | None
) -> list[BaseMessage]:
    """Drop the oldest turns until the prompt fits (models of this package only)."""
    check = getattr(llm, "check_fit", None)
    if check is None:
        return history
    while len(history) > 1 and not check(head + history, max_tokens=max_tokens).fits:
        history = history[2:] if len(history) > 2 else history[1:]
    return history


@app.command()
def rag(
    question: Annotated[str, typer.Argument(help="The question.")],
    docs: Annotated[
        Path,
        typer.Option(
            "--docs",
            exists=True,
            metavar="PATH",
            help="A folder of .txt and .md files (or one such file).",
        ),
    ],
    model: ModelOpt = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            min=1,
            help="Tokens kept for the answer (its max_tokens; default: 512, or a quarter of "
            "the model's window where that is less).",
        ),
    ] = None,
    temperature: TemperatureOpt = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Documents to retrieve.")] = 4,
    chunk_chars: Annotated[
        int, typer.Option("--chunk-chars", min=100, help="Characters per indexed chunk.")
    ] = 1200,
    embeddings: Annotated[
        bool,
        typer.Option(
            "--embeddings",
            help="Retrieve by embeddings (offline all-MiniLM-L6-v2) instead of BM25; needs "
            "the [embeddings] extra.",
        ),
    ] = False,
    on_overflow: Annotated[
        Literal["cut", "drop"],
        typer.Option(
            "--on-overflow",
            help="A document that does not fit whole is cut at a sentence end, or dropped.",
        ),
    ] = "cut",
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from your documents, citing them as [n]; then list the sources."""
    with _errors():
        from langchain_multillm.chains import create_rag_chain
        from langchain_multillm.chains.index import (
            BM25Retriever,
            EmbeddingRetriever,
            load_folder,
        )

        if not question.strip():
            raise typer.BadParameter("must not be empty", param_hint="'QUESTION'")
        chunks = load_folder(docs, chunk_chars=chunk_chars, progress=_files_bar)
        if not chunks:
            raise ValueError(f"no .txt or .md file with text under {docs}")
        with _progress(f"indexing {len(chunks)} chunks..."):
            retriever = (
                EmbeddingRetriever.from_documents(chunks, k=k)
                if embeddings
                else BM25Retriever.from_documents(chunks, k=k)
            )
        llm = _load_model(model, temperature=temperature)
        chain = create_rag_chain(llm, retriever, answer_tokens=max_tokens, on_overflow=on_overflow)
        request = {"question": question}
        if as_json:
            result = dict(chain.invoke(request))
        else:
            result = {}
            answer: list[str] = []
            for chunk in chain.stream(request):
                for key, value in chunk.items():
                    if key == "answer":
                        if value:
                            answer.append(value)
                            typer.echo(value, nl=False)
                    else:
                        result[key] = value
            typer.echo()
            result["answer"] = "".join(answer)
        if as_json:
            fit = result.get("fit")
            if dataclasses.is_dataclass(fit) and not isinstance(fit, type):
                result["fit"] = dataclasses.asdict(fit)
            _emit_json(result)
            return
        sources = result.get("sources") or []
        if sources:
            typer.echo()
            for source in sources:
                typer.echo(_source_line(source))


def _source_line(source: dict[str, Any]) -> str:
    """``[n] title (source)`` for one cited document."""
    meta = source.get("metadata") or {}
    title, where = meta.get("title"), meta.get("source")
    if title and where and title != where:
        label = f"{title} ({where})"
    else:
        label = str(title or where or "(no title)")
    return f"[{source.get('id')}] {label}"


@app.command()
def summarize(
    file: ExistingFile,
    model: ModelOpt = None,
    max_tokens: Annotated[
        int,
        typer.Option("--max-tokens", min=1, help="Tokens kept for each summary (its max_tokens)."),
    ] = 256,
    temperature: TemperatureOpt = None,
    mode: Annotated[
        Literal["map_reduce", "refine"],
        typer.Option(
            "--mode",
            help="map_reduce: summarize groups, then their summaries; refine: one running summary.",
        ),
    ] = "map_reduce",
    kind: Annotated[
        Literal["abstractive", "extractive", "markdown"],
        typer.Option(
            "--kind",
            help="The kind of summary.",
        ),
    ] = "abstractive",
    turn_tokens: Annotated[
        int, typer.Option("--turn-tokens", min=1, help="About how many tokens per turn.")
    ] = 250,
    max_turns: Annotated[
        int | None,
        typer.Option("--max-turns", min=1, help="Refuse a text of more turns than this."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Summarize a long text or transcript; every prompt it sends fits the model's window."""
    with _errors():
        from langchain_multillm.chains import create_summarize_chain

        text = _read_text(file)
        llm = _load_model(model, temperature=temperature)
        chain = create_summarize_chain(
            llm,
            turn_tokens=turn_tokens,
            max_turns=max_turns,
            mode=mode,
            kind=kind,
            summary_tokens=max_tokens,
        )
        with _progress("summarizing..."):
            result = chain.invoke(text)
        if as_json:
            _emit_json(result)
        else:
            typer.echo(str(result["summary"]).strip())


@app.command()
def health(model: ModelOpt = None, as_json: JsonOpt = False) -> None:
    """Is the backend alive and ready? No billed call; exit code 3 when it is down."""
    with _errors():
        llm = _load_model(model, warm=False)
        check = getattr(llm, "health", None)
        if check is None:
            raise ValueError(f"{type(llm).__name__} has no health check")
        with _progress("checking..."):
            report = check()
        if as_json:
            _emit_json(dataclasses.asdict(report))
        else:
            typer.echo(str(report))
        if not report.alive:
            raise typer.Exit(EXIT_DOWN)


@app.command()
def fit(
    file: ExistingFile,
    model: ModelOpt = None,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", min=1, help="Output tokens to check room for."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Does the file's text, sent as one user message, fit the model (with --max-tokens)?

    Prints the fit report; exits 1 when it does not fit.
    """
    with _errors():
        from langchain_core.messages import HumanMessage

        text = _read_text(file)
        llm = _load_model(model)
        check = getattr(llm, "check_fit", None)
        if check is None:
            raise ValueError(f"{type(llm).__name__} has no fit check")
        with _progress("counting tokens..."):
            report = check([HumanMessage(text)], max_tokens=max_tokens)
        if as_json:
            _emit_json(dataclasses.asdict(report))
        else:
            typer.echo(str(report))
        if not report.fits:
            raise typer.Exit(EXIT_DOES_NOT_FIT)


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            dir_okay=False,
            help="A YAML config (docs/server.md). Default: one model from the environment "
            "(LLM_MODEL_SERVER, LLM_MODEL_SERVER_ENDPOINT, ...), else the embedded SmolLM2.",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to bind (default 127.0.0.1; others need keys)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="Port (default 8000).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (default 1).")
    ] = None,
    allocator: Annotated[
        str | None,
        typer.Option(
            "--allocator",
            help="auto (jemalloc where installed, else pymalloc), jemalloc or pymalloc "
            "(default: server.allocator, auto).",
        ),
    ] = None,
) -> None:
    """Serve the models over an OpenAI-compatible HTTP API (needs the [server] extra).

    A wrong config exits 2 before the port is bound. Where jemalloc is installed the process
    re-executes itself on it first (same PID), so memory comes back after a burst."""
    with _errors():
        from langchain_multillm.server.allocator import exec_env, find_jemalloc, reexec
        from langchain_multillm.server.app import run, serve_config
        from langchain_multillm.server.config import ConfigError

        try:
            loaded = serve_config(
                config, host=host, port=port, workers=workers, allocator=allocator
            )
            env = exec_env(loaded.server.allocator, os.environ, find_jemalloc())
        except ConfigError as exc:
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        if env is not None:
            reexec(env)
        try:
            run(loaded, config_path=str(config) if config else None)
        except ConfigError as exc:
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(EXIT_USAGE) from None


@app.command()
def worker(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            dir_okay=False,
            help="The gateway's YAML config, with a jobs: section (docs/jobs.md).",
        ),
    ],
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            help="Jobs run at once, each in its own process (default: jobs.concurrency, 1).",
        ),
    ] = None,
    loglevel: Annotated[
        str, typer.Option("--loglevel", help="Log level (DEBUG, INFO, WARNING, ERROR).")
    ] = "INFO",
) -> None:
    """Run the services' jobs: a Celery worker on the config's jobs.broker (Redis); needs the
    [jobs] extra. A config without jobs: exits 2."""
    with _errors():
        from langchain_multillm.server.config import ConfigError, load_config

        try:
            loaded = load_config(config)
            if loaded.jobs is None:
                raise ConfigError(
                    "jobs", "is required to run a worker (jobs: {broker: redis://...})"
                )
        except ConfigError as exc:
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        from langchain_multillm.server.celery_app import run_worker

        run_worker(config, concurrency=concurrency, loglevel=loglevel.upper(), config=loaded)


def main() -> None:
    """Entry point of the ``multillm`` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
