"""Every HTTP backend reads the same states the same way (``is_alive()``: the model can answer).

* nothing answers (a transport error): down;
* the server answers it cannot serve (503 from its health route or probe): down, and says so;
* it answers, is healthy, but the configured model is not served: alive, not ready;
* healthy and the model served: ready.

The servers are httpx.MockTransport routes: a real peer cannot be made to answer 503 on
demand (the TGI fixture can: tests/integration_tests/test_tgi.py checks it there too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from langchain_multillm import (
    ChatAzureOpenAI,
    ChatDeepSeek,
    ChatGemini,
    ChatTGI,
    ChatVLLMServer,
    VLLMServer,
)
from langchain_multillm.health import HealthReport

Route = tuple[int, Any] | Exception
Routes = dict[str, Route]


def transport(routes: Routes) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        route = routes.get(request.url.path)
        if route is None:
            return httpx.Response(404, json={"error": "not found"})
        if isinstance(route, Exception):
            raise httpx.ConnectError(str(route), request=request)
        status, body = route
        if body is None:
            return httpx.Response(status)
        return httpx.Response(status, json=body)

    return handler


def clients(routes: Routes) -> dict[str, Any]:
    mock = httpx.MockTransport(transport(routes))
    return {
        "http_client": httpx.Client(transport=mock),
        "http_async_client": httpx.AsyncClient(transport=mock),
        "max_retries": 0,
        "health_timeout": 2,
    }


def check(make: Callable[[], Any], run: str) -> HealthReport:
    llm = make()
    report: HealthReport = llm.health() if run == "sync" else asyncio.run(llm.ahealth())
    assert llm.is_alive() is report.alive
    return report


REFUSED = ConnectionRefusedError("connection refused")
RUNS = ["sync", "async"]

# ------------------------------------------------------------------ TGI: /health and /info

TGI_INFO = {"model_id": "org/served", "max_total_tokens": 100, "max_input_tokens": 50}
TGI_UNHEALTHY = (503, {"error": "unhealthy", "error_type": "healthcheck"})


def tgi(health: Route, info: Route = (200, TGI_INFO), model: str = "tgi") -> Any:
    routes: Routes = {"/health": health, "/info": info}
    return lambda: ChatTGI(base_url="http://tgi.invalid", model=model, **clients(routes))


@pytest.mark.parametrize("run", RUNS)
def test_tgi_states(run: str) -> None:
    h = check(tgi(REFUSED, REFUSED), run)
    assert not h.alive and not h.ready and "/health failed" in h.detail
    h = check(tgi(TGI_UNHEALTHY), run)
    assert not h.alive and not h.ready and h.detail == "/health answered 503: unhealthy"
    h = check(tgi((200, None), model="org/other"), run)
    assert h.alive and not h.ready and "not served" in h.detail
    h = check(tgi((200, None), model="org/served"), run)
    assert h.alive and h.ready and h.context_window == 100


# ------------------------------------------------------------------ vLLM server: /health, /models

V1 = "http://vllm.invalid/v1"
CARDS = {"object": "list", "data": [{"id": "served", "object": "model", "max_model_len": 64}]}


def vllm(
    health: Route, models: Route = (200, CARDS), model: str = "served", cls: Any = None
) -> Any:
    routes: Routes = {"/health": health, "/v1/models": models}
    cls = cls or ChatVLLMServer
    return lambda: cls(base_url=V1, model=model, **clients(routes))


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("cls", [ChatVLLMServer, VLLMServer])
def test_vllm_server_states(run: str, cls: Any) -> None:
    h = check(vllm(REFUSED, REFUSED, cls=cls), run)
    assert not h.alive and "/health failed" in h.detail
    # vLLM answers 503 on /health when its engine is dead, while /models still answers.
    h = check(vllm((503, None), cls=cls), run)
    assert not h.alive and not h.ready and h.detail == "/health answered 503"
    h = check(vllm((500, {"error": {"message": "engine hung"}}), cls=cls), run)
    assert not h.alive and h.detail == "/health answered 500: engine hung"
    h = check(vllm((200, None), model="other", cls=cls), run)
    assert h.alive and not h.ready and "not served" in h.detail
    h = check(vllm((200, None), cls=cls), run)
    assert h.alive and h.ready and h.context_window == 64


@pytest.mark.parametrize("run", RUNS)
def test_vllm_server_without_a_health_route_is_judged_by_models(run: str) -> None:
    """llama.cpp's server and other OpenAI-compatible servers have no /health (404)."""
    h = check(vllm((404, None)), run)
    assert h.ready
    h = check(vllm((404, None), (503, {"error": {"message": "loading model"}})), run)
    assert not h.alive and "/models failed" in h.detail
    h = check(vllm((404, None), (401, {"error": {"message": "bad key"}})), run)
    assert h.alive and not h.ready  # it answers: the key is refused
    h = check(vllm((401, {"error": {"message": "bad key"}})), run)
    assert h.alive and not h.ready and "/health answered 401: bad key" in h.detail


# ------------------------------------------------------------------ DeepSeek: GET /models

DS_MODELS = {"object": "list", "data": [{"id": "deepseek-chat", "object": "model"}]}


def deepseek(models: Route, model: str = "deepseek-chat") -> Any:
    routes: Routes = {"/models": models}
    return lambda: ChatDeepSeek(
        base_url="http://deepseek.invalid", api_key="sk-test", model=model, **clients(routes)
    )


@pytest.mark.parametrize("run", RUNS)
def test_deepseek_states(run: str) -> None:
    h = check(deepseek(REFUSED), run)
    assert not h.alive
    overloaded = (503, {"error": {"message": "Server overloaded", "type": "server_error"}})
    h = check(deepseek(overloaded), run)
    assert not h.alive and not h.ready and "Server overloaded" in h.detail
    h = check(deepseek((429, {"error": {"message": "Rate limit reached"}})), run)
    assert h.alive and not h.ready
    h = check(deepseek((401, {"error": {"message": "Authentication Fails"}})), run)
    assert h.alive and not h.ready and "refused the key" in h.detail
    h = check(deepseek((200, DS_MODELS), model="deepseek-reasoner"), run)
    assert h.alive and not h.ready and "not offered" in h.detail
    h = check(deepseek((200, DS_MODELS)), run)
    assert h.ready


# ------------------------------------------------------------------ Azure: /openai/models, a chat


AZ_CHAT = "/openai/deployments/gpt-4o/chat/completions"
AZ_ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [
        {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "p"}}
    ],
}


def azure(models: Route, chat: Route = (200, AZ_ANSWER)) -> Any:
    routes: Routes = {"/openai/models": models, AZ_CHAT: chat}
    return lambda: ChatAzureOpenAI(
        azure_endpoint="http://azure.invalid",
        azure_deployment="gpt-4o",
        api_version="2024-10-21",
        api_key="k",
        **clients(routes),
    )


def azure_deep(make: Callable[[], Any], run: str) -> HealthReport:
    llm = make()
    return llm.health(deep=True) if run == "sync" else asyncio.run(llm.ahealth(deep=True))


@pytest.mark.parametrize("run", RUNS)
def test_azure_states(run: str) -> None:
    listed = (200, {"object": "list", "data": []})
    h = check(azure(REFUSED), run)
    assert not h.alive
    h = check(azure((503, {"error": {"code": "503", "message": "Service unavailable"}})), run)
    assert not h.alive and not h.ready and "Service unavailable" in h.detail
    h = check(azure((401, {"error": {"code": "401", "message": "Access denied"}})), run)
    assert h.alive and not h.ready and "refused the credentials" in h.detail
    h = check(azure(listed), run)  # free: the endpoint answers, the deployment is not tried
    assert h.alive and not h.ready and "deep=True" in h.detail
    gone = (404, {"error": {"code": "DeploymentNotFound", "message": "no such deployment"}})
    h = azure_deep(azure(listed, gone), run)
    assert h.alive and not h.ready and "no such deployment" in h.detail
    busy = (503, {"error": {"code": "503", "message": "The deployment is unavailable"}})
    h = azure_deep(azure(listed, busy), run)
    assert not h.alive and not h.ready and "unavailable" in h.detail
    h = azure_deep(azure(listed), run)
    assert h.alive and h.ready


# ------------------------------------------------------------------ Gemini: models.get

GEMINI_PATH = "/v1beta/models/gemini-2.5-flash"
GEMINI_CARD = {
    "name": "models/gemini-2.5-flash",
    "inputTokenLimit": 1000,
    "outputTokenLimit": 200,
    "supportedGenerationMethods": ["generateContent", "countTokens"],
}


def google_error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def gemini(card: Route) -> Any:
    routes: Routes = {GEMINI_PATH: card}
    return lambda: ChatGemini(
        api_key="AIzaHealthKey", base_url="http://gemini.invalid", **clients(routes)
    )


@pytest.mark.parametrize("run", RUNS)
def test_gemini_states(run: str) -> None:
    pytest.importorskip("google.genai")
    h = check(gemini(REFUSED), run)
    assert not h.alive
    h = check(gemini((503, google_error(503, "UNAVAILABLE", "The model is overloaded"))), run)
    assert not h.alive and not h.ready and "overloaded" in h.detail
    h = check(gemini((404, google_error(404, "NOT_FOUND", "models/x is not found"))), run)
    assert h.alive and not h.ready and "not served" in h.detail
    h = check(gemini((200, GEMINI_CARD)), run)
    assert h.ready
