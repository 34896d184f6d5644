"""Health and limit probes as data (``_http.HealthProbe``, ``LimitsProbe``): a server backend
that declares them gets ``_health`` / ``_ahealth`` and ``_fetch_limits`` / ``_afetch_limits``
from :class:`HTTPConnection`, the same answers on the sync and the async client, and writes no
twins. The servers are httpx.MockTransport routes (a 503 or a refused key on demand)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httpx
import pytest

from langchain_multillm import ChatDeepSeek, ChatTGI, ChatVLLMServer
from langchain_multillm._http import HealthProbe, LimitsProbe, Route
from langchain_multillm._openai import OpenAIChatOverHTTP
from langchain_multillm.fit import Limits
from langchain_multillm.health import HealthReport

RUNS = ["sync", "async"]
Answer = tuple[int, Any] | Exception


def clients(routes: dict[str, Answer]) -> dict[str, Any]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        answer = routes.get(request.url.path)
        if answer is None:
            return httpx.Response(404, json={"error": "not found"})
        if isinstance(answer, Exception):
            raise httpx.ConnectError(str(answer), request=request)
        status, body = answer
        return httpx.Response(status, json=body) if body is not None else httpx.Response(status)

    mock = httpx.MockTransport(handler)
    return {
        "http_client": httpx.Client(transport=mock),
        "http_async_client": httpx.AsyncClient(transport=mock),
        "max_retries": 0,
        "health_timeout": 2,
    }


def health(llm: Any, run: str) -> HealthReport:
    report: HealthReport = llm.health() if run == "sync" else asyncio.run(llm.ahealth())
    return report


def limits(llm: Any, run: str) -> Limits:
    result: Limits = llm.get_limits() if run == "sync" else asyncio.run(llm.aget_limits())
    return result


def _window(model: Any, body: Any) -> int | None:
    return body.get("ctx")


def _limits(model: Any, body: Any) -> Limits:
    return Limits(context_window=int(body["ctx"]))


class Probed(OpenAIChatOverHTTP):
    """A server backend that fills health and limits with data only."""

    model_name: str = "m"
    base_url: str | None = "http://probed.invalid/v1"
    _health_probe: ClassVar[HealthProbe | None] = HealthProbe(
        status=Route("/ping"),
        models=Route("/card", base="api"),
        served=lambda model, body: body.get("serves", []),
        window=_window,
    )
    _limits_probe: ClassVar[LimitsProbe | None] = LimitsProbe(
        Route("/card", base="api"), read=_limits
    )

    @property
    def _llm_type(self) -> str:
        return "probed"

    def _chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"


CARD = (200, {"serves": ["m"], "ctx": 321})


@pytest.mark.parametrize("run", RUNS)
def test_a_backend_of_data_only_has_health_and_limits_on_both_clients(run: str) -> None:
    ok = Probed(**clients({"/ping": (200, None), "/v1/card": CARD}))
    report = health(ok, run)
    assert (report.alive, report.ready, report.context_window) == (True, True, 321)
    assert report.detail == "serving m"
    assert limits(ok, run).context_window == 321

    other = Probed(**clients({"/ping": (200, None), "/v1/card": (200, {"serves": ["x"]})}))
    report = health(other, run)
    assert report.alive and not report.ready
    assert report.detail == "'m' is not served; the server has ['x']"

    sick = Probed(**clients({"/ping": (503, {"error": "sick"}), "/v1/card": CARD}))
    report = health(sick, run)
    assert not report.alive and report.detail == "/ping answered 503: sick"

    gone = Probed(**clients({"/ping": OSError("refused"), "/v1/card": CARD}))
    report = health(gone, run)
    assert not report.alive and report.detail.startswith("/ping failed: ")

    no_card = Probed(**clients({"/ping": (200, None), "/v1/card": (500, {"error": "boom"})}))
    report = health(no_card, run)
    assert report.alive and not report.ready
    assert report.detail.startswith("/ping ok; /card failed: ")


@pytest.mark.parametrize("run", RUNS)
def test_the_health_timeout_is_shared_by_the_probes_requests(
    run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeouts: list[float | None] = []
    llm = Probed(**clients({"/ping": (200, None), "/v1/card": CARD}))
    get, aget = Probed._get, Probed._aget

    def spy(self: Any, url: str, timeout: float | None = None) -> httpx.Response:
        timeouts.append(timeout)
        return get(self, url, timeout)

    async def aspy(self: Any, url: str, timeout: float | None = None) -> httpx.Response:
        timeouts.append(timeout)
        return await aget(self, url, timeout)

    monkeypatch.setattr(Probed, "_get", spy)
    monkeypatch.setattr(Probed, "_aget", aspy)
    assert health(llm, run).ready
    assert timeouts == [1.0, 1.0]  # health_timeout=2 over two requests


class Unprobed(OpenAIChatOverHTTP):
    """Declares no probe and writes no ``_health``."""

    model_name: str = "m"
    base_url: str | None = "http://unprobed.invalid"

    @property
    def _llm_type(self) -> str:
        return "unprobed"

    def _chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"


@pytest.mark.parametrize("run", RUNS)
def test_no_probe_declared_is_down_saying_so_and_limits_unknown(run: str) -> None:
    llm = Unprobed(**clients({}))
    report = health(llm, run)
    assert not report.alive
    assert "declares no _health_probe" in report.detail
    assert limits(llm, run) == Limits()


def test_the_http_backends_declare_their_probes() -> None:
    for cls in (ChatTGI, ChatVLLMServer, ChatDeepSeek):
        assert isinstance(cls._health_probe, HealthProbe), cls.__name__
        assert "_health" not in vars(cls) and "_ahealth" not in vars(cls)
    assert isinstance(ChatTGI._limits_probe, LimitsProbe)
    assert isinstance(ChatVLLMServer._limits_probe, LimitsProbe)


@pytest.mark.parametrize("run", RUNS)
def test_tgi_serving_any_model_names_the_configured_one_when_info_names_none(run: str) -> None:
    """``/info`` without ``model_id`` read "serving None" before the probe was data."""
    routes: dict[str, Answer] = {
        "/health": (200, None),
        "/info": (200, {"max_total_tokens": 64, "max_input_tokens": 32}),
    }
    report = health(ChatTGI(base_url="http://tgi.invalid", **clients(routes)), run)
    assert report.ready and report.detail == "serving tgi"
