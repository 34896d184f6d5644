"""Named services in the replaced gateway's shapes: service files, prompt templates, hot reload.

``services: {dir: services/, prompts: prompts/}`` in the gateway config points to a folder of
service files (:mod:`.files`) and one of templates; :class:`ServiceRegistry` keeps them loaded
in each process, reloading what changes; :mod:`.kinds` runs ``chat``, ``rag`` and ``summary``
jobs; :mod:`.routes` serves them over HTTP and WebSocket. See ``docs/services.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from langchain_multillm.server.services.files import (
    FlavorSpec,
    ServiceFileError,
    ServiceSpec,
    Template,
    parse_service_file,
    parse_template,
)
from langchain_multillm.server.services.registry import (
    LoadedService,
    ServiceRegistry,
    UnknownServiceError,
)

if TYPE_CHECKING:
    from langchain_multillm.server.config import ServeConfig

__all__ = [
    "FlavorSpec",
    "LoadedService",
    "ServiceFileError",
    "ServiceRegistry",
    "ServiceSpec",
    "Template",
    "UnknownServiceError",
    "parse_service_file",
    "parse_template",
    "registry_from_config",
]


def registry_from_config(config: ServeConfig, base_dir: Path | None = None) -> ServiceRegistry:
    """The registry of ``config.services`` (folders relative to ``base_dir``, else as they are:
    ``load_config`` makes them absolute from the file's folder). No ``services:``: an empty
    registry (every route unknown)."""
    settings = config.services
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if settings is None:
        return ServiceRegistry(base / "services", base / "prompts", reload_s=1.0)
    return ServiceRegistry(base / settings.dir, base / settings.prompts, reload_s=settings.reload_s)
