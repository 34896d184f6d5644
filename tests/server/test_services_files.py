"""Service files, templates, the hot-reloading registry and the inline job queue, without a
model: the parts test_services.py drives through the real gateway, tested at their edges."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from langchain_multillm.errors import InvalidInputError
from langchain_multillm.server.config import ServeConfig, load_config
from langchain_multillm.server.jobs import (
    InlineJobQueue,
    JobContext,
    JobRequest,
    Runtime,
    complete,
    http_status,
    is_final,
    load_runtime,
    processing,
    run_job,
)
from langchain_multillm.server.services import (
    ServiceFileError,
    ServiceRegistry,
    parse_service_file,
    parse_template,
)

ISSUE_YAML = """\
summarize/en:
  type: summary
  fields: 2
  name: summarize-en
  route: summarize/en
  description: {fr: English summary}
  flavor:
    - name: llama
      modelName: smollm2          # a model name from the gateway config, or a load_chat_model spec
      totalContextLength: 2048    # optional: the model's own limits always apply too
      maxGenerationLength: 256
      tokenizerClass: LlamaTokenizer   # accepted and ignored: counts use the model's own tokenizer
      createNewTurnAfter: 250
      summaryTurns: 3
      maxNewTurns: 9
      temperature: 0.2
      top_p: 0.7
      reduceSummary: false
      consolidateSummary: false
      reduce_prompt: reduce-file
      type: abstractive           # abstractive | extractive | markdown, honoured
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------ files


def test_the_issue_service_file_loads_unchanged(tmp_path: Path) -> None:
    services = parse_service_file(write(tmp_path / "en.yaml", ISSUE_YAML))
    spec = services["summarize/en"]
    assert spec.type == "summary"
    assert spec.fields == 2
    flavor = spec.flavor[0]
    assert flavor.modelName == "smollm2"
    assert flavor.totalContextLength == 2048
    assert flavor.createNewTurnAfter == 250
    assert flavor.reduce_prompt == "reduce-file"
    assert flavor.type == "abstractive"


def test_the_replaced_gateways_own_file_with_backend_loads(tmp_path: Path) -> None:
    text = ISSUE_YAML.replace("  route: summarize/en\n", "  backend: vLLM\n")
    services = parse_service_file(write(tmp_path / "fr.yaml", text))
    assert list(services) == ["summarize/en"]  # the key is the route when route is unset


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (("      summaryTurns: 3\n", "      summaryTurns: 3\n      oops: 1\n"),
         "en.yaml: summarize/en: flavor[0].oops", "unknown key; allowed: name, modelName"),
        (("maxGenerationLength: 256", "maxGenerationLength: -5"),
         "en.yaml: summarize/en: flavor[0].maxGenerationLength", "greater than 0"),
        (("maxGenerationLength: 256", "maxGenerationLength: lots"),
         "en.yaml: summarize/en: flavor[0].maxGenerationLength", "valid integer"),
        (("  type: summary", "  type: poem"), "en.yaml: summarize/en: type", "'summary'"),
        (("  fields: 2", "  fields: 3"), "en.yaml: summarize/en: fields", "less than or equal"),
        (("  name: summarize-en\n", ""), "en.yaml: summarize/en: name", "is required"),
        (("top_p: 0.7", "top_p: 1.5"), "en.yaml: summarize/en: flavor[0].top_p", "less than"),
        (("route: summarize/en", "route: /abs"), "en.yaml: summarize/en: route", "no leading"),
        (("description: {fr: English summary}", "description: [1]"),
         "en.yaml: summarize/en: description", "valid"),
    ],
)  # fmt: skip
def test_a_wrong_file_is_one_line_naming_the_key_path(
    tmp_path: Path, edit: tuple[str, str], field: str, words: str
) -> None:
    text = ISSUE_YAML.replace(*edit)
    assert text != ISSUE_YAML
    with pytest.raises(ServiceFileError) as info:
        parse_service_file(write(tmp_path / "en.yaml", text))
    assert info.value.field == field
    assert words in info.value.problem
    assert "\n" not in str(info.value)


def test_duplicate_flavors_name_the_second(tmp_path: Path) -> None:
    flavor = ISSUE_YAML[ISSUE_YAML.index("    - name: llama") :]
    with pytest.raises(ServiceFileError) as info:
        parse_service_file(write(tmp_path / "en.yaml", ISSUE_YAML + flavor))
    assert info.value.field == "en.yaml: summarize/en: flavor[1].name"
    assert "already a flavor" in info.value.problem


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: [1, 2\n", "line"),
        ("- just\n- a list\n", "mapping of route: service"),
        ("svc: 3\n", "must be a mapping"),
        ("", "mapping of route: service"),
        ("bad route!: {type: chat, name: x, flavor: [{name: a, modelName: m}]}\n", "route"),
    ],
)
def test_not_a_service_file(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ServiceFileError) as info:
        parse_service_file(write(tmp_path / "x.yaml", text))
    assert words in str(info.value)
    assert isinstance(info.value, InvalidInputError)


# ------------------------------------------------------------------ templates


def test_templates_positional_named_and_literal_braces() -> None:
    t = parse_template("Before {} then {} and {{literal}}", "t.txt")
    assert t.positional == 2
    assert t.render(["A", "B"], {}) == "Before A then B and {literal}"
    assert t.as_fstring(["summary", "text"]) == "Before {summary} then {text} and {{literal}}"
    n = parse_template("Q: {question}\nDocs: {context} {0}", "t.txt")
    assert n.named == {"question", "context"}
    assert n.render(["zero"], {"question": "q", "context": "c"}) == "Q: q\nDocs: c zero"


@pytest.mark.parametrize("text", ["{a.b}", "{x!r}", "{x:>10}", "open { brace", "close } brace"])
def test_a_wrong_template_names_its_file(text: str) -> None:
    with pytest.raises(ServiceFileError) as info:
        parse_template(text, "p.txt")
    assert info.value.field == "p.txt"


# ------------------------------------------------------------------ the registry


CHAT = "echo:\n  type: chat\n  name: echo\n  flavor:\n    - name: a\n      modelName: m\n"


def make_registry(tmp_path: Path) -> tuple[ServiceRegistry, Path, Path]:
    services, prompts = tmp_path / "services", tmp_path / "prompts"
    services.mkdir()
    prompts.mkdir()
    return ServiceRegistry(services, prompts, reload_s=0.0), services, prompts


def touch(path: Path, text: str) -> None:
    """Write ``text`` with a new mtime even on a coarse clock."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        import os

        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def test_registry_add_change_break_remove(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg, services, _ = make_registry(tmp_path)
    assert reg.routes() == []
    touch(services / "a.yaml", CHAT)
    assert reg.routes() == ["echo"]
    touch(services / "a.yaml", CHAT.replace("name: a", "name: b"))
    assert [f.name for f in reg.get("echo").spec.flavor] == ["b"]
    with caplog.at_level("WARNING", "langchain_multillm.server.services"):
        touch(services / "a.yaml", CHAT.replace("modelName: m", "modelName: ''"))
        kept = reg.get("echo")
    assert [f.name for f in kept.spec.flavor] == ["b"]  # the last good version
    assert kept.error is not None
    assert "flavor[0].modelName" in kept.error
    (entry,) = reg.describe()
    assert entry["status"] == "error"
    assert "last good version" in entry["error"]
    assert "a.yaml not loaded" in caplog.text
    touch(services / "a.yaml", CHAT)
    assert reg.describe()[0]["status"] == "ok"
    (services / "a.yaml").unlink()
    with pytest.raises(InvalidInputError) as info:
        reg.get("echo")
    assert info.value.field == "route"


def test_registry_templates_read_fresh_and_a_missing_one_fixed(tmp_path: Path) -> None:
    reg, services, prompts = make_registry(tmp_path)
    summary = ISSUE_YAML.replace("      reduce_prompt: reduce-file\n", "")
    touch(services / "s.yaml", summary)
    (entry,) = reg.describe()  # never loaded: listed as an error, no route
    assert entry["status"] == "error"
    assert "summarize-en.txt" in entry["error"]
    with pytest.raises(InvalidInputError):
        reg.get("summarize/en")
    touch(prompts / "summarize-en.txt", "So far: {}\nNew: {}")
    assert reg.get("summarize/en").template is not None  # the template added: loaded
    touch(prompts / "summarize-en.txt", "Only one {}")  # fields: 2 needs two
    service = reg.get("summarize/en")
    assert service.error is not None
    assert "2" in service.error
    touch(prompts / "summarize-en.txt", "Now {summary} and {text}")
    service = reg.get("summarize/en")
    assert service.error is None
    assert service.template is not None
    assert service.template.named == {"summary", "text"}


def test_registry_same_route_in_two_files(tmp_path: Path) -> None:
    reg, services, _ = make_registry(tmp_path)
    touch(services / "a.yaml", CHAT)
    touch(services / "b.yaml", CHAT.replace("name: a", "name: z"))
    assert [f.name for f in reg.get("echo").spec.flavor] == ["a"]
    errors = [e for e in reg.describe() if e["status"] == "error"]
    assert errors[0]["file"] == "b.yaml"
    assert "already served by a.yaml" in errors[0]["error"]


def test_registry_checks_at_most_every_reload_s(tmp_path: Path) -> None:
    services, prompts = tmp_path / "s", tmp_path / "p"
    services.mkdir()
    prompts.mkdir()
    reg = ServiceRegistry(services, prompts, reload_s=0.3)
    assert reg.routes() == []
    touch(services / "a.yaml", CHAT)
    assert reg.routes() == []  # not yet due
    time.sleep(0.35)
    assert reg.routes() == ["echo"]


def test_services_folders_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    cfg = tmp_path / "conf" / "serve.yaml"
    cfg.write_text("models: [{name: m, model: 'llamacpp:'}]\nservices: {dir: svc}\n")
    config = load_config(cfg)
    assert config.services is not None
    assert Path(config.services.dir) == tmp_path / "conf" / "svc"
    assert Path(config.services.prompts) == tmp_path / "conf" / "prompts"
    again = config.with_overrides(port=9999)
    assert again.services == config.services
    runtime = load_runtime(cfg)
    assert isinstance(runtime.services, ServiceRegistry)
    assert runtime.services.services_dir == tmp_path / "conf" / "svc"


# ------------------------------------------------------------------ jobs


class FakeService:
    """Batches of ``delay`` seconds, with progress; ``fail`` makes it raise."""

    route = "fake"

    def __init__(self, batches: int = 3, delay: float = 0.05, fail: bool = False) -> None:
        self.batches, self.delay, self.fail = batches, delay, fail
        self.calls = 0
        self.abandoned = 0

    async def check(self, runtime: Runtime, job: JobRequest) -> None:
        return None

    async def _call(self) -> str:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        self.calls += 1
        return "x"

    async def run(self, runtime: Runtime, job: JobRequest, ctx: JobContext) -> dict[str, Any]:
        for i in range(self.batches):
            await ctx.call(self._call())
            if self.fail:
                raise RuntimeError("the upstream broke with key sk-secret")
            await ctx.progress(i + 1, self.batches)
        return complete(f"done {job.content}")


class FakeSource:
    def __init__(self, service: FakeService) -> None:
        self.service = service

    def get(self, route: str) -> FakeService:
        if route != "fake":
            raise InvalidInputError("route", f"no service at {route!r}")
        return self.service


def runtime_with(service: FakeService) -> Runtime:
    config = ServeConfig.model_validate({"models": [{"name": "m", "model": "llamacpp:"}]})
    config._secrets = {"sk-secret"}
    return Runtime(config, FakeSource(service))


def job(content: str = "it") -> JobRequest:
    return JobRequest(route="fake", flavor="f", content=content, params={"temperature": 0.1})


def test_job_request_round_trips_through_json() -> None:
    j = JobRequest(
        route="a/b", flavor="f", content="t", params={"top_p": 0.5}, documents=[{"a": 1}]
    )
    assert JobRequest.model_validate(json.loads(json.dumps(j.model_dump(mode="json")))) == j


def test_status_shapes_are_the_replaced_gateways() -> None:
    assert processing(1, 3)["progress"] == "33"
    assert http_status({"status": "queued"}) == 202
    assert http_status(complete("x")) == 200
    assert http_status({"status": "error"}) == 500
    assert http_status({"status": "error", "cancelled": True}) == 410
    assert is_final(complete(" x "))
    assert complete(" x ")["summarization"] == "x"


async def test_inline_queue_watch_idempotency_and_expiry() -> None:
    service = FakeService()
    q = InlineJobQueue(runtime_with(service), result_ttl_s=0.3)
    a = await q.submit(job(), idempotency_key="k")
    assert (await q.status(a)) == {"status": "queued", "message": "Task is in queue"}
    assert await q.submit(job("other"), idempotency_key="k") == a
    seen = [s async for s in q.watch(a)]
    assert seen[0]["status"] == "queued"
    assert seen[-1] == complete("done it")
    assert [s["status"] for s in seen if s["status"] == "processing"]
    assert service.calls == 3  # the second submit with the key ran nothing
    assert [s async for s in q.watch("nope")] == []
    await asyncio.sleep(0.4)
    assert await q.status(a) is None  # expired: unknown again
    assert await q.submit(job(), idempotency_key="k") != a  # and its key free
    await q.aclose()


async def test_inline_queue_cancel_abandons_the_call_in_flight() -> None:
    service = FakeService(batches=2, delay=30)
    q = InlineJobQueue(runtime_with(service))
    a = await q.submit(job())
    for _ in range(100):
        if (await q.status(a))["status"] == "started":  # type: ignore[index]
            break
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    assert await q.cancel(a) is True
    status = await q.status(a)
    assert status is not None
    assert status["cancelled"] is True
    await asyncio.sleep(0.05)
    assert time.monotonic() - t0 < 1.0
    assert service.abandoned == 1
    assert service.calls == 0
    assert await q.cancel("nope") is False
    await q.aclose()


async def test_run_job_returns_a_redacted_failure_and_stops_when_cancelled() -> None:
    reports: list[dict[str, Any]] = []
    out = await run_job(runtime_with(FakeService(fail=True)), job(), reports.append, lambda: False)
    assert out["status"] == "error"
    assert "sk-secret" not in out["details"]
    assert "RuntimeError" in out["details"]
    assert reports[0]["status"] == "started"
    missing = await run_job(
        runtime_with(FakeService()), job().model_copy(update={"route": "x"}), reports.append,
        lambda: False,
    )  # fmt: skip
    assert missing["status"] == "error"
    assert missing["details"].startswith("route:")

    flag = {"cancel": False}

    async def report(status: dict[str, Any]) -> None:
        if status["status"] == "processing":
            flag["cancel"] = True

    from langchain_multillm.server.jobs import JobCancelled

    service = FakeService(batches=5)
    with pytest.raises(JobCancelled):
        await run_job(runtime_with(service), job(), report, lambda: flag["cancel"])
    assert service.calls == 1  # stopped between batches


def test_registry_checks_the_reduce_template(tmp_path: Path) -> None:
    reg, services, prompts = make_registry(tmp_path)
    touch(prompts / "summarize-en.txt", "So far: {}\nNew: {}")
    touch(prompts / "reduce-file.txt", "Reduce {summary} and {text}")
    touch(services / "s.yaml", ISSUE_YAML)
    (entry,) = reg.describe()
    assert entry["status"] == "error"
    assert entry["error"].startswith("reduce-file.txt: a reduce template")
    touch(prompts / "reduce-file.txt", "Reduce: {}")
    assert reg.get("summarize/en").reduce_templates["reduce-file"].positional == 1


def test_services_in_several_processes_need_a_broker(llama_cpp_available: str) -> None:
    from langchain_multillm.server.app import create_app
    from langchain_multillm.server.config import ConfigError

    config = ServeConfig.model_validate(
        {"server": {"workers": 2}, "models": [{"name": "m", "model": "llamacpp:"}], "services": {}}
    )
    with pytest.raises(ConfigError) as info:
        create_app(config)
    assert info.value.field == "services"
    assert "jobs:" in info.value.problem


def test_the_example_services_folder_loads() -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "services"
    runtime = load_runtime(root / "serve.yaml")
    assert isinstance(runtime.services, ServiceRegistry)
    described = runtime.services.describe()
    assert {s["route"]: s["status"] for s in described} == {
        "ask": "ok",
        "summarize/en": "ok",
        "translate/fr": "ok",
    }
