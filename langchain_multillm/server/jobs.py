"""Jobs of the named services: the request, the status objects, the runner, the inline queue.

Contract (what a queue implementation, e.g. ``CeleryJobQueue``, must keep)
--------------------------------------------------------------------------

- :class:`JobRequest` is everything a job needs, JSON-serialisable (``job.model_dump(mode="json")``
  and ``JobRequest.model_validate(data)`` round-trip): the service ``route``, the ``flavor``
  name, the ``content`` text, ``params`` (``temperature``, ``top_p``), ``documents`` (a ``rag``
  service's sources), ``created`` (epoch seconds).
- Status objects are plain dicts, exactly the replaced gateway's (LinTO llm-gateway) shapes,
  built by :func:`queued`, :func:`started`, :func:`processing`, :func:`complete`,
  :func:`failed` and :func:`cancelled_status`; :func:`is_final` tells the last one of a job;
  :func:`http_status` the HTTP status ``GET /results/{id}`` answers it with (202 while pending,
  200 complete, 500 error, 410 cancelled).
- :class:`JobQueue` is the protocol the routes use:

  * ``await submit(job, idempotency_key=None) -> job_id``: the status reads ``queued`` at once
    (never "unknown" while waiting for a worker); the same key (within the result expiry)
    returns the first job's id and submits nothing.
  * ``await status(job_id) -> dict | None``: None for an unknown (or expired) id.
  * ``await cancel(job_id) -> bool``: False for an unknown id; else the job ends as
    :func:`cancelled_status` (a final state; a job already final stays as it is and True is
    returned). A running job stops between batches and its call in flight is abandoned.
  * ``watch(job_id) -> AsyncIterator[dict]``: the current status first, then each change, and
    the iteration ends after a final one (an unknown id yields nothing).
  * ``await aclose()``: stops what the queue runs and frees its connections.

- :func:`run_job` runs one job with a :class:`Runtime` (the gateway config's models and the
  services registry; :func:`load_runtime` builds one in a worker process). It calls
  ``report(status)`` (sync or async) with ``started`` and then ``processing`` after each batch,
  checks ``cancelled()`` (sync or async) between batches and every 0.25 s during a model call,
  and returns the final status: :func:`complete`, or :func:`failed` for a job that failed (it
  does not raise for those). When ``cancelled()`` becomes true it raises :class:`JobCancelled`
  (the queue records :func:`cancelled_status`). Bad input found at run time (the service or
  flavor gone since submission) is a :func:`failed` status too.
- Before submitting, the routes call :func:`check_job` (cheap: the service and flavor exist,
  the template and one turn fit the window); a job that cannot fit at all is refused then,
  with :class:`~langchain_multillm.errors.InvalidInputError` naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from langchain_multillm.errors import InvalidInputError, MultiLLMError

if TYPE_CHECKING:
    from langchain_multillm.server.config import ServeConfig
    from langchain_multillm.server.limits import ModelLimiter

__all__ = [
    "InlineJobQueue",
    "JobCancelled",
    "JobContext",
    "JobQueue",
    "JobRequest",
    "Runtime",
    "Service",
    "ServiceSource",
    "cancelled_status",
    "check_job",
    "complete",
    "failed",
    "http_status",
    "is_final",
    "load_runtime",
    "processing",
    "queued",
    "run_job",
    "started",
]

log = logging.getLogger("langchain_multillm.server.jobs")

T = TypeVar("T")

# ------------------------------------------------------------------ the request


class JobRequest(BaseModel):
    """One job: what ``POST /services/{route}/generate`` received (JSON-serialisable)."""

    model_config = ConfigDict(extra="forbid")

    route: str
    """The service's route (``summarize/en``)."""

    flavor: str
    """The flavor's name within the service."""

    content: str
    """The text (a transcript, the user's message, a ``rag`` service's question)."""

    params: dict[str, float] = Field(default_factory=dict)
    """Sampling settings of the request over the flavor's: ``temperature``, ``top_p``."""

    documents: list[dict[str, Any]] | None = None
    """A ``rag`` service's sources: ``{"page_content": ..., "metadata": {...}}`` each."""

    created: float = Field(default_factory=time.time)
    """When it was submitted (epoch seconds)."""


# ------------------------------------------------------------------ the status objects

FINAL = frozenset({"complete", "error"})


def queued() -> dict[str, Any]:
    """Waiting for a runner."""
    return {"status": "queued", "message": "Task is in queue"}


def started() -> dict[str, Any]:
    """A runner took it."""
    return {"status": "started", "message": "Task started"}


def processing(done: int, total: int) -> dict[str, Any]:
    """``done`` of ``total`` batches (or turns) summarized; ``progress`` is the percentage as a
    string, as the replaced gateway sent it."""
    total = max(total, 1)
    pct = round(100 * min(done, total) / total)
    return {
        "status": "processing",
        "message": "Task is in progress",
        "progress": str(pct),
        "completed_turns": done,
        "total_turns": total,
    }


def complete(text: str, **extra: Any) -> dict[str, Any]:
    """Done: ``summarization`` is the answer (``extra``: e.g. a rag service's ``sources``)."""
    return {"status": "complete", "message": "success", "summarization": text.strip(), **extra}


def failed(details: str) -> dict[str, Any]:
    """Failed, ``details`` saying why (secrets redacted by the caller)."""
    return {"status": "error", "message": "Task failed", "details": details}


def cancelled_status() -> dict[str, Any]:
    """Cancelled by ``DELETE /results/{id}`` (an ``error`` for the replaced gateway's clients)."""
    return {
        "status": "error",
        "message": "Task cancelled",
        "details": "cancelled by DELETE /results/{id}",
        "cancelled": True,
    }


def is_final(status: Mapping[str, Any]) -> bool:
    """Whether ``status`` is the last one of its job (complete or error)."""
    return status.get("status") in FINAL


def http_status(status: Mapping[str, Any]) -> int:
    """The HTTP status ``GET /results/{id}`` answers ``status`` with (the replaced gateway's:
    202 pending, 200 complete, 500 failed; 410 for a cancelled job)."""
    if status.get("status") == "complete":
        return 200
    if status.get("status") == "error":
        return 410 if status.get("cancelled") else 500
    return 202


# ------------------------------------------------------------------ the runtime


class JobCancelled(Exception):
    """The job was cancelled; raised by :class:`JobContext` between batches or during a call."""


Report = Callable[[dict[str, Any]], Awaitable[None] | None]
Cancelled = Callable[[], Awaitable[bool] | bool]


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class JobContext:
    """What a service sees of its job's runner: progress, cancellation, guarded calls."""

    POLL_S = 0.25

    def __init__(self, job: JobRequest, report: Report, cancelled: Cancelled) -> None:
        self.job = job
        self._report = report
        self._cancelled = cancelled

    async def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled."""
        if await _maybe(self._cancelled()):
            raise JobCancelled(self.job.route)

    async def progress(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` batches, then check cancellation."""
        await _maybe(self._report(processing(done, total)))
        await self.check()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` (a model call), abandoning it as soon as the job is cancelled."""
        await self.check()
        task = asyncio.ensure_future(coro)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.POLL_S)
                if done:
                    return task.result()
                if await _maybe(self._cancelled()):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                    raise JobCancelled(self.job.route)
        finally:
            if not task.done():
                task.cancel()


@runtime_checkable
class Service(Protocol):
    """A named service (see ``langchain_multillm.server.services``)."""

    route: str

    async def check(self, runtime: Runtime, job: JobRequest) -> None:
        """Refuse (``InvalidInputError`` naming the field) a job that cannot run at all."""
        ...

    async def run(self, runtime: Runtime, job: JobRequest, ctx: JobContext) -> dict[str, Any]:
        """Run the job; the :func:`complete` status."""
        ...


class ServiceSource(Protocol):
    """The services registry: the current version of each service (hot reloaded)."""

    def get(self, route: str) -> Service:
        """The service at ``route``; ``InvalidInputError`` (field ``route``) if none."""
        ...


@dataclass
class Runtime:
    """What jobs run with: the gateway config, its models (built once), the services."""

    config: ServeConfig
    services: ServiceSource
    models: dict[str, Any] = field(default_factory=dict)
    """Chat models of the config by name (the gateway's own, where it runs jobs inline)."""

    limiters: dict[str, ModelLimiter] = field(default_factory=dict)
    """The gateway's per-model limiters (a job's calls take the same slots as the routes')."""

    _specs: dict[str, Any] = field(default_factory=dict)

    def model(self, name: str, *, field_name: str = "modelName") -> Any:
        """The chat model a flavor names: a model of the gateway config, else a
        ``load_chat_model`` spec (built once per process)."""
        if name in self.models:
            return self.models[name]
        for i, entry in enumerate(self.config.models):
            if entry.name == name:
                from langchain_multillm.server.app import build_model

                self.models[name] = build_model(i, entry, self.config)
                return self.models[name]
        if name in self._specs:
            return self._specs[name]
        provider, sep, _ = name.partition(":")
        from langchain_multillm.loader import PROVIDERS, load_chat_model

        if not sep or provider not in PROVIDERS:
            known = ", ".join(m.name for m in self.config.models)
            raise InvalidInputError(
                field_name,
                f"{name!r} is neither a model of the gateway config ({known}) nor a "
                "load_chat_model spec 'provider:model' "
                f"(providers: {', '.join(sorted(PROVIDERS))})",
            )
        self._specs[name] = load_chat_model(name)
        return self._specs[name]

    @contextlib.asynccontextmanager
    async def slot(self, name: str) -> AsyncIterator[None]:
        """A call slot of model ``name`` (its limiter where the gateway has one)."""
        limiter = self.limiters.get(name)
        if limiter is None:
            yield
            return
        started_at = await limiter.acquire()
        try:
            yield
        finally:
            limiter.release(started_at)

    async def aclose(self) -> None:
        """Close the models this runtime built from specs (the config's are the owner's)."""
        for model in self._specs.values():
            close = getattr(model, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


def _registry(config: ServeConfig, base_dir: Path) -> ServiceSource:
    from langchain_multillm.server.services import registry_from_config

    return registry_from_config(config, base_dir)


def load_runtime(config: ServeConfig | str | os.PathLike[str]) -> Runtime:
    """The runtime a worker process runs jobs with: a config file's path (services' folders
    relative to it), or a loaded :class:`ServeConfig` (folders relative to the working
    directory unless it was loaded from a file). Models are built on first use."""
    from langchain_multillm.server.config import ServeConfig, load_config

    if isinstance(config, ServeConfig):
        base = Path(getattr(config, "_base_dir", None) or Path.cwd())
        return Runtime(config, _registry(config, base))
    path = Path(config)
    loaded = load_config(path)
    return Runtime(loaded, _registry(loaded, path.resolve().parent))


async def check_job(runtime: Runtime, job: JobRequest) -> None:
    """Refuse a job that cannot run at all (before it is queued): unknown service (field
    ``route``) or flavor (``flavor``), or a window that cannot hold the template and one turn."""
    service = runtime.services.get(job.route)
    await service.check(runtime, job)


async def run_job(
    runtime: Runtime, job: JobRequest, report: Report, cancelled: Cancelled
) -> dict[str, Any]:
    """Run one job; the final status (:func:`complete` or :func:`failed`).

    ``report(status)`` gets ``started`` then ``processing`` after each batch; ``cancelled()`` is
    checked between batches and during calls (:class:`JobCancelled` is raised then).
    """
    ctx = JobContext(job, report, cancelled)
    await ctx.check()
    await _maybe(report(started()))
    try:
        service = runtime.services.get(job.route)
        return await service.run(runtime, job, ctx)
    except JobCancelled:
        raise
    except InvalidInputError as exc:
        return failed(runtime.config.redact(f"{exc.field}: {exc.problem}"))
    except Exception as exc:
        log.warning(
            "job on %s failed: %s",
            job.route,
            runtime.config.redact(f"{type(exc).__name__}: {exc}"),
            exc_info=not isinstance(exc, (ValueError, MultiLLMError)),
        )
        return failed(runtime.config.redact(f"{type(exc).__name__}: {exc}"))


# ------------------------------------------------------------------ the queues


class JobQueue(Protocol):
    """Where the routes send jobs (see the module's contract)."""

    async def submit(self, job: JobRequest, *, idempotency_key: str | None = None) -> str: ...

    async def status(self, job_id: str) -> dict[str, Any] | None: ...

    async def cancel(self, job_id: str) -> bool: ...

    def watch(self, job_id: str) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


@dataclass
class _Entry:
    job: JobRequest
    status: dict[str, Any]
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    cancel_asked: bool = False
    final_at: float | None = None
    key: str | None = None


class InlineJobQueue:
    """Jobs as asyncio tasks in the gateway process (the default: no ``jobs:`` key, no Redis).

    At most ``concurrency`` jobs run at once (more wait as ``queued``; each model's own
    ``max_concurrency`` holds for their calls too); final results are kept ``result_ttl_s``
    seconds, then forgotten (their id is unknown again). Cancelling a running job cancels its
    task: the call in flight is abandoned.
    """

    def __init__(
        self, runtime: Runtime, *, concurrency: int = 4, result_ttl_s: float = 3600.0
    ) -> None:
        if concurrency < 1:
            raise InvalidInputError("concurrency", f"must be at least 1; got {concurrency!r}")
        self.runtime = runtime
        self.result_ttl_s = result_ttl_s
        self._sem = asyncio.Semaphore(concurrency)
        self._jobs: dict[str, _Entry] = {}
        self._keys: dict[str, str] = {}
        self._closed = False

    # ---- bookkeeping ----
    def _purge(self) -> None:
        now = time.monotonic()
        for job_id in [
            j for j, e in self._jobs.items() if e.final_at and now - e.final_at > self.result_ttl_s
        ]:
            entry = self._jobs.pop(job_id)
            if entry.key is not None:
                self._keys.pop(entry.key, None)

    def _set(self, entry: _Entry, status: dict[str, Any]) -> None:
        if is_final(entry.status):
            return  # a final status is never replaced (a late report after a cancel)
        entry.status = status
        if is_final(status):
            entry.final_at = time.monotonic()
        old, entry.changed = entry.changed, asyncio.Event()
        old.set()

    # ---- the protocol ----
    async def submit(self, job: JobRequest, *, idempotency_key: str | None = None) -> str:
        if self._closed:
            raise RuntimeError("the job queue is closed")
        self._purge()
        if idempotency_key is not None and idempotency_key in self._keys:
            return self._keys[idempotency_key]
        job_id = str(uuid.uuid4())
        entry = _Entry(job, queued(), key=idempotency_key)
        self._jobs[job_id] = entry
        if idempotency_key is not None:
            self._keys[idempotency_key] = job_id
        entry.task = asyncio.create_task(self._run(job_id, entry), name=f"job-{job_id}")
        return job_id

    async def _run(self, job_id: str, entry: _Entry) -> None:
        async def report(status: dict[str, Any]) -> None:
            self._set(entry, status)

        def cancelled() -> bool:
            return entry.cancel_asked

        try:
            async with self._sem:
                result = await run_job(self.runtime, entry.job, report, cancelled)
            self._set(entry, result)
        except (JobCancelled, asyncio.CancelledError):
            self._set(entry, cancelled_status())
        except Exception as exc:  # run_job returns failures; this is a bug, still final
            log.exception("job %s crashed", job_id)
            self._set(entry, failed(self.runtime.config.redact(f"{type(exc).__name__}: {exc}")))

    async def status(self, job_id: str) -> dict[str, Any] | None:
        self._purge()
        entry = self._jobs.get(job_id)
        return dict(entry.status) if entry is not None else None

    async def cancel(self, job_id: str) -> bool:
        entry = self._jobs.get(job_id)
        if entry is None:
            return False
        if is_final(entry.status):
            return True
        entry.cancel_asked = True
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        self._set(entry, cancelled_status())
        return True

    async def watch(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        entry = self._jobs.get(job_id)
        if entry is None:
            return
        while True:
            status, changed = dict(entry.status), entry.changed
            yield status
            if is_final(status):
                return
            await changed.wait()

    async def aclose(self) -> None:
        self._closed = True
        tasks = [e.task for e in self._jobs.values() if e.task is not None and not e.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.runtime.aclose()
