"""``make bench-serve``: the gateway (``multillm serve``) against LiteLLM's proxy, one run.

Three ways to the same upstream, ``bench/fake_openai_server.py`` (own process, answers at once):
``direct`` (client -> upstream), ``gateway`` (client -> ``multillm serve``, one uvicorn worker,
a ``vllm-server:`` model whose ``base_url`` is the upstream -> upstream) and ``litellm``
(client -> LiteLLM's proxy, one worker -> upstream). Each is measured non-streamed and streamed,
with 1 and 32 concurrent clients, in interleaved order (one cell: direct, gateway, litellm, back
to back), so background load falls on all of them alike: requests/s, p50 and p99 latency (to the
last byte), the proxy's CPU time per request and its peak RSS (process tree) during the cell.
Every answer is checked (status 200, the upstream's exact content, a stream ends with
``[DONE]`` and carries no error event); a wrong answer counts as an error.

Then bursts of 1,000 concurrent streams through the one gateway worker (``--stream-rounds``, 3),
to a second upstream that spaces its events (``--stream-delay``) so the streams stay open
together: errors, the gateway's open file descriptors (``/proc/PID/fd``) and RSS before, at the
peak and after each burst (once the client has closed its connections and the gateway's idle
upstream connections expired). The first burst is judged against the RSS before it; the last
against the one before it, once the earlier bursts have set the allocator's high-water mark: it
shows whether RSS keeps growing (a leak) or stays.

The load client is aiohttp on uvloop in this process (it only waits on the others). Targets (the
issue's): gateway requests/s >= 10x LiteLLM's at 32 clients, gateway p50 - direct p50 < 2 ms for
one client (non-streamed), and the 1,000 streams with no error, fds back to where they were and
RSS within 10% after the first burst (and the last burst within 10% of the one before it, the
leak check). ``--strict`` exits 1 when one is missed.

LiteLLM runs from its own venv (``make bench-serve`` makes ``.build/bench-litellm``); it needs
``LITELLM_MASTER_KEY``: when unset, a throwaway key is made for its process (the output says so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from fake_openai_server import CONTENT, MODEL  # noqa: E402

UPSTREAM = HERE / "fake_openai_server.py"
MULTILLM = Path(sys.executable).parent / "multillm"
LITELLM = ROOT / ".build" / "bench-litellm" / "bin" / "litellm"
PROMPT = [{"role": "user", "content": "Say hello in one word."}]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

PROCS: list[subprocess.Popen[bytes]] = []


# ------------------------------------------------------------------ processes


AFTER_S = 10.0  # seconds after a burst at which RSS "after" is read


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    for name in ("VLLM_API_KEY", "VLLM_BASE_URL", "MULTILLM_SERVE_CONFIG"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process in its own session (so it and its children stop together), output to ``log``."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    PROCS.append(proc)
    return proc


def stop_all() -> None:
    for proc in reversed(PROCS):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in PROCS:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    PROCS.clear()


def start_upstream(tmp: Path, name: str, delay: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, str(UPSTREAM), "--port", str(port), "--stream-delay", str(delay)]
    return start(cmd, tmp / f"{name}.log", child_env()), port


async def wait_ready(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float, headers: dict[str, str]
) -> float:
    """Poll ``url`` until it answers 200; the seconds it took."""
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"{url}: the process exited ({proc.returncode}):\n{log_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with s.get(url, headers=headers, timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url}: not ready after {timeout:.0f} s:\n{log_tail(log)}")


def log_tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------ /proc


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return out


def rss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
    return total / 2**20


async def idle_collections(metrics_url: str) -> tuple[float, float] | None:
    """The gateway's idle collections so far and the seconds they took (``/metrics``)."""
    async with aiohttp.ClientSession() as s, s.get(metrics_url) as r:
        text = await r.text()
    found = dict(
        re.findall(r"^multillm_idle_collection(s_total|_seconds_total) (\S+)$", text, re.M)
    )
    if len(found) != 2:
        return None
    return float(found["s_total"]), float(found["_seconds_total"])


def allocator_of(pid: int) -> str:
    """What the process allocates Python objects with (``multillm serve --allocator``)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    if b"PYTHONMALLOC=malloc" not in environ:
        return "pymalloc"
    return "jemalloc" if "libjemalloc" in Path(f"/proc/{pid}/maps").read_text() else "malloc"


def cpu_s(pid: int) -> float:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ------------------------------------------------------------------ the load client


@dataclass
class Target:
    name: str
    url: str
    model: str
    headers: dict[str, str]
    pid: int | None  # the proxy's process (None: direct)


def body(target: Target, stream: bool) -> bytes:
    return json.dumps(
        {"model": target.model, "messages": PROMPT, "max_tokens": 32, "stream": stream}
    ).encode()


def check_json(raw: bytes) -> bool:
    try:
        return bool(json.loads(raw)["choices"][0]["message"]["content"] == CONTENT)
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def check_stream(raw: bytes) -> bool:
    """Every ``data:`` event parses, none is an error, the content is the upstream's, and the
    last event is ``[DONE]`` (a gateway's ``json:`` trailer line after it is allowed)."""
    text = ""
    done = False
    for event in raw.split(b"\n\n"):
        event = event.strip()
        if not event.startswith(b"data:"):
            continue
        if done:
            return False  # an event after [DONE]
        data = event[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            return False
        if "error" in obj:
            return False
        for choice in obj.get("choices") or ():
            text += (choice.get("delta") or {}).get("content") or ""
    return done and text == CONTENT


async def one(session: aiohttp.ClientSession, target: Target, payload: bytes, stream: bool) -> bool:
    try:
        async with session.post(target.url, data=payload, headers=target.headers) as r:
            raw = await r.read()
            if r.status != 200:
                return False
            return check_stream(raw) if stream else check_json(raw)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return False


@dataclass
class Cell:
    target: str
    stream: bool
    clients: int
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms: float | None = None  # the proxy's CPU time per request
    rss_mb: float | None = None  # the proxy's peak RSS
    n: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def sample_peak(fn: Callable[[], float], every: float, out: list[float]) -> None:
    while True:
        with contextlib.suppress(Exception):
            out.append(fn())
        await asyncio.sleep(every)


async def run_cell(
    target: Target, stream: bool, clients: int, duration: float, warmup: float
) -> Cell:
    """``clients`` callers, each sending the next request when the last is answered: a warm-up,
    then ``duration`` seconds counted (requests that end in the window)."""
    cell = Cell(target.name, stream, clients)
    payload = body(target, stream)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    phase = {"measure": False, "stop": False}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def caller() -> None:
            while not phase["stop"]:
                t0 = time.perf_counter()
                ok = await one(session, target, payload, stream)
                t1 = time.perf_counter()
                if phase["measure"] and not phase["stop"]:
                    cell.latencies.append(t1 - t0)
                    cell.n += 1
                    cell.errors += not ok

        tasks = [asyncio.ensure_future(caller()) for _ in range(clients)]
        await asyncio.sleep(warmup)
        rss: list[float] = []
        pid = target.pid
        sampler = (
            asyncio.ensure_future(sample_peak(lambda: rss_mb(pid), 0.25, rss)) if pid else None
        )
        cpu0 = cpu_s(target.pid) if target.pid else 0.0
        t0 = time.perf_counter()
        phase["measure"] = True
        await asyncio.sleep(duration)
        phase["stop"] = True
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_s(target.pid) if target.pid else 0.0
        if sampler is not None:
            sampler.cancel()
        await asyncio.gather(*tasks)
    cell.rps = cell.n / elapsed
    cell.p50_ms = pct(cell.latencies, 0.50) * 1e3
    cell.p99_ms = pct(cell.latencies, 0.99) * 1e3
    if target.pid:
        cell.cpu_ms = (cpu1 - cpu0) / max(cell.n, 1) * 1e3
        cell.rss_mb = max(rss) if rss else rss_mb(target.pid)
    return cell


# ------------------------------------------------------------------ 1,000 streams


@dataclass
class StreamsResult:
    n: int
    errors: int
    seconds: float
    upstream_open_max: int
    fds_before: int
    fds_peak: int
    fds_after: int
    fds_settle_s: float
    rss_before: float
    rss_peak: float
    rss_after: float


async def many_streams(
    target: Target, upstream: str, n: int, settle_timeout: float
) -> StreamsResult:
    """``n`` streams opened at once through the gateway; its fds and RSS before, at the peak and
    after (fds polled until back at the count before, up to ``settle_timeout`` s: the gateway's
    idle keep-alive connections to the upstream expire after the session's 4 s keep-alive)."""
    pid = target.pid
    assert pid is not None
    async with aiohttp.ClientSession() as s, s.get(f"{upstream}/_stats/reset") as r:
        await r.read()
    await asyncio.sleep(1.0)
    fds_before, rss_before = fds(pid), rss_mb(pid)
    fd_samples: list[float] = []
    rss_samples: list[float] = []
    samplers = [
        asyncio.ensure_future(sample_peak(lambda: float(fds(pid)), 0.1, fd_samples)),
        asyncio.ensure_future(sample_peak(lambda: rss_mb(pid), 0.1, rss_samples)),
    ]
    payload = body(target, True)
    t0 = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=300)
    ) as session:
        oks = await asyncio.gather(*(one(session, target, payload, True) for _ in range(n)))
    seconds = time.perf_counter() - t0
    for task in samplers:
        task.cancel()
    async with aiohttp.ClientSession() as s, s.get(f"{upstream}/_stats") as r:
        stats = json.loads(await r.read())
    t1 = time.perf_counter()
    while fds(pid) > fds_before and time.perf_counter() - t1 < settle_timeout:
        await asyncio.sleep(0.25)
    settle = time.perf_counter() - t1
    # RSS "after": 10 s after the burst at the earliest (the gateway's idle collection runs
    # 5 s after its last request, the allocator purges within a second after that)
    await asyncio.sleep(max(1.0, AFTER_S - (time.perf_counter() - t1)))
    return StreamsResult(
        n=n,
        errors=sum(not ok for ok in oks),
        seconds=seconds,
        upstream_open_max=int(stats.get("open_streams_max", 0)),
        fds_before=fds_before,
        fds_peak=int(max(fd_samples, default=fds_before)),
        fds_after=fds(pid),
        fds_settle_s=settle,
        rss_before=rss_before,
        rss_peak=max(rss_samples, default=rss_before),
        rss_after=rss_mb(pid),
    )


# ------------------------------------------------------------------ setting up


def gateway_config(tmp: Path, port: int, fast: int, slow: int, streams: int) -> Path:
    path = tmp / "serve.yaml"
    limits = f"max_concurrency: {max(2048, streams * 2)}\n    max_queue: {max(4096, streams * 4)}"
    path.write_text(
        f"""server:
  host: 127.0.0.1
  port: {port}
  workers: 1
models:
  - name: bench
    model: "vllm-server:{MODEL}"
    params: {{base_url: "http://127.0.0.1:{fast}/v1"}}
    {limits}
  - name: bench-slow
    model: "vllm-server:{MODEL}"
    params: {{base_url: "http://127.0.0.1:{slow}/v1"}}
    {limits}
"""
    )
    return path


def litellm_config(tmp: Path, fast: int) -> Path:
    path = tmp / "litellm.yaml"
    path.write_text(
        f"""model_list:
  - model_name: bench
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{fast}/v1
      api_key: unused
"""
    )
    return path


def litellm_version(binary: Path) -> str:
    py = binary.parent / "python"
    try:
        out = subprocess.run(
            [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def gateway_version() -> str:
    import importlib.metadata as m

    out = []
    for name in ("uvicorn", "starlette", "aiohttp", "uvloop", "httptools"):
        with contextlib.suppress(m.PackageNotFoundError):
            out.append(f"{name} {m.version(name)}")
    return ", ".join(out)


# ------------------------------------------------------------------ report


def fmt(x: float | None, nd: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def table(cells: list[Cell]) -> str:
    rows = [
        "| to the upstream | answer | clients | requests/s | p50 ms | p99 ms "
        "| proxy CPU ms/request | proxy RSS MB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        rows.append(
            f"| {c.target} | {'stream' if c.stream else 'JSON'} | {c.clients} | {fmt(c.rps, 0)} "
            f"| {fmt(c.p50_ms, 2)} | {fmt(c.p99_ms, 2)} | {fmt(c.cpu_ms, 2)} "
            f"| {fmt(c.rss_mb, 0)} | {c.errors}/{c.n} |"
        )
    return "\n".join(rows)


def find(cells: list[Cell], target: str, stream: bool, clients: int) -> Cell | None:
    for c in cells:
        if (c.target, c.stream, c.clients) == (target, stream, clients):
            return c
    return None


# ------------------------------------------------------------------ main


async def main(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    started = datetime.datetime.now(datetime.UTC)
    notes: list[str] = []
    fast_proc, fast = start_upstream(tmp, "upstream", 0.0)
    slow_proc, slow = start_upstream(tmp, "upstream-slow", args.stream_delay)
    await wait_ready(f"http://127.0.0.1:{fast}/health", fast_proc, tmp / "upstream.log", 30, {})
    await wait_ready(
        f"http://127.0.0.1:{slow}/health", slow_proc, tmp / "upstream-slow.log", 30, {}
    )
    gw_port = free_port()
    config = gateway_config(tmp, gw_port, fast, slow, args.streams)
    gw = start(
        [str(MULTILLM), "serve", "--config", str(config), "--allocator", args.allocator],
        tmp / "gateway.log",
        child_env(),
    )
    gw_ready = await wait_ready(
        f"http://127.0.0.1:{gw_port}/ready", gw, tmp / "gateway.log", 120, {}
    )
    gw_allocator = allocator_of(gw.pid)
    targets = [
        Target("direct", f"http://127.0.0.1:{fast}/v1/chat/completions", MODEL, {}, None),
        Target("gateway", f"http://127.0.0.1:{gw_port}/v1/chat/completions", "bench", {}, gw.pid),
    ]
    lite_version = ""
    if not args.skip_litellm:
        binary = Path(args.litellm)
        if not binary.exists():
            raise SystemExit(
                f"{binary}: not found (make bench-serve installs it; or --skip-litellm)"
            )
        key = os.environ.get("LITELLM_MASTER_KEY")
        if not key:
            key = "sk-bench-" + secrets.token_hex(12)
            notes.append(
                "LITELLM_MASTER_KEY was not set: a throwaway key was made for this run's "
                "LiteLLM proxy process only."
            )
        lite_port = free_port()
        env = child_env(
            LITELLM_MASTER_KEY=key,
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # no download of the price list at start
            LITELLM_LOG="ERROR",
        )
        lite = start(
            [
                str(binary),
                "--config",
                str(litellm_config(tmp, fast)),
                "--host",
                "127.0.0.1",
                "--port",
                str(lite_port),
                "--num_workers",
                "1",
            ],
            tmp / "litellm.log",
            env,
        )
        auth = {"Authorization": f"Bearer {key}"}
        lite_ready = await wait_ready(
            f"http://127.0.0.1:{lite_port}/health/liveliness", lite, tmp / "litellm.log", 180, auth
        )
        lite_version = litellm_version(binary)
        targets.append(
            Target(
                "litellm", f"http://127.0.0.1:{lite_port}/chat/completions", "bench", auth, lite.pid
            )
        )
        print(f"# LiteLLM {lite_version} ready in {lite_ready:.1f} s", file=sys.stderr)
    print(f"# gateway ready in {gw_ready:.1f} s; logs in {tmp}", file=sys.stderr)

    cells: list[Cell] = []
    for stream in (False, True):
        for clients in args.clients:
            for target in targets:
                cell = await run_cell(target, stream, clients, args.duration, args.warmup)
                cells.append(cell)
                print(
                    f"# {target.name:8s} {'stream' if stream else 'JSON':6s} {clients:3d} clients: "
                    f"{cell.rps:8.0f}/s p50 {cell.p50_ms:7.2f} ms, {cell.errors} errors",
                    file=sys.stderr,
                )
                await asyncio.sleep(0.3)

    gw_target = Target(
        "gateway", f"http://127.0.0.1:{gw_port}/v1/chat/completions", "bench-slow", {}, gw.pid
    )
    rounds = [
        await many_streams(gw_target, f"http://127.0.0.1:{slow}", args.streams, args.settle_timeout)
        for _ in range(args.stream_rounds)
    ]
    idle_gc = await idle_collections(f"http://127.0.0.1:{gw_port}/metrics")
    ended = datetime.datetime.now(datetime.UTC)

    # ---- the report ----
    load = os.getloadavg()
    print(f"## `make bench-serve`, {started:%Y-%m-%d %H:%M} UTC\n")
    print(
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}`; {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; Python "
        f"{platform.python_version()}; gateway: one uvicorn worker ({gateway_version()}, "
        f"on {gw_allocator}); "
        + (f"LiteLLM {lite_version} (`--num_workers 1`); " if lite_version else "")
        + f"{args.duration:g} s per cell after {args.warmup:g} s of warm-up; "
        f"took {(ended - started).total_seconds():.0f} s.\n"
    )
    print(table(cells))
    print()
    for note in notes:
        print(f"- {note}")
    checks: list[tuple[str, bool | None, str]] = []
    for stream in (False, True):
        kind = "stream" if stream else "JSON"
        for clients in args.clients:
            g = find(cells, "gateway", stream, clients)
            lt = find(cells, "litellm", stream, clients)
            if g is None or lt is None or not lt.rps:
                continue
            ratio = g.rps / lt.rps
            judged = clients == max(args.clients)
            checks.append(
                (
                    f"gateway / LiteLLM requests/s, {kind}, {clients} clients (target >= 10x"
                    + ("" if judged else ", shown only")
                    + ")",
                    ratio >= 10 if judged else None,
                    f"{ratio:.1f}x",
                )
            )
    for stream in (False, True):
        d = find(cells, "direct", stream, 1)
        g = find(cells, "gateway", stream, 1)
        lt = find(cells, "litellm", stream, 1)
        if d is None or g is None:
            continue
        kind = "stream" if stream else "JSON"
        added = g.p50_ms - d.p50_ms
        extra = f" (LiteLLM: {lt.p50_ms - d.p50_ms:.2f} ms)" if lt is not None else ""
        checks.append(
            (
                f"added p50, 1 client, {kind} (gateway p50 - direct p50; target < 2 ms"
                + ("" if not stream else ", shown only")
                + ")",
                added < 2.0 if not stream else None,
                f"{added:.2f} ms{extra}",
            )
        )
    errors = sum(c.errors for c in cells if c.target != "litellm")
    checks.append(("errors, direct and gateway cells", errors == 0, str(errors)))
    first = rounds[0]
    errors = sum(r.errors for r in rounds)
    checks.append(
        (
            f"{first.n} concurrent streams through one gateway worker, {len(rounds)} bursts: "
            "errors",
            errors == 0,
            f"{errors} of {first.n * len(rounds)} (a burst took "
            + " / ".join(f"{r.seconds:.1f}" for r in rounds)
            + f" s; the upstream had at most {max(r.upstream_open_max for r in rounds)} open)",
        )
    )
    checks.append(
        (
            "gateway open fds before / peak / after, each burst",
            all(r.fds_after <= r.fds_before for r in rounds),
            "; ".join(
                f"{r.fds_before} / {r.fds_peak} / {r.fds_after} (after {r.fds_settle_s:.0f} s)"
                for r in rounds
            ),
        )
    )
    growth = (first.rss_after / first.rss_before - 1) * 100
    checks.append(
        (
            "gateway RSS before / peak / after the first burst (target: after within 10%)",
            growth <= 10,
            f"{first.rss_before:.0f} / {first.rss_peak:.0f} / {first.rss_after:.0f} MB "
            f"({growth:+.1f}%)",
        )
    )
    if len(rounds) >= 3:
        last, prev = rounds[-1], rounds[-2]
        leak = (last.rss_after / prev.rss_after - 1) * 100
        checks.append(
            (
                "gateway RSS after each burst; the last against the one before (a leak grows it)",
                leak <= 10,
                ", ".join(f"{r.rss_after:.0f}" for r in rounds) + f" MB ({leak:+.1f}%)",
            )
        )
    print()
    print("| check | result | target |")
    print("|---|---|---|")
    failed = False
    for what, ok, value in checks:
        verdict = "-" if ok is None else ("PASS" if ok else "FAIL")
        failed |= ok is False
        print(f"| {what} | {value} | {verdict} |")
    if idle_gc is not None:
        count, seconds = idle_gc
        print(
            f"\nThe gateway's idle collections (a full `gc.collect()` 5 s after a burst): "
            f"{count:.0f}, {seconds / count * 1e3 if count else 0:.0f} ms each."
        )
    print(
        f"\nThe {first.n}-stream bursts go to a second upstream that spaces its 23 events "
        f"{args.stream_delay * 1e3:g} ms apart (about {args.stream_delay * 22:.2f} s a stream)."
    )
    return 1 if failed and args.strict else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds counted per cell")
    p.add_argument("--warmup", type=float, default=0.7, help="seconds of warm-up per cell")
    p.add_argument(
        "--clients", type=int, nargs="+", default=[1, 32], help="concurrent clients per cell"
    )
    p.add_argument("--streams", type=int, default=1000, help="concurrent streams, last phase")
    p.add_argument(
        "--stream-delay",
        type=float,
        default=0.02,
        help="seconds between the slow upstream's events",
    )
    p.add_argument("--stream-rounds", type=int, default=3, help="bursts of --streams streams")
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=45.0,
        help="seconds to wait for the gateway's fds to come back (aiohttp closes idle "
        "keep-alive connections 4-8 s after their last use)",
    )
    p.add_argument(
        "--allocator",
        choices=("auto", "jemalloc", "pymalloc"),
        default="auto",
        help="the gateway's memory allocator (multillm serve --allocator)",
    )
    p.add_argument("--litellm", default=str(LITELLM), help="the litellm command")
    p.add_argument("--skip-litellm", action="store_true", help="no LiteLLM (no ratio target)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    try:
        return runner(main(args))
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(run())
