"""The gateway's memory allocator: jemalloc where it is installed, so RSS comes back after a burst.

CPython's own small-object allocator (pymalloc) takes memory in 1 MiB arenas and gives an
arena back only when every object in it is gone. A burst of 1,000 concurrent streams fills
about 30 new arenas; the few objects that outlive the burst (a metric's last value, a counter,
a timer) sit scattered over them and keep all of them, so the process stays at its peak
(measured: 97 MB before, 135 MB after, with 0.9 MB of live Python objects more). With
``PYTHONMALLOC=malloc`` and jemalloc preloaded, freed memory goes back to the system within a
second (``background_thread`` purging) at no measured CPU cost per request; glibc's malloc
also gives it back, but costs about 30% more CPU per request. ``docs/server.md`` has the
numbers and the command that gives them.

The allocator is chosen when the process starts, so ``multillm serve`` re-executes itself
(the same PID: ``execve``) with ``LD_PRELOAD`` and ``PYTHONMALLOC`` set, after the config is
checked and before anything is bound. ``server.allocator`` (or ``--allocator``, or
``MULTILLM_ALLOCATOR`` without a config file): ``auto`` (jemalloc where found, else pymalloc),
``jemalloc`` (refused at start where it is not installed), ``pymalloc`` (never re-executes).
An app run by another ASGI server (``create_app``) gets the same by setting those two
variables itself.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from langchain_multillm.server.config import ConfigError

Allocator = Literal["auto", "jemalloc", "pymalloc"]

JEMALLOC_SONAME = "libjemalloc.so.2"
DEFAULT_MALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache:false"
"""Give freed pages back within about a second, from jemalloc's own thread, also while the
process is idle (without ``background_thread`` purging waits for the next allocations); no
thread cache: after a burst of 1,000 streams RSS came back to +7.5 to +9.3% without it, +9.9
to +11.5% with it (a smaller cache did not help: +11%)."""

EXEC_MARK = "MULTILLM_ALLOCATOR_EXEC"
"""Set in the re-executed process: it never re-executes again."""

_LIB_DIRS = ("/usr/lib64", "/usr/lib", "/usr/local/lib", "/lib64", "/lib")


def find_jemalloc() -> str | None:
    """The path of ``libjemalloc.so.2`` (Debian's ``libjemalloc2``), or None."""
    multiarch = sysconfig.get_config_var("MULTIARCH")
    dirs: list[str] = []
    for d in (sysconfig.get_config_var("LIBDIR"), *_LIB_DIRS):
        if d:
            dirs += [f"{d}/{multiarch}", d] if multiarch else [d]
    for d in dirs:
        path = Path(d) / JEMALLOC_SONAME
        if path.is_file():
            return str(path)
    return None


def preloaded(env: Mapping[str, str]) -> bool:
    """Whether ``env`` already runs Python's objects on jemalloc."""
    return "jemalloc" in env.get("LD_PRELOAD", "") and env.get("PYTHONMALLOC") == "malloc"


def exec_env(
    choice: Allocator, env: Mapping[str, str], jemalloc: str | None
) -> dict[str, str] | None:
    """The environment to re-execute with, or None where the process should run as it is.

    Raises :class:`ConfigError` (``server.allocator``) for ``jemalloc`` when ``jemalloc`` (the
    found library) is None."""
    if choice == "pymalloc" or preloaded(env) or env.get(EXEC_MARK):
        return None
    if jemalloc is None:
        if choice == "jemalloc":
            raise ConfigError(
                "server.allocator",
                f"jemalloc: {JEMALLOC_SONAME} is not installed (Debian/Ubuntu: apt install "
                "libjemalloc2); use auto or pymalloc",
            )
        return None
    out = dict(env)
    out["LD_PRELOAD"] = ":".join(p for p in (jemalloc, env.get("LD_PRELOAD", "")) if p)
    out["PYTHONMALLOC"] = "malloc"
    out.setdefault("MALLOC_CONF", DEFAULT_MALLOC_CONF)
    out[EXEC_MARK] = "1"
    return out


def reexec(env: Mapping[str, str], argv: Sequence[str] | None = None) -> None:
    """Replace this process (same PID) with ``python -m langchain_multillm.cli ARGV`` in
    ``env``; ``argv`` defaults to this process's arguments. Does not return."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "langchain_multillm.cli", *args], dict(env))


def in_use() -> str:
    """What this process allocates Python objects with: ``jemalloc``, ``malloc`` (the C
    library's) or ``pymalloc``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    if os.environ.get("PYTHONMALLOC", "").startswith("malloc"):
        return "jemalloc" if "libjemalloc" in maps else "malloc"
    return "pymalloc"
