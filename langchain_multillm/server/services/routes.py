"""The named services' routes, in the replaced gateway's shapes (so its clients keep working).

``GET /services``, ``POST /services/{route}/generate``, ``GET /results/{id}``,
``DELETE /results/{id}``, ``WS /ws/results/{id}``, ``WS /ws/results``, ``GET /healthcheck``.
:class:`ServicesFront` holds the registry, the runtime and the job queue of one gateway process;
``create_app`` adds its routes when the config has ``services:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from langchain_multillm.errors import InvalidInputError
from langchain_multillm.server.config import ConfigError
from langchain_multillm.server.http_errors import RequestTooLargeError, error_body
from langchain_multillm.server.jobs import (
    InlineJobQueue,
    JobQueue,
    JobRequest,
    Runtime,
    check_job,
    http_status,
    is_final,
)
from langchain_multillm.server.services import registry_from_config
from langchain_multillm.server.services.registry import UnknownServiceError

if TYPE_CHECKING:
    from langchain_multillm.server.app import Gateway

__all__ = ["GenerateRequest", "ServicesFront"]

log = logging.getLogger("langchain_multillm.server.services")

QUEUED = "Request successfully queued"


class GenerateRequest(BaseModel):
    """The JSON body of ``POST /services/{route}/generate``."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1)
    flavor: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    documents: list[dict[str, Any]] | None = None


class JobNotFoundError(InvalidInputError):
    """No job of that id (404)."""


def _number(raw: Any, name: str, low: float, high: float, *, open_low: bool = False) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidInputError(name, f"must be a number; got {str(raw)[:40]!r}") from None
    if not math.isfinite(value) or value > high or value < low or (open_low and value == low):
        lo = "(" if open_low else "["
        raise InvalidInputError(name, f"must be in {lo}{low:g}, {high:g}]; got {value:g}")
    return value


class ServicesFront:
    """The services of one gateway process: registry, runtime, queue, and their routes."""

    def __init__(self, gateway: Gateway) -> None:
        config = gateway.config
        if config.services is None:
            raise ConfigError("services", "is not configured")
        if config.server.workers > 1 and config.jobs is None:
            raise ConfigError(
                "services",
                f"with server.workers={config.server.workers} needs a jobs: section (a job runs "
                "in one process; without a broker the other workers could not see it)",
            )
        self.gateway = gateway
        self.config = config
        self.registry = registry_from_config(config)
        self.registry.auto_refresh = False  # the reload task checks the files, off the loop
        self.runtime = Runtime(
            config,
            self.registry,
            models={n: s.model for n, s in gateway.models.items() if s.kind == "chat"},
            limiters={n: s.limiter for n, s in gateway.models.items()},
        )
        self._queue: JobQueue | None = None
        self._reloader: asyncio.Task[None] | None = None

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            self._queue = self._make_queue()
        return self._queue

    def _make_queue(self) -> JobQueue:
        if self.config.jobs is not None:
            from langchain_multillm.server.celery_app import CeleryJobQueue

            queue: JobQueue = CeleryJobQueue(self.config, self.runtime)
            return queue
        settings = self.config.services
        assert settings is not None
        return InlineJobQueue(
            self.runtime, concurrency=settings.concurrency, result_ttl_s=settings.result_ttl_s
        )

    # ---- life ----
    async def startup(self) -> None:
        """Load the services now, and keep checking their files in the background."""
        await asyncio.to_thread(self.registry.refresh, force=True)
        _ = self.queue
        self._reloader = asyncio.create_task(self._reload_loop(), name="services-reload")

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.registry.reload_s)
            try:
                await asyncio.to_thread(self.registry.refresh)
            except Exception:  # never let the loop die: the next tick tries again
                log.exception("checking the service files failed")

    async def shutdown(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        if self._queue is not None:
            await self._queue.aclose()

    # ---- helpers ----
    def _error(self, exc: BaseException, param: str | None = None) -> Response:
        from langchain_multillm.server.app import json_response

        status, body, headers = error_body(exc, param=param, redact=self.config.redact)
        if isinstance(exc, (UnknownServiceError, JobNotFoundError)):
            status = 404
            body["error"]["code"] = "not_found"
        if status >= 500:
            log.error("services: %s", self.config.redact(f"{type(exc).__name__}: {exc}"))
        return json_response(body, status, headers)

    async def _job_from_form(self, request: Request, route: str) -> tuple[JobRequest, str]:
        limit = self.gateway.settings.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise RequestTooLargeError("body", f"{length} bytes is more than the {limit} taken")
        try:
            form = await request.form(max_files=1, max_fields=16, max_part_size=limit)
        except Exception as exc:  # a malformed multipart body
            raise InvalidInputError("body", f"is not a valid multipart form: {exc}") from None
        try:
            upload = form.get("file")
            if upload is None:
                text = form.get("content")
                if not isinstance(text, str):
                    raise InvalidInputError("file", "is required (the text to process)")
                content, field = text, "content"
            elif isinstance(upload, str):
                content, field = upload, "file"
            else:
                raw = await upload.read()
                if len(raw) > limit:
                    raise RequestTooLargeError("file", f"more than the {limit} bytes taken")
                try:
                    content = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInputError("file", "must be UTF-8 text") from None
                field = "file"
            if not content.strip():
                raise InvalidInputError(field, "is empty")
            flavor = form.get("flavor")
            if not isinstance(flavor, str) or not flavor.strip():
                raise InvalidInputError("flavor", "is required (a flavor name of the service)")
            params: dict[str, float] = {}
            for name, low, high, open_low in (("temperature", 0, 2, False), ("top_p", 0, 1, True)):
                raw_value = form.get(name)
                if raw_value is not None and not (isinstance(raw_value, str) and not raw_value):
                    params[name] = _number(raw_value, name, low, high, open_low=open_low)
        finally:
            await form.close()
        job = JobRequest(route=route, flavor=flavor.strip(), content=content, params=params)
        return job, field

    async def _job_from_json(self, request: Request, route: str) -> tuple[JobRequest, str]:
        from langchain_multillm.server.app import parse

        req = parse(GenerateRequest, await self.gateway.body(request))
        if not req.content.strip():
            raise InvalidInputError("content", "is empty")
        params = {
            k: v
            for k, v in (("temperature", req.temperature), ("top_p", req.top_p))
            if v is not None
        }
        job = JobRequest(
            route=route,
            flavor=req.flavor,
            content=req.content,
            params=params,
            documents=req.documents,
        )
        return job, "content"

    # ---- routes ----
    async def list_services(self, request: Request) -> Response:
        from langchain_multillm.server.app import json_response

        try:
            self.gateway.authorize(request)
            described = self.registry.describe()
        except Exception as exc:
            return self._error(exc)
        return json_response(described)

    async def generate(self, request: Request) -> Response:
        from langchain_multillm.server.app import json_response

        route = request.path_params["route"]
        field = "content"
        try:
            self.gateway.authorize(request)
            service = self.registry.get(route)
            ctype = request.headers.get("content-type", "")
            if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                job, field = await self._job_from_form(request, service.route)
            else:
                job, field = await self._job_from_json(request, service.route)
            if job.documents is not None and service.spec.type != "rag":
                raise InvalidInputError("documents", "only a rag service takes documents")
            await check_job(self.runtime, job)
            key = request.headers.get("idempotency-key")
            if key is not None and not (0 < len(key) <= 255):
                raise InvalidInputError("Idempotency-Key", "must be 1 to 255 characters")
            key = f"{service.route}\x00{key}" if key else None
            job_id = await self.queue.submit(job, idempotency_key=key)
        except InvalidInputError as exc:
            if exc.field == "content" and field != "content":  # the text came as a file
                exc = InvalidInputError(field, exc.problem)
            return self._error(exc)
        except Exception as exc:
            return self._error(exc)
        return json_response({"message": QUEUED, "jobId": job_id})

    async def result(self, request: Request) -> Response:
        from langchain_multillm.server.app import json_response

        job_id = request.path_params["job_id"]
        try:
            self.gateway.authorize(request)
            status = await self.queue.status(job_id)
            if status is None:
                raise JobNotFoundError("job_id", f"no job {job_id!r} (unknown, or expired)")
        except Exception as exc:
            return self._error(exc)
        return json_response(status, http_status(status))

    async def cancel(self, request: Request) -> Response:
        from langchain_multillm.server.app import json_response

        job_id = request.path_params["job_id"]
        try:
            self.gateway.authorize(request)
            if not await self.queue.cancel(job_id):
                raise JobNotFoundError("job_id", f"no job {job_id!r} (unknown, or expired)")
            status = await self.queue.status(job_id)
        except Exception as exc:
            return self._error(exc)
        return json_response(status or {"status": "error", "message": "Task cancelled"})

    async def healthcheck(self, request: Request) -> Response:
        from langchain_multillm.server.app import json_response

        return json_response("1")

    # ---- WebSockets ----
    async def _ws_authorized(self, ws: WebSocket) -> bool:
        try:
            self.gateway.authorize(ws)  # type: ignore[arg-type]  # headers are all it reads
        except Exception:
            await ws.close(code=1008, reason="no API key, or a wrong one")
            return False
        return True

    async def ws_result(self, ws: WebSocket) -> None:
        if not await self._ws_authorized(ws):
            return
        await ws.accept()
        job_id = ws.path_params["job_id"]
        try:
            sent = False
            async for status in self.queue.watch(job_id):
                await ws.send_json(status)
                sent = True
            if not sent:
                await ws.send_json({"status": "unknown", "message": "Task does not exist"})
            await ws.close(code=1000)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return

    async def ws_results(self, ws: WebSocket) -> None:
        if not await self._ws_authorized(ws):
            return
        await ws.accept()
        try:
            ids = await ws.receive_json()
        except (WebSocketDisconnect, RuntimeError):
            return
        except ValueError:
            ids = None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not ids:
            with contextlib.suppress(Exception):
                await ws.send_json(
                    {"status": "error", "message": "send a JSON list of job ids (strings)"}
                )
                await ws.close(code=1003)
            return
        ids = list(dict.fromkeys(ids))[:1000]
        watches = {i: self.queue.watch(i) for i in ids}
        first: list[dict[str, Any]] = []
        live: list[str] = []
        for i, gen in watches.items():
            status = await _first(gen)
            if status is None:
                first.append({"task_id": i, "status": "unknown", "message": "Task does not exist"})
            else:
                first.append({"task_id": i, **status})
                if not is_final(status):
                    live.append(i)
        out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump(job_id: str, gen: AsyncIterator[dict[str, Any]]) -> None:
            async for status in gen:
                await out.put({"task_id": job_id, **status})

        tasks = [asyncio.create_task(pump(i, watches[i])) for i in live]
        try:
            await ws.send_json(first)
            pending = len(tasks)
            while pending:
                item = await out.get()
                await ws.send_json(item)
                if is_final(item):
                    pending -= 1
            await ws.close(code=1000)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            for gen in watches.values():
                with contextlib.suppress(Exception):
                    await gen.aclose()  # type: ignore[attr-defined]

    def routes(self) -> list[BaseRoute]:
        """The routes to add to the app."""
        return [
            Route("/services", self.list_services, methods=["GET"]),
            Route("/services/{route:path}/generate", self.generate, methods=["POST"]),
            Route("/results/{job_id}", self.result, methods=["GET"]),
            Route("/results/{job_id}", self.cancel, methods=["DELETE"]),
            Route("/healthcheck", self.healthcheck, methods=["GET"]),
            WebSocketRoute("/ws/results/{job_id}", self.ws_result),
            WebSocketRoute("/ws/results", self.ws_results),
        ]


async def _first(gen: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return None
