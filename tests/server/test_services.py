"""Named services over the real gateway: ``multillm serve`` on a free port with a services
folder, the embedded SmolLM2 behind it, spoken to with httpx and websockets.

Jobs run inline (no ``jobs:``): the Celery queue is tested in test_jobs_celery.py. No test
reads the model's words: statuses, shapes, fields, counts and timings only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import peers
from tests.server.conftest import Gateway, embedded, start_gateway

KEY = "services-test-key"
FINAL = {"complete", "error"}

CHAT = """\
echo:
  type: chat
  name: echo
  description: {en: Repeat}
  flavor:
    - name: small
      modelName: smollm2
      maxGenerationLength: 8
      temperature: 0
    - name: narrow
      modelName: smollm2
      totalContextLength: 96
      maxGenerationLength: 16
"""

SUMMARY = """\
summarize/en:
  type: summary
  fields: 2
  name: summarize-en
  route: summarize/en
  description: {fr: English summary}
  backend: vLLM
  flavor:
    - name: llama
      modelName: smollm2
      totalContextLength: 2048
      maxGenerationLength: 12
      tokenizerClass: LlamaTokenizer
      createNewTurnAfter: 40
      summaryTurns: 2
      maxNewTurns: 2
      temperature: 0.2
      top_p: 0.7
      reduceSummary: false
      consolidateSummary: false
      type: abstractive
    - name: tiny
      modelName: smollm2
      totalContextLength: 64
      maxGenerationLength: 16
      createNewTurnAfter: 60
"""

RAG = """\
ask:
  type: rag
  name: ask
  flavor:
    - name: small
      modelName: smollm2
      maxGenerationLength: 8
"""

SUMMARY_TEMPLATE = (
    "Summary so far:\n{}\n\nNew turns:\n{}\n\nWrite the new summary, one line per speaker."
)


def transcript(lines: int) -> str:
    names = ("Alice", "Bob", "Carol")
    return "\n".join(
        f"{names[i % 3]}: We looked at item {i} of the budget and agreed to review it again."
        for i in range(lines)
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("services")
    (root / "services").mkdir()
    (root / "prompts").mkdir()
    (root / "services" / "chat.yaml").write_text(CHAT)
    (root / "services" / "summary.yaml").write_text(SUMMARY)
    (root / "services" / "rag.yaml").write_text(RAG)
    (root / "prompts" / "echo.txt").write_text("Repeat this text: {text}")
    (root / "prompts" / "summarize-en.txt").write_text(SUMMARY_TEMPLATE)
    return root


@pytest.fixture(scope="module")
def gw(server_deps: None, llama_cpp_available: str, folders: Path) -> Iterator[Gateway]:
    config = {
        "server": {"api_keys": [KEY]},
        "models": [embedded(params={"max_tokens": 8})],
        "services": {"dir": "services", "prompts": "prompts", "reload_s": 0.5},
    }
    gateway = start_gateway(config, folders / "serve.yaml", name="gateway-services")
    try:
        yield gateway
    finally:
        peers.stop(gateway.proc)


@pytest.fixture
def c(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers=gw.headers(), timeout=60) as client:
        yield client


def submit(c: httpx.Client, route: str, content: str, flavor: str, **kw: Any) -> str:
    r = c.post(
        f"/services/{route}/generate",
        files={"file": ("input.txt", content.encode())},
        data={"flavor": flavor, **kw},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "Request successfully queued"
    return str(body["jobId"])


def wait(c: httpx.Client, job_id: str, timeout: float = 180) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(f"/results/{job_id}")
        assert r.status_code in (200, 202, 410, 500), r.text
        if r.json()["status"] in FINAL:
            return r
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished in {timeout} s")


def within(seconds: float, probe: Callable[[], bool]) -> float:
    """Seconds until ``probe()`` is true; fails past ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if probe():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def ws_url(gw: Gateway, path: str) -> str:
    return gw.url.replace("http://", "ws://") + path


# ------------------------------------------------------------------ routes


def test_healthcheck_answers_1(c: httpx.Client) -> None:
    r = c.get("/healthcheck")
    assert r.status_code == 200
    assert r.json() == "1"


def test_services_lists_each_service_its_flavors_and_status(c: httpx.Client) -> None:
    r = c.get("/services")
    assert r.status_code == 200
    by_route = {s["route"]: s for s in r.json() if "route" in s}
    assert {"echo", "summarize/en", "ask"} <= set(by_route)
    summary = by_route["summarize/en"]
    assert summary["status"] == "ok"
    assert summary["type"] == "summary"
    assert summary["fields"] == 2
    assert [f["name"] for f in summary["flavor"]] == ["llama", "tiny"]
    assert summary["flavor"][0]["createNewTurnAfter"] == 40


def test_routes_need_the_key(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as anon:
        assert anon.get("/services").status_code == 401
        r = anon.post("/services/echo/generate", json={"content": "hi", "flavor": "small"})
        assert r.status_code == 401
        assert anon.get("/results/x").status_code == 401
        assert anon.get("/healthcheck").status_code == 200


def test_chat_job_multipart_queued_then_complete(c: httpx.Client) -> None:
    job = submit(c, "echo", "Hello there.", "small", temperature="0", top_p="0.9")
    first = c.get(f"/results/{job}")
    assert first.status_code in (200, 202)  # never 404 while it waits
    assert first.json()["status"] in {"queued", "started", "processing", "complete"}
    done = wait(c, job)
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "complete"
    assert body["message"] == "success"
    assert isinstance(body["summarization"], str)


def test_chat_job_json_body(c: httpx.Client) -> None:
    r = c.post("/services/echo/generate", json={"content": "Hello.", "flavor": "small"})
    assert r.status_code == 200, r.text
    assert wait(c, r.json()["jobId"]).json()["status"] == "complete"


def test_rag_job_passes_the_sources_through(c: httpx.Client) -> None:
    docs = [
        {"page_content": "The sky is blue on clear days.", "metadata": {"title": "sky"}},
        {"page_content": "Grass is green.", "metadata": {"source": "grass.txt"}},
    ]
    r = c.post(
        "/services/ask/generate",
        json={"content": "What colour is the sky?", "flavor": "small", "documents": docs},
    )
    assert r.status_code == 200, r.text
    body = wait(c, r.json()["jobId"]).json()
    assert body["status"] == "complete"
    assert [s["content"] for s in body["sources"]] == [d["page_content"] for d in docs]
    assert [s["metadata"] for s in body["sources"]] == [d["metadata"] for d in docs]
    assert [s["id"] for s in body["sources"]] == [1, 2]


def test_summary_progress_pushed_over_websocket_then_closed(gw: Gateway, c: httpx.Client) -> None:
    from websockets.exceptions import ConnectionClosedOK
    from websockets.sync.client import connect

    job = submit(c, "summarize/en", transcript(6), "llama")
    seen: list[dict[str, Any]] = []
    with connect(
        ws_url(gw, f"/ws/results/{job}"), additional_headers=gw.headers(), open_timeout=30
    ) as ws:
        while True:
            seen.append(json.loads(ws.recv(timeout=180)))
            if seen[-1]["status"] in FINAL:
                break
        with pytest.raises(ConnectionClosedOK):  # the server closes it at the end
            ws.recv(timeout=10)
    assert seen[-1]["status"] == "complete", seen[-1]
    assert seen[-1]["batches"] >= 2  # 6 turns, 2 a batch: progress had steps to report
    progress = [int(s["progress"]) for s in seen if s["status"] == "processing"]
    assert progress, seen
    assert progress == sorted(progress)
    assert all(0 <= p <= 100 for p in progress)
    statuses = [s["status"] for s in seen]
    order = ["queued", "started", "processing", "complete"]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)


def test_websocket_for_a_list_sends_only_those_jobs(gw: Gateway, c: httpx.Client) -> None:
    from websockets.sync.client import connect

    a = submit(c, "echo", "One.", "small")
    b = submit(c, "echo", "Two.", "small")
    other = submit(c, "echo", "Three.", "small")
    messages: list[Any] = []
    with connect(ws_url(gw, "/ws/results"), additional_headers=gw.headers()) as ws:
        ws.send(json.dumps([a, b, "no-such-job"]))
        initial = json.loads(ws.recv(timeout=60))
        assert isinstance(initial, list)
        assert [m["task_id"] for m in initial] == [a, b, "no-such-job"]
        assert initial[2]["status"] == "unknown"
        final = {m["task_id"] for m in initial if m["status"] in FINAL}
        while final != {a, b}:
            m = json.loads(ws.recv(timeout=180))
            messages.append(m)
            if m["status"] in FINAL:
                final.add(m["task_id"])
    assert all(m["task_id"] in (a, b) for m in messages)
    assert other not in {m["task_id"] for m in messages}
    wait(c, other)


def test_idempotency_key_returns_the_same_job(c: httpx.Client) -> None:
    def post(key: str) -> str:
        r = c.post(
            "/services/echo/generate",
            json={"content": "Same.", "flavor": "small"},
            headers={"Idempotency-Key": key},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["jobId"])

    first = post("key-1")
    assert post("key-1") == first
    second = post("key-2")
    assert second != first
    wait(c, first)
    assert post("key-1") == first  # still the same once it is done
    wait(c, second)


def test_delete_cancels_a_running_job_and_frees_the_model(c: httpx.Client) -> None:
    job = submit(c, "summarize/en", transcript(40), "llama")
    within(120, lambda: c.get(f"/results/{job}").json()["status"] in ("started", "processing"))
    t0 = time.monotonic()
    r = c.delete(f"/results/{job}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "error"
    assert r.json()["cancelled"] is True
    got = c.get(f"/results/{job}")
    assert got.status_code == 410
    assert got.json()["cancelled"] is True
    # the call in flight was abandoned: the next job runs at once, and the cancelled one
    # never turns complete
    nxt = submit(c, "echo", "After.", "small")
    assert wait(c, nxt, timeout=60).json()["status"] == "complete"
    took = time.monotonic() - t0
    assert c.get(f"/results/{job}").json()["status"] == "error"
    print(f"cancel -> next job complete in {took:.2f} s")
    assert c.delete("/results/no-such-job").status_code == 404


# ------------------------------------------------------------------ refusals


def test_a_flavor_that_cannot_fit_is_refused_at_submission(c: httpx.Client) -> None:
    r = c.post(
        "/services/summarize/en/generate",
        files={"file": ("t.txt", b"Alice: hello.")},
        data={"flavor": "tiny"},
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "flavor"
    assert "createNewTurnAfter" in err["message"]


def test_a_chat_text_over_the_window_is_refused_at_submission(c: httpx.Client) -> None:
    r = c.post(
        "/services/echo/generate",
        files={"file": ("t.txt", ("word " * 400).encode())},
        data={"flavor": "narrow"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "file"
    r = c.post("/services/echo/generate", json={"content": "word " * 400, "flavor": "narrow"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "content"


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"files": {"file": ("t.txt", b"")}, "data": {"flavor": "small"}}, 400, "file"),
        ({"files": {"file": ("t.txt", b"  \n")}, "data": {"flavor": "small"}}, 400, "file"),
        ({"files": {"file": ("t.txt", b"\xff\xfe")}, "data": {"flavor": "small"}}, 400, "file"),
        ({"files": {"file": ("t.txt", b"x")}, "data": {}}, 400, "flavor"),
        ({"files": {"file": ("t.txt", b"x")}, "data": {"flavor": "nope"}}, 400, "flavor"),
        (
            {"files": {"file": ("t.txt", b"x")}, "data": {"flavor": "small", "temperature": "hot"}},
            400,
            "temperature",
        ),
        (
            {"files": {"file": ("t.txt", b"x")}, "data": {"flavor": "small", "top_p": "0"}},
            400,
            "top_p",
        ),
        ({"data": {"flavor": "small"}}, 400, "file"),
        ({"json": {"content": 3, "flavor": "small"}}, 422, "content"),
        ({"json": {"content": "x"}}, 422, "flavor"),
        ({"json": {"content": "x", "flavor": "small", "extra": 1}}, 422, "extra"),
        ({"json": {"content": "x", "flavor": "small", "documents": []}}, 400, "documents"),
        ({"json": [1, 2]}, 422, "body"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "body"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    c: httpx.Client, kwargs: dict[str, Any], status: int, param: str
) -> None:
    r = c.post("/services/echo/generate", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert err["message"]


def test_unknown_service_and_job_are_404(c: httpx.Client) -> None:
    r = c.post("/services/nope/generate", json={"content": "x", "flavor": "small"})
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "route"
    assert c.get("/results/nope").status_code == 404


# ------------------------------------------------------------------ hot reload


def test_hot_reload_add_change_break_remove(gw: Gateway, c: httpx.Client, folders: Path) -> None:
    path = folders / "services" / "extra.yaml"
    template = folders / "prompts" / "extra.txt"
    body = CHAT.replace("echo:", "extra/chat:").replace("name: echo", "name: extra")
    template.write_text("Say: {text}")

    def services() -> dict[str, dict[str, Any]]:
        out = c.get("/services").json()
        return {s.get("route") or s["file"]: s for s in out}

    def generate(flavor: str = "small", content: str = "hi") -> httpx.Response:
        return c.post("/services/extra/chat/generate", json={"content": content, "flavor": flavor})

    timings = {}
    try:
        # added: served within 2 s, with no restart
        path.write_text(body)
        timings["add"] = within(2.0, lambda: generate().status_code == 200)
        # changed: a flavor renamed
        path.write_text(body.replace("name: small", "name: renamed"))
        timings["change"] = within(2.0, lambda: generate("renamed").status_code == 200)
        assert generate("small").status_code == 400
        # its template changed: read fresh (a huge template no longer fits the narrow flavor)
        template.write_text("Say: {text} " + "filler " * 200)
        timings["template"] = within(2.0, lambda: generate("narrow").status_code == 400)
        assert generate("narrow").json()["error"]["param"] == "content"
        template.write_text("Say: {text}")
        within(2.0, lambda: generate("narrow").status_code == 200)
        # broken: the last good version keeps serving, and GET /services says why
        path.write_text(body.replace("maxGenerationLength: 8", "maxGenerationLength: -1"))
        timings["break"] = within(2.0, lambda: services()["extra/chat"]["status"] == "error")
        entry = services()["extra/chat"]
        assert "maxGenerationLength" in entry["error"]
        assert "flavor[0]" in entry["error"]
        assert generate("renamed").status_code == 200
        # removed: gone within 2 s
        path.unlink()
        timings["remove"] = within(2.0, lambda: generate("renamed").status_code == 404)
        assert "extra/chat" not in services()
        # a new file broken from the start: listed as an error, its route unknown
        path.write_text("extra/chat: [not, a, mapping]\n")
        within(2.0, lambda: services().get("extra.yaml", {}).get("status") == "error")
        assert generate().status_code == 404
    finally:
        path.unlink(missing_ok=True)
        template.unlink(missing_ok=True)
    log = gw.log.read_text()
    assert "service file extra.yaml not loaded" in log
    print("hot reload, seconds until seen:", {k: round(v, 2) for k, v in timings.items()})


def test_websocket_unknown_job_bad_list_and_no_key(gw: Gateway) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    with connect(ws_url(gw, "/ws/results/no-such-job"), additional_headers=gw.headers()) as ws:
        assert json.loads(ws.recv(timeout=30))["status"] == "unknown"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    with connect(ws_url(gw, "/ws/results"), additional_headers=gw.headers()) as ws:
        ws.send(json.dumps({"not": "a list"}))
        assert json.loads(ws.recv(timeout=30))["status"] == "error"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1003
    with pytest.raises(InvalidStatus) as refused:  # closed before the handshake: a 403
        connect(ws_url(gw, "/ws/results/x"), open_timeout=30)
    assert refused.value.response.status_code == 403
