"""Jobs on a real broker: a real Redis (valkey-server), real Celery workers as separate
processes (``multillm worker``), a gateway (``multillm serve``) with ``jobs:`` configured, and an
OpenAI-style upstream in this process that answers at once (or after ``sleep=S`` seconds named
in the prompt) and counts every call by the ``tag=T`` in the prompt.

What is shown: a submitted job reads ``queued`` (never 404) while the workers are busy;
``max_concurrency`` of a model holds across two workers (the upstream's most calls in flight);
a burst of 200 jobs over two workers all complete, each run exactly once (one upstream call
per tag); a worker killed with SIGKILL mid-job: another worker finishes the job and its result
is there; results expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import peers
from tests.conftest import LOG_DIR, peer_missing
from tests.server.conftest import Gateway, start_gateway

# The broker's visibility timeout in these tests: a SIGKILLed worker's job goes to another
# worker about this long after it was delivered (plus up to RESTORE_S, the sweep's period).
VISIBILITY_S = 6
RESTORE_S = 1
MAX_CONCURRENCY = 2


# ------------------------------------------------------------------ the upstream


@dataclass
class Upstream:
    """An OpenAI-style chat upstream in a thread of this process (aiohttp), counting calls."""

    port: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    starts: list[tuple[float, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def v1(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.starts.clear()
            self.max_in_flight = self.in_flight

    async def _chat(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        text = json.dumps(body.get("messages", []))
        tag = re.search(r"tag=([\w-]+)", text)
        sleep = re.search(r"sleep=([\d.]+)", text)
        with self.lock:
            key = tag.group(1) if tag else ""
            self.calls[key] += 1
            self.starts.append((time.monotonic(), key))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if sleep:
                await asyncio.sleep(float(sleep.group(1)))
        finally:
            with self.lock:
                self.in_flight -= 1
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        return web.json_response(
            {
                "id": "chatcmpl-up",
                "object": "chat.completion",
                "created": 1,
                "model": body.get("model", "up"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"ok {key}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    async def _tokenize(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        text = json.dumps(body.get("messages") or body.get("prompt") or "")
        n = 8 + len(text) // 4
        return web.json_response({"count": n, "max_model_len": 4096, "tokens": list(range(n))})

    async def _models(self, request: Any) -> Any:
        from aiohttp import web

        card = {"id": "up", "object": "model", "owned_by": "test", "max_model_len": 4096}
        return web.json_response({"object": "list", "data": [card]})

    async def _health(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(status=200)

    async def _start(self) -> Any:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=512)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner

    @contextlib.contextmanager
    def running(self) -> Iterator[Upstream]:
        loop = self.loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="upstream", daemon=True)
        thread.start()
        runner = asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


# ------------------------------------------------------------------ workers


@dataclass
class Worker:
    """A ``multillm worker`` process (its own process group) and its log."""

    proc: subprocess.Popen[bytes]
    log: Path

    def executed(self) -> int:
        """Jobs this worker's processes finished (Celery's 'succeeded' lines)."""
        return self.log.read_text(errors="replace").count("] succeeded in ")


def start_workers(config: Path, names: list[str], concurrency: int = 2) -> list[Worker]:
    """``multillm worker --config`` processes (each its own process group), started together;
    returns once every one is ready."""
    workers = []
    for name in names:
        log = LOG_DIR / f"{name}.log"
        log.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "langchain_multillm.cli", "worker",
            "--config", str(config), "--concurrency", str(concurrency),
        ]  # fmt: skip
        workers.append(Worker(peers._popen(cmd, log, dict(os.environ)), log))
    deadline = time.monotonic() + 90
    waiting = list(workers)
    while waiting and time.monotonic() < deadline:
        w = waiting[0]
        if w.log.exists() and " ready." in w.log.read_text(errors="replace"):
            waiting.pop(0)
        elif w.proc.poll() is not None:
            break
        else:
            time.sleep(0.1)
    if waiting:
        for w in workers:
            peers.stop(w.proc)
        w = waiting[0]
        tail = w.log.read_text(errors="replace")[-3000:] if w.log.exists() else ""
        raise RuntimeError(f"worker {w.log.stem} did not start ({w.proc.returncode}):\n{tail}")
    return workers


def write_config(
    root: Path, redis_url: str, upstream: Upstream, *, queue: str, **jobs: Any
) -> dict[str, Any]:
    """The gateway config (services folder with one ``chat`` service on the upstream)."""
    (root / "services").mkdir(exist_ok=True)
    (root / "prompts").mkdir(exist_ok=True)
    (root / "services" / "echo.yaml").write_text(
        "echo:\n"
        "  type: chat\n"
        "  name: echo\n"
        "  flavor:\n"
        "    - name: up\n"
        "      modelName: up\n"
        "      maxGenerationLength: 16\n"
    )
    (root / "prompts" / "echo.txt").write_text("Answer briefly: {}\n")
    config = {
        "models": [
            {
                "name": "up",
                "model": "vllm-server:up",
                "params": {"base_url": upstream.v1, "api_key": "none", "max_retries": 0},
                "max_concurrency": MAX_CONCURRENCY,
            }
        ],
        "services": {"dir": "services", "prompts": "prompts", "reload_s": 1},
        "jobs": {
            "broker": redis_url,
            "queue": queue,
            "visibility_timeout_s": VISIBILITY_S,
            "restore_interval_s": RESTORE_S,
            **jobs,
        },
    }
    import yaml

    (root / "serve.yaml").write_text(yaml.safe_dump(config))
    return config


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def celery_deps() -> None:
    try:
        import aiohttp  # noqa: F401
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        peer_missing(f"the [jobs] extra ({exc}); run `make install`")


@pytest.fixture(scope="module")
def upstream(celery_deps: None) -> Iterator[Upstream]:
    with Upstream().running() as up:
        yield up


@pytest.fixture(scope="module")
def broker(redis_peer: peers.RedisPeer) -> str:
    """A database of the session's Redis of its own (no other test flushes it)."""
    return redis_peer.url(7)


@dataclass
class Cluster:
    gateway: Gateway
    workers: list[Worker]
    config: dict[str, Any]
    path: Path
    queue: str


@pytest.fixture(scope="module")
def cluster(
    server_deps: None, broker: str, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A gateway and two workers (two processes each) on one queue."""
    root = tmp_path_factory.mktemp("jobs")
    queue = f"multillm-test-{uuid.uuid4().hex[:8]}"
    config = write_config(root, broker, upstream, queue=queue, time_limit_s=5)
    path = root / "serve.yaml"
    workers: list[Worker] = []
    gw: Gateway | None = None
    try:
        workers = start_workers(path, ["jobs-worker-0", "jobs-worker-1"])
        gw = start_gateway(config, path, name="jobs-gateway")
        yield Cluster(gw, workers, config, path, queue)
    finally:
        if gw is not None:
            peers.stop(gw.proc)
        for w in workers:
            peers.stop(w.proc)


@pytest.fixture
def client(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.gateway.url, timeout=30) as c:
        yield c


def submit(client: httpx.Client, content: str, **headers: str) -> str:
    r = client.post(
        "/services/echo/generate", json={"content": content, "flavor": "up"}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "Request successfully queued"
    return str(r.json()["jobId"])


def wait_final(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/results/{job_id}")
        assert r.status_code in (200, 202, 410, 500), r.text
        body: dict[str, Any] = r.json()
        if body["status"] in ("complete", "error"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not final after {timeout}s: {body}")


# ------------------------------------------------------------------ tests


def _config(**jobs: Any) -> Any:
    from langchain_multillm.server.config import _validate

    data = {"models": [{"name": "m", "model": "llamacpp:"}], "jobs": jobs}
    return _validate(data, set())


def test_jobs_section_checked_and_carried() -> None:
    from langchain_multillm.server.celery_app import celery_settings, hard_limit_s
    from langchain_multillm.server.config import ConfigError

    config = _config(broker="redis://:s3cret@127.0.0.1:6379/2", visibility_timeout_s=100)
    jobs = config.jobs
    assert jobs.job_time_limit_s == 90 and jobs.claim_lease_s == 30  # min(30, 100 / 3)
    assert "s3cret" not in repr(config) and "s3cret" in config.secrets
    assert config.redact("redis://:s3cret@h") == "redis://:**********@h"
    assert config.with_overrides(port=9000).jobs == jobs  # every section carried
    settings = celery_settings(jobs)
    assert settings["task_acks_late"] and settings["task_reject_on_worker_lost"]
    assert settings["worker_prefetch_multiplier"] == 1 and settings["worker_disable_prefetch"]
    assert settings["broker_transport_options"]["visibility_timeout"] == 100
    assert settings["result_expires"] == jobs.result_ttl_s
    assert settings["task_time_limit"] == hard_limit_s(jobs, 90) < 100
    with pytest.raises(ConfigError, match=r"jobs.broker: must be a Redis URL"):
        _config(broker="amqp://127.0.0.1")
    with pytest.raises(ConfigError, match=r"jobs.time_limit_s: 95 must be at most 90%"):
        _config(broker="redis://127.0.0.1", visibility_timeout_s=100, time_limit_s=95)
    with pytest.raises(ConfigError, match=r"jobs.workers: unknown key; allowed: broker, queue"):
        _config(broker="redis://127.0.0.1", workers=2)


def test_job_time_limit_from_the_flavor_budgets() -> None:
    from types import SimpleNamespace

    from langchain_multillm.server.celery_app import job_budget_s
    from langchain_multillm.server.jobs import JobRequest

    flavor = SimpleNamespace(
        name="f", maxGenerationLength=100, createNewTurnAfter=250, reduceSummary=True
    )
    chat = SimpleNamespace(spec=SimpleNamespace(type="chat", flavor=[flavor]))
    summary = SimpleNamespace(spec=SimpleNamespace(type="summary", flavor=[flavor]))
    job = JobRequest(route="r", flavor="f", content="x" * 1000)
    assert job_budget_s(chat, job, 2.0) == 30 + 50  # one call: 30 s + 100 tokens at 2/s
    assert job_budget_s(summary, job, 2.0) == 2 * 4 * 80  # 4 batches, reduced: 8 calls
    assert job_budget_s(chat, job.model_copy(update={"flavor": "nope"}), 2.0) == float("inf")


def test_unreachable_broker_is_a_503_error_without_the_password(celery_deps: None) -> None:
    from types import SimpleNamespace

    from langchain_multillm.errors import BackendUnavailableError
    from langchain_multillm.server.celery_app import CeleryJobQueue
    from langchain_multillm.server.jobs import JobRequest, Runtime

    config = _config(broker=f"redis://:pw-s3cret@127.0.0.1:{peers.free_port()}/0")
    runtime = Runtime(config, SimpleNamespace(get=lambda route: None))  # type: ignore[arg-type]

    async def scenario() -> None:
        jobs = CeleryJobQueue(config, runtime)
        try:
            for call in (
                jobs.submit(JobRequest(route="r", flavor="f", content="x")),
                jobs.status("some-id"),
                jobs.cancel("some-id"),
            ):
                with pytest.raises(BackendUnavailableError, match=r"jobs\.broker") as info:
                    await call
                assert "pw-s3cret" not in str(info.value)
        finally:
            await jobs.aclose()

    asyncio.run(scenario())


def test_worker_without_jobs_section_exits_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from langchain_multillm import cli

    path = tmp_path / "serve.yaml"
    path.write_text("models: [{name: m, model: 'llamacpp:'}]\n")
    result = CliRunner().invoke(cli.app, ["worker", "--config", str(path)])
    assert result.exit_code == 2
    assert "jobs: is required to run a worker" in result.stderr
    path.write_text("models: [{name: m, model: 'llamacpp:'}]\njobs: {broker: 'http://x.invalid'}\n")
    result = CliRunner().invoke(cli.app, ["worker", "--config", str(path)])
    assert result.exit_code == 2 and "jobs.broker: must be a Redis URL" in result.stderr


@pytest.mark.timeout(90)
def test_queued_while_workers_busy_and_max_concurrency_across_workers(
    cluster: Cluster, client: httpx.Client, upstream: Upstream
) -> None:
    """Eight 0.6 s jobs on four worker processes (two workers): the model's
    max_concurrency (2) holds at the upstream; a job submitted behind them reads ``queued``."""
    upstream.reset()
    ids = [submit(client, f"slow tag=sem{i} sleep=0.6") for i in range(8)]
    late = submit(client, "late tag=late")
    first = client.get(f"/results/{late}")
    assert first.status_code == 202
    assert first.json()["status"] == "queued", first.json()
    time.sleep(0.5)  # four processes busy, eight jobs ahead of it: still queued
    assert client.get(f"/results/{late}").json()["status"] == "queued"
    for job_id in [*ids, late]:
        assert wait_final(client, job_id)["status"] == "complete"
    assert upstream.max_in_flight == MAX_CONCURRENCY, "the limit must hold, and be reached"
    assert sum(upstream.calls[f"sem{i}"] for i in range(8)) == 8
    assert client.get(f"/results/{uuid.uuid4()}").status_code == 404


@pytest.mark.timeout(60)
def test_cancel_a_running_and_a_queued_job_and_idempotency_key(
    cluster: Cluster, client: httpx.Client, upstream: Upstream
) -> None:
    """DELETE while the worker's call is in flight: the job ends cancelled (410) and the call
    is abandoned (its process is free long before the 3 s call would end); DELETE of a job still
    queued: no worker ever calls the model for it. The same Idempotency-Key: the same job."""
    upstream.reset()
    running = submit(client, "cancel me tag=cr sleep=3")
    fillers = [submit(client, f"filler tag=f{i} sleep=1.5") for i in range(3)]
    waiting = submit(client, "never run tag=cq")
    deadline = time.monotonic() + 30
    while upstream.calls["cr"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.calls["cr"] == 1, "the job did not start"
    cancelled_at = time.monotonic()
    for job_id in (running, waiting):
        r = client.delete(f"/results/{job_id}")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "error" and r.json()["cancelled"] is True
        got = client.get(f"/results/{job_id}")
        assert got.status_code == 410 and got.json()["cancelled"] is True
    # The running job's task ends soon after the cancel (the call abandoned, not awaited).
    done = ""
    while time.monotonic() - cancelled_at < 10 and f"run_job[{running}] succeeded" not in done:
        done = "".join(w.log.read_text(errors="replace") for w in cluster.workers)
        time.sleep(0.1)
    assert f"run_job[{running}] succeeded" in done
    assert time.monotonic() - cancelled_at < 2.5, "the call in flight was not abandoned"
    for job_id in fillers:
        assert wait_final(client, job_id)["status"] == "complete"
    time.sleep(0.5)  # the cancelled queued job has had every chance to run by now
    assert upstream.calls["cq"] == 0 and upstream.calls["cr"] == 1
    assert client.get(f"/results/{waiting}").json()["cancelled"] is True  # still cancelled

    key = f"key-{uuid.uuid4()}"
    first = submit(client, "once tag=idem", **{"Idempotency-Key": key})
    assert submit(client, "once tag=idem", **{"Idempotency-Key": key}) == first
    assert wait_final(client, first)["status"] == "complete"
    assert submit(client, "once tag=idem", **{"Idempotency-Key": key}) == first
    assert upstream.calls["idem"] == 1


@pytest.mark.timeout(60)
def test_websocket_pushes_each_change_written_by_a_worker(
    cluster: Cluster, client: httpx.Client
) -> None:
    """The gateway's WS /ws/results/{id} follows a job a worker process runs (Redis pub/sub):
    each change in order, the final one, then the server closes."""
    from websockets.exceptions import ConnectionClosedOK
    from websockets.sync.client import connect

    job_id = submit(client, "pushed tag=ws sleep=1")
    ws_url = cluster.gateway.url.replace("http://", "ws://") + f"/ws/results/{job_id}"
    seen: list[dict[str, Any]] = []
    with connect(ws_url, open_timeout=30) as ws:
        while not seen or seen[-1]["status"] not in ("complete", "error"):
            seen.append(json.loads(ws.recv(timeout=30)))
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=10)
    statuses = [m["status"] for m in seen]
    assert statuses[-1] == "complete" and seen[-1]["summarization"] == "ok ws"
    assert "started" in statuses or "processing" in statuses, statuses  # pushed, not polled
    order = ["queued", "started", "processing", "complete"]
    assert [order.index(x) for x in statuses] == sorted(order.index(x) for x in statuses)
    assert len(statuses) == len(set(statuses)), statuses  # each change once


@pytest.mark.timeout(120)
def test_burst_of_200_jobs_over_two_workers_each_runs_once(
    cluster: Cluster, client: httpx.Client, upstream: Upstream
) -> None:
    upstream.reset()
    before = [w.executed() for w in cluster.workers]
    n = 200

    async def send_all() -> list[str]:
        async with httpx.AsyncClient(base_url=cluster.gateway.url, timeout=60) as ac:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> str:
                async with sem:
                    r = await ac.post(
                        "/services/echo/generate",
                        json={"content": f"burst tag=b{i}", "flavor": "up"},
                    )
                    assert r.status_code == 200, r.text
                    return str(r.json()["jobId"])

            return list(await asyncio.gather(*(one(i) for i in range(n))))

    started = time.monotonic()
    ids = asyncio.run(send_all())
    submitted = time.monotonic() - started
    deadline = time.monotonic() + 90
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        time.sleep(0.5)
        pending = [j for j in pending if client.get(f"/results/{j}").json()["status"] != "complete"]
    took = time.monotonic() - started
    assert not pending, f"{len(pending)} of {n} jobs not complete after {took:.0f}s"
    assert len(set(ids)) == n
    # Exactly once: one upstream call per job, none missing, none twice.
    assert {f"b{i}" for i in range(n)} <= set(upstream.calls)
    assert all(upstream.calls[f"b{i}"] == 1 for i in range(n)), {
        k: c for k, c in upstream.calls.items() if c != 1
    }
    assert sum(c for k, c in upstream.calls.items() if k.startswith("b")) == n
    done = [w.executed() - b for w, b in zip(cluster.workers, before, strict=True)]
    assert sum(done) == n and all(d > 0 for d in done), done
    print(f"\nburst: {n} jobs submitted in {submitted:.1f}s, all complete in {took:.1f}s ({done})")


def claimed_by(cluster: Cluster, r: Any, job_id: str, tag: str, upstream: Upstream) -> int:
    """The pid of the pool process running ``job_id`` (from its claim), once its call is in
    flight at the upstream."""
    deadline = time.monotonic() + 30
    holder = None
    while time.monotonic() < deadline and not (holder and upstream.calls[tag]):
        holder = r.get(f"{cluster.queue}:job:{job_id}:claim")
        time.sleep(0.05)
    assert holder is not None and upstream.calls[tag] == 1, "the job did not start"
    return int(holder.decode().split(":")[1])


@pytest.mark.timeout(60)
def test_pool_process_killed_mid_job_run_again_without_waiting_for_the_broker(
    cluster: Cluster, client: httpx.Client, upstream: Upstream, broker: str
) -> None:
    """SIGKILL to the pool process only: its worker puts the job back at once
    (task_reject_on_worker_lost) and it runs again when the dead process's claim lapses,
    well before the visibility timeout."""
    import redis

    upstream.reset()
    job_id = submit(client, "long tag=child sleep=2")
    r = redis.Redis.from_url(broker)
    try:
        os.kill(claimed_by(cluster, r, job_id, "child", upstream), signal.SIGKILL)
        killed = time.monotonic()
        final = wait_final(client, job_id, timeout=30)
    finally:
        r.close()
    assert final["status"] == "complete" and final["summarization"] == "ok child", final
    assert upstream.calls["child"] == 2
    retaken = upstream.starts[-1][0] - killed
    assert retaken < VISIBILITY_S, retaken
    print(f"\npool process SIGKILLed mid-job: run again {retaken:.1f}s after the kill")


@pytest.mark.timeout(120)
def test_worker_killed_mid_job_another_finishes_it(
    cluster: Cluster, client: httpx.Client, upstream: Upstream, broker: str
) -> None:
    """SIGKILL to the whole worker (its main process and pool) running a 3 s job: the job is
    redelivered after the visibility timeout, run again by the other worker, and completes."""
    import redis

    upstream.reset()
    job_id = submit(client, "long tag=kill sleep=3")
    r = redis.Redis.from_url(broker)
    child = claimed_by(cluster, r, job_id, "kill", upstream)
    victim = next(w for w in cluster.workers if w.proc.pid == os.getpgid(child))
    os.killpg(victim.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    victim.proc.wait(10)
    cluster.workers.remove(victim)
    assert client.get(f"/results/{job_id}").json()["status"] in ("started", "processing")

    final = wait_final(client, job_id, timeout=60)
    finished = time.monotonic()
    assert final["status"] == "complete", final
    assert final["summarization"] == "ok kill"
    assert upstream.calls["kill"] == 2  # the call cut by the kill, then the whole job again
    retaken = upstream.starts[-1][0] - killed
    assert retaken < 3 * VISIBILITY_S, retaken
    print(
        f"\nSIGKILL mid-job: retaken by the other worker {retaken:.1f}s after the kill, "
        f"complete {finished - killed:.1f}s after it (visibility {VISIBILITY_S}s, sweep "
        f"{RESTORE_S}s)"
    )
    r.close()


@pytest.mark.timeout(90)
def test_results_expire(
    celery_deps: None, broker: str, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With result_ttl_s=2 a finished job's status (and Celery's own result) is gone after 2 s:
    its id is unknown again. (The gateway's queue object here, on a queue of its own.)"""
    import redis

    from langchain_multillm.server.celery_app import CeleryJobQueue
    from langchain_multillm.server.config import load_config
    from langchain_multillm.server.jobs import JobRequest, load_runtime

    root = tmp_path_factory.mktemp("jobs-ttl")
    queue = f"multillm-ttl-{uuid.uuid4().hex[:8]}"
    write_config(root, broker, upstream, queue=queue, result_ttl_s=2)
    path = root / "serve.yaml"
    [worker] = start_workers(path, ["jobs-worker-ttl"], concurrency=1)
    r = redis.Redis.from_url(broker)

    async def scenario() -> None:
        jobs = CeleryJobQueue(load_config(path), load_runtime(path))
        try:
            job_id = await jobs.submit(JobRequest(route="echo", flavor="up", content="tag=ttl"))
            statuses = [s async for s in jobs.watch(job_id)]
            assert statuses[0]["status"] in ("queued", "started", "processing")
            assert statuses[-1]["status"] == "complete", statuses
            assert 0 < r.pttl(f"{queue}:job:{job_id}") <= 2000
            meta = f"celery-task-meta-{job_id}"  # stored once the task has returned
            for _ in range(40):
                if r.exists(meta):
                    break
                await asyncio.sleep(0.05)
            assert 0 < r.pttl(meta) <= 2000
            await asyncio.sleep(2.5)
            assert await jobs.status(job_id) is None
            assert [s async for s in jobs.watch(job_id)] == []
            assert not r.exists(meta)
        finally:
            await jobs.aclose()

    try:
        asyncio.run(scenario())
    finally:
        r.close()
        peers.stop(worker.proc)


@pytest.mark.timeout(180)
def test_hot_reload_reaches_every_gateway_worker_and_job_worker(
    cluster: Cluster, upstream: Upstream
) -> None:
    """A service file added, then removed, takes effect within 2 s in each process: the two
    uvicorn workers of a second gateway (``server.workers: 2``, fresh connections so both
    answer) and the Celery workers' pool processes (jobs on the new service complete)."""
    root = cluster.path.parent
    config = {**cluster.config, "server": {"workers": 2}}
    gw = start_gateway(config, root / "serve-2-workers.yaml", name="jobs-gateway-2-workers")
    service = root / "services" / "echo2.yaml"
    try:

        def routes() -> list[set[str]]:
            seen = []
            for _ in range(20):  # a new connection each time: either worker may take it
                with httpx.Client(base_url=gw.url, timeout=30) as c:
                    r = c.get("/services")
                    assert r.status_code == 200, r.text
                    seen.append({s.get("route") for s in r.json()})
            return seen

        assert all("echo2" not in s for s in routes())
        (root / "prompts" / "echo2.txt").write_text("Answer briefly: {}\n")
        service.write_text((root / "services" / "echo.yaml").read_text().replace("echo", "echo2"))
        time.sleep(2.0)
        assert all("echo2" in s for s in routes())
        upstream.reset()
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            ids = []
            for i in range(8):  # more jobs than pool processes (2 workers x 2)
                r = c.post(
                    "/services/echo2/generate",
                    json={"content": f"reload tag=r{i}", "flavor": "up"},
                )
                assert r.status_code == 200, r.text
                ids.append(str(r.json()["jobId"]))
            finals = [wait_final(c, j) for j in ids]
        assert [f["status"] for f in finals] == ["complete"] * 8, finals
        assert all(upstream.calls[f"r{i}"] == 1 for i in range(8)), dict(upstream.calls)

        service.unlink()
        time.sleep(2.0)
        assert all("echo2" not in s for s in routes())
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            r = c.post("/services/echo2/generate", json={"content": "x", "flavor": "up"})
        assert r.status_code == 404, r.text
    finally:
        service.unlink(missing_ok=True)
        peers.stop(gw.proc)
