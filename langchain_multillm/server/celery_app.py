"""Jobs on a real broker: Celery with Redis as broker and result store (``jobs:`` configured).

The gateway submits with :class:`CeleryJobQueue` (the ``JobQueue`` protocol of
:mod:`langchain_multillm.server.jobs`); ``multillm worker --config FILE`` runs
:func:`run_worker`, a Celery worker whose processes build the runtime with ``load_runtime`` and
run each job with ``run_job``.

What lives in Redis (keys under ``<queue>:``, the ``jobs.queue`` setting):

- ``job:<id>``: the job's status object (JSON), written ``queued`` at submit, before the task is
  sent (a queued job is never unknown), then ``started`` / ``processing`` by the worker and the
  final one; a final status is never replaced (a late progress report after a cancel). Pending
  statuses expire after ``result_ttl_s`` plus the attempts' visibility timeouts, final ones after
  ``result_ttl_s``. Each write is published on ``job:<id>:events`` (what ``watch`` listens to).
- ``idem:<sha256>``: an idempotency key's job id (``SET NX``, expiring with the results).
- ``job:<id>:cancel``: the cancellation flag, checked between batches and every 0.25 s during a
  call; ``cancel`` also revokes the task, so a worker that has not started it drops it.
- ``job:<id>:claim`` / ``job:<id>:attempts``: the worker running the job (a lease renewed while
  it runs) and how many times it was started. A message delivered twice (the broker redelivers
  after the visibility timeout) finds a final status (nothing to do) or a live claim (retried
  when the claim ends), so a job runs once; a worker lost ``max_attempts`` times is an error.
- ``sem:<model>``: a semaphore per model of the gateway config: ``max_concurrency`` calls in
  flight across every worker process and host, each slot a lease renewed while its call runs
  (the slots of a dead worker free after ``lease_s``).

Celery settings for long LLM work: late acks and requeue of a lost worker's job
(``task_acks_late``, ``task_reject_on_worker_lost``), one job per process and none prefetched
(``worker_prefetch_multiplier=1``, ``worker_disable_prefetch``), a time limit per job (its
flavor's budget where the service gives one, capped by ``time_limit_s``: at most 90% of the
broker's ``visibility_timeout``, so a running job is never handed to a second worker), results
that expire (``result_expires``). A worker killed outright (SIGKILL, a lost host) leaves its job
unacknowledged in Redis; another worker takes it once the visibility timeout has passed, at its
next sweep (every ``restore_interval_s``). A worker stopped normally (SIGTERM) finishes its jobs
first; a cold shutdown puts them back in the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_multillm.errors import BackendUnavailableError
from langchain_multillm.server.jobs import (
    JobCancelled,
    JobRequest,
    Runtime,
    cancelled_status,
    failed,
    is_final,
    load_runtime,
    queued,
    run_job,
)

try:
    import redis
    import redis.asyncio as aredis
    from celery import Celery, Task
    from celery.exceptions import TimeLimitExceeded
    from kombu.exceptions import OperationalError as KombuOperationalError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "jobs on a broker need the [jobs] extra: pip install 'langchain-multillm[jobs]'"
    ) from exc

if TYPE_CHECKING:
    from langchain_multillm.server.config import JobsSettings, ServeConfig

__all__ = [
    "TASK_NAME",
    "CeleryJobQueue",
    "RedisSemaphore",
    "WorkerRuntime",
    "celery_settings",
    "make_celery",
    "run_worker",
]

log = logging.getLogger("langchain_multillm.server.celery_app")

TASK_NAME = "multillm.run_job"
CLAIM_LOST = "the job's worker was lost"

# ------------------------------------------------------------------ Redis scripts

# KEYS: status, events channel. ARGV: status JSON, ttl ms, must_exist (0/1).
# Stored and published as {"v": version, "s": status}, the version counting the writes (a
# watcher drops what it has seen). A final status (complete, error) is never replaced; with
# must_exist a missing (expired) status is not created again.
_SET_STATUS = """
local cur = redis.call('GET', KEYS[1])
local v = 1
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' then
    local s = old['s']
    if type(s) == 'table' and (s['status'] == 'complete' or s['status'] == 'error') then
      return 0
    end
    v = (tonumber(old['v']) or 0) + 1
  end
elseif ARGV[3] == '1' then
  return 0
end
local env = '{"v":' .. v .. ',"s":' .. ARGV[1] .. '}'
redis.call('SET', KEYS[1], env, 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[2], env)
return 1
"""

# KEYS: claim. ARGV: holder, lease ms. Renews the lease if the holder still has it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: claim. ARGV: holder. Deletes the claim if the holder still has it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: semaphore (a sorted set: holder -> lease end, ms of the server's clock).
# ARGV: holder, limit, lease ms. 1 if the holder has a slot (taken or renewed), else 0.
_SEM_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * lease)
  return 1
end
return 0
"""

# KEYS: semaphore. ARGV: holder, lease ms. Renews a slot still held (1), else 0.
_SEM_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
  return 1
end
return 0
"""


class Keys:
    """The Redis keys of one queue."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def status(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def claim(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:claim"

    def attempts(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:attempts"

    def idempotency(self, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.prefix}:idem:{digest}"

    def semaphore(self, model: str) -> str:
        return f"{self.prefix}:sem:{model}"


def unpack(raw: bytes | str | None) -> tuple[int, dict[str, Any] | None]:
    """A stored or published ``{"v", "s"}`` envelope: the version and the status."""
    if raw is None:
        return 0, None
    env = json.loads(raw)
    return int(env["v"]), dict(env["s"])


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def pending_ttl_s(settings: JobsSettings) -> float:
    """How long a pending (not final) status lives: the results' expiry plus every attempt's
    visibility timeout (a job cannot stay pending longer unless its queue is backlogged)."""
    return settings.result_ttl_s + settings.visibility_timeout_s * (settings.max_attempts + 1)


class JobStore:
    """Statuses, flags and claims of jobs in Redis (one async client, one event loop)."""

    def __init__(self, client: aredis.Redis, settings: JobsSettings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.queue)
        self._set_status = client.register_script(_SET_STATUS)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's status; None if unknown or expired."""
        return (await self.versioned(job_id))[1]

    async def versioned(self, job_id: str) -> tuple[int, dict[str, Any] | None]:
        """The status and its version (0 and None if unknown)."""
        return unpack(await self.client.get(self.keys.status(job_id)))

    async def put(self, job_id: str, status: dict[str, Any], *, must_exist: bool = True) -> bool:
        """Write ``status`` (never over a final one); whether it was written."""
        ttl = self.settings.result_ttl_s if is_final(status) else pending_ttl_s(self.settings)
        args: list[str | int] = [json.dumps(status), _ms(ttl), "1" if must_exist else "0"]
        keys = [self.keys.status(job_id), self.keys.events(job_id)]
        return bool(await self._set_status(keys=keys, args=args))

    async def cancel_asked(self, job_id: str) -> bool:
        return bool(await self.client.exists(self.keys.cancel(job_id)))

    async def claim(self, job_id: str, holder: str) -> bool:
        lease = _ms(self.settings.claim_lease_s)
        return bool(await self.client.set(self.keys.claim(job_id), holder, nx=True, px=lease))

    async def claim_left_s(self, job_id: str) -> float:
        ms = await self.client.pttl(self.keys.claim(job_id))
        return max(0.0, ms / 1000)

    async def renew(self, job_id: str, holder: str) -> bool:
        args: list[str | int] = [holder, _ms(self.settings.claim_lease_s)]
        return bool(await self._renew(keys=[self.keys.claim(job_id)], args=args))

    async def release(self, job_id: str, holder: str) -> None:
        await self._release(keys=[self.keys.claim(job_id)], args=[holder])

    async def attempt(self, job_id: str) -> int:
        key = self.keys.attempts(job_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, _ms(pending_ttl_s(self.settings)))
            n, _ = await pipe.execute()
        return int(n)


# ------------------------------------------------------------------ the semaphore


class RedisSemaphore:
    """``limit`` holders at once across processes and hosts: a sorted set of leases in Redis.

    ``async with sem:`` waits for a slot (polling, with jitter), holds it while a task renews
    the lease every third of ``lease_s``, and frees it on exit; a holder that dies without
    freeing its slot loses it when the lease ends.
    """

    POLL_S = (0.005, 0.1)

    def __init__(self, client: aredis.Redis, key: str, limit: int, lease_s: float) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.client = client
        self.key = key
        self.limit = limit
        self.lease_s = lease_s
        self._acquire = client.register_script(_SEM_ACQUIRE)
        self._renew = client.register_script(_SEM_RENEW)

    async def acquire(self) -> str:
        """Wait for a slot; the holder id to pass to :meth:`release`."""
        holder = _holder()
        delay = self.POLL_S[0]
        args: list[str | int] = [holder, self.limit, _ms(self.lease_s)]
        while not await self._acquire(keys=[self.key], args=args):
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.POLL_S[1])
        return holder

    async def renew(self, holder: str) -> bool:
        return bool(await self._renew(keys=[self.key], args=[holder, _ms(self.lease_s)]))

    async def release(self, holder: str) -> None:
        await self.client.zrem(self.key, holder)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        holder = await self.acquire()
        renewer = asyncio.create_task(self._keep(holder))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(BaseException):
                await renewer
            await asyncio.shield(self.release(holder))

    async def _keep(self, holder: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if not await self.renew(holder):
                log.warning(
                    "a slot of %s expired while its call ran (lease %ss)", self.key, self.lease_s
                )


class WorkerRuntime(Runtime):
    """A worker process's runtime: a call slot of a model of the gateway config is a slot of
    its Redis semaphore (``max_concurrency`` across every worker)."""

    semaphores: dict[str, RedisSemaphore]

    @classmethod
    def wrap(cls, base: Runtime, store: JobStore) -> WorkerRuntime:
        out = cls(base.config, base.services, models=base.models)
        out.semaphores = {
            m.name: RedisSemaphore(
                store.client,
                store.keys.semaphore(m.name),
                m.max_concurrency,
                store.settings.claim_lease_s,
            )
            for m in base.config.models
        }
        return out

    @contextlib.asynccontextmanager
    async def slot(self, name: str) -> AsyncIterator[None]:
        sem = self.semaphores.get(name)
        if sem is None:
            yield
            return
        async with sem.hold():
            yield


# ------------------------------------------------------------------ the Celery app


def _jobs(config: ServeConfig) -> JobsSettings:
    if config.jobs is None:
        raise ValueError("the config has no jobs: section (jobs: {broker: redis://...})")
    return config.jobs


CALL_OVERHEAD_S = 30.0


def job_budget_s(service: Any, job: JobRequest, min_tokens_per_s: float) -> float:
    """Seconds a job of ``service`` may take by its flavor's budgets: each call 30 s plus
    ``maxGenerationLength`` tokens at ``min_tokens_per_s``; a ``summary`` makes a call per
    ``createNewTurnAfter`` bytes of its text (a token is at least a byte) and, with
    ``reduceSummary``, as many again to reduce; ``chat`` and ``rag`` make one."""
    spec = getattr(service, "spec", None)
    flavor = next((f for f in getattr(spec, "flavor", ()) if f.name == job.flavor), None)
    if spec is None or flavor is None:
        return math.inf
    per_call = CALL_OVERHEAD_S + flavor.maxGenerationLength / min_tokens_per_s
    calls = 1
    if spec.type == "summary":
        calls = max(1, math.ceil(len(job.content.encode()) / flavor.createNewTurnAfter))
        if flavor.reduceSummary:
            calls *= 2
    return calls * per_call


def hard_limit_s(settings: JobsSettings, limit_s: float) -> float:
    """Celery's hard time limit for a job allowed ``limit_s``: 5% of the visibility timeout
    more (at most 30 s), always below the visibility timeout."""
    grace = min(0.05 * settings.visibility_timeout_s, 30.0)
    return min(limit_s + grace, 0.95 * settings.visibility_timeout_s)


def celery_settings(settings: JobsSettings) -> dict[str, Any]:
    """Celery's configuration for long LLM jobs on Redis."""
    url = settings.broker.get_secret_value()
    limit = settings.job_time_limit_s
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.restore_interval_s,
            "unacked_restore_throttle": 1,  # every sweep scans (kombu's default: 1 in 10)
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_soft_time_limit": None,
        "task_time_limit": hard_limit_s(settings, limit),
        "result_expires": settings.result_ttl_s,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_send_sent_event": False,
        "worker_send_task_events": False,
    }


class JobTask(Task):
    """The job task; a hard time limit (the child was killed) still leaves a final status."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if not isinstance(exc, TimeLimitExceeded):
            return
        worker = _STATE
        if worker is None:
            return
        with contextlib.suppress(Exception):
            worker.put_sync(task_id, failed(f"the job ran past its hard time limit ({exc})"))


def make_celery(config: ServeConfig) -> Celery:
    """The Celery app of a config with ``jobs:`` (the gateway sends, workers run)."""
    settings = _jobs(config)
    app = Celery("multillm", set_as_current=False)
    app.conf.update(celery_settings(settings))
    app.task(name=TASK_NAME, bind=True, base=JobTask, max_retries=None)(_run_task)
    return app


def _run_task(
    task: Task, job_id: str, job: dict[str, Any], limit_s: float | None = None
) -> dict[str, Any] | None:
    """The Celery task: run job ``job_id`` in this worker process."""
    if _STATE is None:
        raise RuntimeError("the job task runs in `multillm worker` processes only")
    return _STATE.run(task, job_id, job, limit_s)


class _Retry(Exception):
    def __init__(self, countdown: float) -> None:
        super().__init__(countdown)
        self.countdown = countdown


class WorkerState:
    """One worker process's event loop, Redis clients and runtime (built on first job)."""

    def __init__(self, config_path: str | os.PathLike[str], config: ServeConfig) -> None:
        self.config_path = Path(config_path)
        self.config = config
        self.settings = _jobs(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: JobStore | None = None
        self._runtime: WorkerRuntime | None = None
        self._sync: redis.Redis | None = None
        self._sync_pid = 0
        self._pid = 0

    def _fresh(self) -> None:
        if self._pid != os.getpid():  # a forked child starts its own loop and clients
            self._pid = os.getpid()
            self._loop = asyncio.new_event_loop()
            self._store = None
            self._runtime = None

    def put_sync(self, job_id: str, status: dict[str, Any]) -> None:
        """Write a status from outside a job's loop (the hard time limit's handler, in the
        worker's main process)."""
        if self._sync is None or self._sync_pid != os.getpid():
            self._sync = redis.Redis.from_url(self.settings.broker.get_secret_value())
            self._sync_pid = os.getpid()
        keys = Keys(self.settings.queue)
        ttl = self.settings.result_ttl_s if is_final(status) else pending_ttl_s(self.settings)
        self._sync.eval(
            _SET_STATUS, 2, keys.status(job_id), keys.events(job_id),
            json.dumps(status), _ms(ttl), "1",
        )  # fmt: skip

    def run(
        self, task: Task, job_id: str, data: dict[str, Any], limit_s: float | None
    ) -> dict[str, Any] | None:
        self._fresh()
        assert self._loop is not None
        limit = min(limit_s or self.settings.job_time_limit_s, self.settings.job_time_limit_s)
        deadline = time.monotonic() + limit  # the setup counts too: Celery's clock runs
        try:
            final = self._loop.run_until_complete(self._run(job_id, data, deadline, limit))
            # Celery's own result: the outcome only (the status with the answer is in Redis).
            return None if final is None else {"status": final.get("status")}
        except _Retry as again:
            raise task.retry(countdown=again.countdown, max_retries=None) from None

    async def _setup(self) -> tuple[JobStore, WorkerRuntime]:
        if self._store is None:
            client = aredis.Redis.from_url(self.settings.broker.get_secret_value())
            self._store = JobStore(client, self.settings)
        if self._runtime is None:
            started = time.monotonic()
            base = await asyncio.to_thread(load_runtime, self.config_path)
            self._runtime = WorkerRuntime.wrap(base, self._store)
            log.info("runtime loaded in %.2fs (pid %s)", time.monotonic() - started, os.getpid())
        return self._store, self._runtime

    async def _run(
        self, job_id: str, data: dict[str, Any], deadline: float, limit: float
    ) -> dict[str, Any] | None:
        store, runtime = await self._setup()
        current = await store.get(job_id)
        if current is None:
            log.warning("job %s: no status in Redis (expired?); not run", job_id)
            return None
        if is_final(current):
            return current  # delivered again after it ended: nothing to do
        if await store.cancel_asked(job_id):
            await store.put(job_id, cancelled_status())
            return cancelled_status()
        holder = _holder()
        if not await store.claim(job_id, holder):
            # Another worker runs it (this is a second delivery): try again when its claim ends.
            raise _Retry(await store.claim_left_s(job_id) + 0.5)
        try:
            attempt = await store.attempt(job_id)
            if attempt > self.settings.max_attempts:
                final = failed(
                    f"{CLAIM_LOST} {attempt - 1} times (jobs.max_attempts="
                    f"{self.settings.max_attempts}); not started again"
                )
            else:
                final = await self._attempt(store, runtime, job_id, data, holder, deadline, limit)
            await store.put(job_id, final)
            return await store.get(job_id) or final
        finally:
            with contextlib.suppress(Exception):
                await store.release(job_id, holder)

    async def _attempt(
        self,
        store: JobStore,
        runtime: WorkerRuntime,
        job_id: str,
        data: dict[str, Any],
        holder: str,
        deadline: float,
        limit: float,
    ) -> dict[str, Any]:
        job = JobRequest.model_validate(data)

        async def report(status: dict[str, Any]) -> None:
            await store.put(job_id, status)

        async def cancelled() -> bool:
            return await store.cancel_asked(job_id)

        keeper = asyncio.create_task(self._keep_claim(store, job_id, holder))
        try:
            left = max(0.0, deadline - time.monotonic())
            return await asyncio.wait_for(run_job(runtime, job, report, cancelled), left)
        except JobCancelled:
            return cancelled_status()
        except TimeoutError:
            return failed(f"the job took longer than its time limit ({limit:g} s)")
        except Exception as exc:  # run_job returns failures; this is a bug, still final
            log.exception("job %s crashed", job_id)
            return failed(self.config.redact(f"{type(exc).__name__}: {exc}"))
        finally:
            keeper.cancel()
            with contextlib.suppress(BaseException):
                await keeper

    async def _keep_claim(self, store: JobStore, job_id: str, holder: str) -> None:
        while True:
            await asyncio.sleep(self.settings.claim_lease_s / 3)
            if not await store.renew(job_id, holder):
                log.warning("job %s: its claim expired while it ran", job_id)


_STATE: WorkerState | None = None


def preload(config: ServeConfig) -> None:
    """Import, in the worker's main process, what its pool processes will need (the config's
    backends, the services, the chains), so each forked process starts its first job at once
    rather than spending its time limit on imports. Nothing is built or connected here."""
    import importlib

    from langchain_multillm.loader import COMPLETION_PROVIDERS, PROVIDERS

    names = {
        "langchain_multillm.server.app",
        "langchain_multillm.server.services",
        "langchain_multillm.chains.summarize",
        "langchain_multillm.chains",
    }
    for m in config.models:
        table = PROVIDERS if m.kind == "chat" else COMPLETION_PROVIDERS
        entry = table.get(m.model.partition(":")[0])
        if entry is not None:
            names.add(entry[0])
    for name in sorted(names):
        try:
            importlib.import_module(name)
        except ImportError as exc:  # the job that needs it reports it
            log.warning("preloading %s failed: %s", name, exc)


def run_worker(
    config_path: str | os.PathLike[str],
    *,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    config: ServeConfig | None = None,
) -> None:
    """Run a Celery worker for the config's ``jobs:`` (blocks until the worker stops)."""
    global _STATE
    from langchain_multillm.server.config import load_config

    config = config or load_config(config_path)
    settings = _jobs(config)
    _STATE = WorkerState(config_path, config)
    preload(config)
    app = make_celery(config)
    n = concurrency or settings.concurrency
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--queues={settings.queue}",
        f"--concurrency={n}",
        f"--hostname=multillm-{os.getpid()}@%h",
        "--pool=prefork",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    app.worker_main(argv)


# ------------------------------------------------------------------ the gateway's queue


class CeleryJobQueue:
    """The gateway's job queue with ``jobs:`` configured: statuses in Redis, jobs sent to Celery.

    ``runtime`` is the gateway's (``check_job`` before submit uses it; the jobs run in the
    workers' own runtimes).
    """

    WATCH_POLL_S = 5.0

    def __init__(self, config: ServeConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.settings = _jobs(config)
        self.keys = Keys(self.settings.queue)
        self.app = make_celery(config)
        self._store: JobStore | None = None

    @property
    def store(self) -> JobStore:
        if self._store is None:
            client = aredis.Redis.from_url(self.settings.broker.get_secret_value())
            self._store = JobStore(client, self.settings)
        return self._store

    def time_limit_s(self, job: JobRequest) -> float:
        """The job's time limit, from its flavor's budgets (:func:`job_budget_s`), capped by
        ``jobs.time_limit_s``."""
        cap = self.settings.job_time_limit_s
        try:
            service = self.runtime.services.get(job.route)
        except Exception:  # checked before submit; the cap always holds
            return cap
        return min(cap, job_budget_s(service, job, self.settings.min_tokens_per_s))

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        """Redis or the broker unreachable: :class:`BackendUnavailableError` (a 503)."""
        try:
            yield
        except (redis.RedisError, OSError, KombuOperationalError) as exc:
            raise BackendUnavailableError(
                self.config.redact(
                    f"the job store (jobs.broker) is unreachable: {type(exc).__name__}: {exc}"
                ),
                retry_after=1,
            ) from None

    async def submit(self, job: JobRequest, *, idempotency_key: str | None = None) -> str:
        with self._reachable():
            return await self._submit(job, idempotency_key)

    async def _submit(self, job: JobRequest, idempotency_key: str | None) -> str:
        store = self.store
        job_id = str(uuid.uuid4())
        key = None
        if idempotency_key is not None:
            key = self.keys.idempotency(idempotency_key)
            ttl = _ms(pending_ttl_s(self.settings))
            if not await store.client.set(key, job_id, nx=True, px=ttl):
                raw = await store.client.get(key)
                existing = raw.decode() if isinstance(raw, bytes) else raw
                if existing is not None and await store.get(existing) is not None:
                    return str(existing)
                await store.client.set(key, job_id, px=ttl)  # its job expired: a new one
        await store.put(job_id, queued(), must_exist=False)
        limit = self.time_limit_s(job)
        try:
            await asyncio.to_thread(self._send, job_id, job, limit)
        except Exception as exc:
            with contextlib.suppress(Exception):  # not queued: no job, no key
                await store.client.delete(store.keys.status(job_id), *([key] if key else []))
            raise exc from None
        return job_id

    def _send(self, job_id: str, job: JobRequest, limit_s: float) -> None:
        self.app.send_task(
            TASK_NAME,
            args=[job_id, job.model_dump(mode="json"), limit_s],
            task_id=job_id,
            queue=self.settings.queue,
            time_limit=hard_limit_s(self.settings, limit_s),
        )

    async def status(self, job_id: str) -> dict[str, Any] | None:
        with self._reachable():
            return await self.store.get(job_id)

    async def cancel(self, job_id: str) -> bool:
        with self._reachable():
            return await self._cancel(job_id)

    async def _cancel(self, job_id: str) -> bool:
        store = self.store
        current = await store.get(job_id)
        if current is None:
            return False
        if is_final(current):
            return True
        await store.client.set(self.keys.cancel(job_id), "1", px=_ms(pending_ttl_s(self.settings)))
        await store.put(job_id, cancelled_status())
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.app.control.revoke, job_id)
        return True

    async def watch(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        store = self.store
        pubsub = store.client.pubsub()
        try:
            with self._reachable():
                await pubsub.subscribe(self.keys.events(job_id))
                seen, last = await store.versioned(job_id)
            if last is None:
                return
            yield last
            while not is_final(last):
                with self._reachable():
                    msg = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.WATCH_POLL_S
                    )
                    # No message for a while: read the status (a message may have been missed).
                    v, status = unpack(msg["data"]) if msg else await store.versioned(job_id)
                if status is None:
                    return  # expired
                if v > seen:
                    seen, last = v, status
                    yield status
        finally:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe()
                await pubsub.aclose()

    async def aclose(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.client.aclose()
            self._store = None
        with contextlib.suppress(Exception):
            self.app.close()
        await self.runtime.aclose()
