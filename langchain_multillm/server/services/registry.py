"""The services registry: the service files of a folder, reloaded when they change.

Every process (gateway workers, job workers) keeps its own registry and checks the files'
modification times every ``reload_s`` seconds: a gateway process from a background task (a
request never waits for a scan), a job worker when a service is asked for and the last check is
older than that. A file added, changed or removed takes effect within that time everywhere,
with no restart and no shared state. A template is read again when its
file changes. A file that cannot be loaded keeps the last good version of its services; the
reason is logged once per change and shown by ``GET /services``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_multillm.server.services.files import (
    ServiceFileError,
    ServiceSpec,
    Template,
    parse_service_file,
    parse_template,
)

if TYPE_CHECKING:
    from langchain_multillm.server.jobs import JobContext, JobRequest, Runtime

__all__ = ["LoadedService", "ServiceRegistry", "UnknownServiceError"]

log = logging.getLogger("langchain_multillm.server.services")

SUFFIXES = (".yaml", ".yml")
TEMPLATE_SUFFIX = ".txt"


_FILLS = {1: "the turns", 2: "the summary so far, then the new turns"}


class UnknownServiceError(ServiceFileError):
    """No service at that route (404 over HTTP)."""


@dataclass
class LoadedService:
    """A service as loaded: its spec, its templates, the file it came from."""

    route: str
    spec: ServiceSpec
    file: str
    template: Template | None
    reduce_templates: dict[str, Template]
    error: str | None = None
    """Why the file's current version is not loaded (this is its last good version)."""

    async def check(self, runtime: Runtime, job: JobRequest) -> None:
        """Refuse a job that cannot run at all (unknown flavor, cannot fit the window)."""
        from langchain_multillm.server.services import kinds

        await kinds.check(runtime, self, job)

    async def run(self, runtime: Runtime, job: JobRequest, ctx: JobContext) -> dict[str, Any]:
        """Run a job of this service (see :mod:`langchain_multillm.server.services.kinds`)."""
        from langchain_multillm.server.services import kinds

        return await kinds.run(runtime, self, job, ctx)


Signature = tuple[int, int]  # (mtime_ns, size)


@dataclass
class _FileState:
    signature: Signature
    templates: dict[str, Signature | None]  # the template files it read, as they were
    services: dict[str, LoadedService] = field(default_factory=dict)
    error: str | None = None
    prompts: Any = None  # for a file that failed: the prompts folder as it was then


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class ServiceRegistry:
    """The services of ``services_dir`` with templates from ``prompts_dir``."""

    def __init__(
        self,
        services_dir: Path,
        prompts_dir: Path,
        *,
        reload_s: float = 1.0,
        auto_refresh: bool = True,
    ) -> None:
        self.services_dir = Path(services_dir)
        self.prompts_dir = Path(prompts_dir)
        self.reload_s = reload_s
        self.auto_refresh = auto_refresh
        """Whether reading checks the files when due (off where a background task calls
        :meth:`refresh`, so a request never waits for a scan)."""
        self._files: dict[str, _FileState] = {}
        self._routes: dict[str, LoadedService] = {}
        self._conflicts: dict[str, str] = {}
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._dir_warned = False
        self.generation = 0
        """Counts the changes taken (a test or a log can tell a reload happened)."""

    # ---- loading ----
    def _template(self, name: str, where: str) -> tuple[Template, Signature | None]:
        path = self.prompts_dir / f"{name}{TEMPLATE_SUFFIX}"
        sig = _signature(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            raise ServiceFileError(
                where, f"its template {path.name} is not in {self.prompts_dir}"
            ) from None
        return parse_template(text, f"{path.name}"), sig

    def _load(self, path: Path) -> tuple[dict[str, LoadedService], dict[str, Signature | None]]:
        specs = parse_service_file(path)
        used: dict[str, Signature | None] = {}
        out: dict[str, LoadedService] = {}
        for route, spec in specs.items():
            where = f"{path.name}: {route}"
            template: Template | None = None
            own = self.prompts_dir / f"{spec.name}{TEMPLATE_SUFFIX}"
            used[spec.name] = _signature(own)
            if spec.type == "summary" or used[spec.name] is not None:
                template, used[spec.name] = self._template(spec.name, f"{where}.name")
                self._check_template(template, spec, f"{own.name}")
            reduce: dict[str, Template] = {}
            for i, flavor in enumerate(spec.flavor):
                name = flavor.reduce_prompt
                if name is None or name in reduce:
                    continue
                reduce[name], used[name] = self._template(
                    name, f"{where}.flavor[{i}].reduce_prompt"
                )
                t = reduce[name]
                if not (
                    (t.positional == 1 and not t.named)
                    or (not t.positional and t.named == {"text"})
                ):
                    raise ServiceFileError(
                        f"{name}{TEMPLATE_SUFFIX}",
                        "a reduce template takes the text to reduce: one '{}' or '{text}'",
                    )
            out[route] = LoadedService(route, spec, path.name, template, reduce)
        return out, used

    @staticmethod
    def _check_template(template: Template, spec: ServiceSpec, where: str) -> None:
        if spec.type == "summary":  # the summarizer's rules (chains/summarize.py)
            names = {"summary", "text"} if spec.fields == 2 else {"text"}
            if template.positional and template.named:
                raise ServiceFileError(where, "mixes {} and named placeholders; use one kind")
            if template.positional and template.positional != spec.fields:
                raise ServiceFileError(
                    where,
                    f"has {template.positional} '{{}}' placeholders; a summary service with "
                    f"fields: {spec.fields} takes {spec.fields} ({_FILLS[spec.fields]})",
                )
            if not template.positional and template.named != names:
                raise ServiceFileError(
                    where,
                    f"must take {' and '.join('{' + n + '}' for n in sorted(names))} for fields: "
                    f"{spec.fields} (or {spec.fields} '{{}}'); takes {sorted(template.named)}",
                )
            return
        allowed = {"chat": {"text"}, "rag": {"context", "question"}}[spec.type]
        unknown = template.named - allowed
        if unknown:
            raise ServiceFileError(
                where,
                f"unknown placeholder {{{sorted(unknown)[0]}}} for a {spec.type} service; "
                f"allowed: {', '.join('{' + a + '}' for a in sorted(allowed))} or {{}}",
            )
        most = {"chat": 1, "rag": 2}[spec.type]
        if template.positional > most:
            raise ServiceFileError(
                where,
                f"{template.positional} '{{}}' placeholders; a {spec.type} service fills at "
                f"most {most}",
            )

    def _prompts_signature(self) -> Any:
        try:
            return sorted((p.name, _signature(p)) for p in self.prompts_dir.iterdir())
        except OSError:
            return None

    def _changed(self, state: _FileState | None, sig: Signature) -> bool:
        if state is None or state.signature != sig:
            return True
        if state.error is not None:  # it failed: any template added or changed may fix it
            return bool(state.prompts != self._prompts_signature())
        return any(
            _signature(self.prompts_dir / f"{n}{TEMPLATE_SUFFIX}") != s
            for n, s in state.templates.items()
        )

    def refresh(self, *, force: bool = False) -> bool:
        """Check the files (at most every ``reload_s`` unless ``force``); whether anything
        changed."""
        now = time.monotonic()
        if not force and now - self._checked < self.reload_s:
            return False
        with self._lock:
            if not force and time.monotonic() - self._checked < self.reload_s:
                return False
            changed = self._scan()
            self._checked = time.monotonic()
            return changed

    def _scan(self) -> bool:
        try:
            paths = sorted(
                p for p in self.services_dir.iterdir() if p.suffix in SUFFIXES and p.is_file()
            )
        except OSError as exc:
            paths = []
            if not self._dir_warned:
                log.warning("services folder %s: %s", self.services_dir, exc.strerror or exc)
                self._dir_warned = True
        changed = False
        seen = set()
        for path in paths:
            seen.add(path.name)
            sig = _signature(path)
            if sig is None:
                continue
            state = self._files.get(path.name)
            if not self._changed(state, sig):
                continue
            changed = True
            try:
                services, used = self._load(path)
            except ServiceFileError as exc:
                reason = f"{exc.field}: {exc.problem}"
                if state is None:
                    state = _FileState(sig, {})
                    self._files[path.name] = state
                state.signature = sig
                state.error = reason
                state.prompts = self._prompts_signature()
                for s in state.services.values():
                    s.error = reason
                kept = f"; keeping its last good version ({len(state.services)} services)"
                log.warning(
                    "service file %s not loaded: %s%s",
                    path.name,
                    reason,
                    kept if state.services else "",
                )
                continue
            self._files[path.name] = _FileState(sig, used, services)
            log.info("service file %s loaded: %s", path.name, ", ".join(sorted(services)))
        for name in [n for n in self._files if n not in seen]:
            del self._files[name]
            changed = True
            log.info("service file %s removed", name)
        if changed:
            self._rebuild()
            self.generation += 1
        return changed

    def _rebuild(self) -> None:
        routes: dict[str, LoadedService] = {}
        conflicts: dict[str, str] = {}
        for name in sorted(self._files):
            for route, service in self._files[name].services.items():
                if route in routes:
                    conflicts[name] = (
                        f"{name}: {route}: route already served by {routes[route].file}"
                    )
                    log.warning("service file %s: %s", name, conflicts[name])
                    continue
                routes[route] = service
        self._routes = routes
        self._conflicts = conflicts

    # ---- reading ----
    def get(self, route: str) -> LoadedService:
        """The service at ``route`` (the files checked first if due);
        :class:`UnknownServiceError` if none."""
        if self.auto_refresh:
            self.refresh()
        service = self._routes.get(route.strip("/"))
        if service is None:
            known = ", ".join(sorted(self._routes)) or "none"
            raise UnknownServiceError("route", f"no service at {route!r}; services: {known}")
        return service

    def routes(self) -> list[str]:
        """The routes served now."""
        if self.auto_refresh:
            self.refresh()
        return sorted(self._routes)

    def describe(self) -> list[dict[str, Any]]:
        """``GET /services``: each service as its file says it (with ``route``), its ``status``
        (``ok``, or ``error`` with the reason its file's new version is not loaded), and each
        file that never loaded as an entry with ``status: error``."""
        if self.auto_refresh:
            self.refresh()
        out: list[dict[str, Any]] = []
        for route in sorted(self._routes):
            s = self._routes[route]
            entry = s.spec.model_dump(mode="json", exclude_none=True)
            entry["route"] = route
            entry["file"] = s.file
            entry["status"] = "error" if s.error else "ok"
            if s.error:
                entry["error"] = f"{s.error} (serving its last good version)"
            out.append(entry)
        for name in sorted(self._files):
            state = self._files[name]
            if state.error and not state.services:
                out.append(
                    {
                        "name": Path(name).stem,
                        "file": name,
                        "flavor": [],
                        "status": "error",
                        "error": state.error,
                    }
                )
        for name, reason in sorted(self._conflicts.items()):
            out.append(
                {"name": Path(name).stem, "file": name, "flavor": [], "status": "error",
                 "error": reason}
            )  # fmt: skip
        return out
