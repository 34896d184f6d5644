"""The serving front: an OpenAI-compatible gateway over any model of this package.

``multillm serve [--config FILE]`` runs it; :func:`create_app` gives the ASGI app for other ASGI
servers and for tests. Needs the ``[server]`` extra. See ``docs/server.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_multillm.server.app import create_app, run
    from langchain_multillm.server.config import (
        ConfigError,
        ServeConfig,
        config_from_env,
        load_config,
    )

__all__ = ["ConfigError", "ServeConfig", "config_from_env", "create_app", "load_config", "run"]

_LAZY = {
    "create_app": "langchain_multillm.server.app",
    "run": "langchain_multillm.server.app",
    "ConfigError": "langchain_multillm.server.config",
    "ServeConfig": "langchain_multillm.server.config",
    "config_from_env": "langchain_multillm.server.config",
    "load_config": "langchain_multillm.server.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_multillm.server' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
