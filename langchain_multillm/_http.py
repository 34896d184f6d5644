"""HTTP plumbing shared by the server backends: clients, OAuth2 client credentials, base URLs.

Sync calls go through ``httpx``. Async calls go through ``aiohttp`` by default (one session per
event loop, shared by every model): measured against an upstream that answers at once
(``bench/http_clients.py``), httpx's ``AsyncClient`` (httpcore's pool) is the ceiling of the async
path, about 5x slower than aiohttp at 32 concurrent callers (encode/httpx#3215). An injected
``http_async_client`` (an ``httpx.AsyncClient``: tests, proxies) is used as it is. Both async
paths give the same answers and the same errors: aiohttp's exceptions are mapped in one place
(:data:`langchain_multillm.errors.AIOHTTP_ERROR_NAMES`), next to httpx's.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import functools
import json
import threading
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, final
from urllib.parse import urlparse, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from langchain_multillm.errors import (
    AuthenticationError,
    InvalidInputError,
    MultiLLMError,
    MultiLLMWarning,
    PermissionDeniedError,
    aiohttp_errors,
    from_aiohttp_error,
    from_httpx_error,
    from_response,
    malformed_body,
    redact,
)
from langchain_multillm.fit import Limits
from langchain_multillm.health import (
    Call,
    HealthReport,
    HealthSteps,
    answered,
    arun_steps,
    describe,
    down,
    not_ready,
    probe_failed,
    run_steps,
    unhealthy,
)

if TYPE_CHECKING:
    import ssl

    import aiohttp

__all__ = [
    "ClientCredentials",
    "HTTPConnection",
    "HealthProbe",
    "LimitsProbe",
    "Route",
    "aclose_sessions",
    "check_url",
    "server_root",
]

# Refresh a token this many seconds before it expires.
TOKEN_SKEW_S = 30.0


def check_url(field: str, value: str | None) -> str | None:
    """A base URL must be http(s) with a host; the message names the field."""
    if value is None:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidInputError(
            field, f"must be an http(s) URL such as http://host:8000/v1; got {value!r}"
        )
    return value.rstrip("/")


def server_root(base_url: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000`` (where /health and /tokenize live)."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def with_api_path(endpoint: str, suffix: str = "/v1") -> str:
    """A server's root URL (the LLM microservice's ``LLM_MODEL_SERVER_ENDPOINT``) as the URL of
    its API under ``suffix``: ``http://host:8000`` -> ``http://host:8000/v1``. A URL that ends
    with ``suffix`` already is kept; a trailing ``/`` is dropped."""
    endpoint = endpoint.rstrip("/")
    return endpoint if not suffix or endpoint.endswith(suffix) else endpoint + suffix


def warn_insecure(field: str = "verify_ssl") -> None:
    """One warning when TLS verification is turned off."""
    warnings.warn(
        f"{field}=False: TLS certificates are not verified; use only on a network you trust",
        MultiLLMWarning,
        stacklevel=4,
    )


class ClientCredentials(httpx.Auth):
    """OAuth2 client-credentials as an httpx auth flow.

    The token is fetched on first use, cached, refreshed ``TOKEN_SKEW_S`` before it expires,
    and fetched again once if the server answers 401. The secret never leaves this object
    except in the token request's body.
    """

    requires_response_body = False

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        *,
        scope: str | None = None,
        verify: bool = True,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.transport = transport
        self.async_transport = async_transport
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.verify = verify
        self.timeout = timeout
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def _form(self) -> dict[str, str]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._secret.get_secret_value(),
        }
        if self.scope:
            form["scope"] = self.scope
        return form

    def _store(self, response: httpx.Response) -> str:
        if response.status_code >= 400:
            err = redact(from_response(response, backend="oauth2"), [self._form()["client_secret"]])
            raise AuthenticationError(
                f"token request failed: {err.message}", status_code=response.status_code
            )
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise AuthenticationError("token response has no access_token") from None
        self._token = token
        self._expires_at = time.monotonic() + float(body.get("expires_in") or 3600)
        return token

    def _fresh(self) -> bool:
        return self._token is not None and time.monotonic() < self._expires_at - TOKEN_SKEW_S

    def token(self, *, force: bool = False) -> str:
        """A valid access token (fetched if missing, expiring or ``force``)."""
        with self._lock:
            if force or not self._fresh():
                try:
                    with httpx.Client(
                        verify=self.verify, timeout=self.timeout, transport=self.transport
                    ) as c:
                        self._store(c.post(self.token_url, data=self._form()))
                except httpx.HTTPError as exc:
                    raise from_httpx_error(exc, backend="oauth2") from exc
            assert self._token is not None
            return self._token

    async def atoken(self, *, force: bool = False) -> str:
        """Async twin of :meth:`token`."""
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            if force or not self._fresh():
                try:
                    async with httpx.AsyncClient(
                        verify=self.verify, timeout=self.timeout, transport=self.async_transport
                    ) as c:
                        self._store(await c.post(self.token_url, data=self._form()))
                except httpx.HTTPError as exc:
                    raise from_httpx_error(exc, backend="oauth2") from exc
            assert self._token is not None
            return self._token

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.token(force=True)}"
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self.atoken()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {await self.atoken(force=True)}"
            yield request


def request_timeout(timeout: float | None) -> httpx.Timeout:
    """The timeouts of a request: ``timeout`` for every phase, else 600 s (10 s to connect)."""
    return httpx.Timeout(timeout) if timeout else httpx.Timeout(600.0, connect=10.0)


def client_kwargs(timeout: float | None, verify: bool, auth: httpx.Auth | None) -> dict[str, Any]:
    """Arguments for the httpx clients this package creates."""
    return {
        "timeout": request_timeout(timeout),
        "verify": verify,
        "auth": auth,
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=20),
    }


def _tls_verify_default() -> bool:
    import os

    skip = os.environ.get("LLM_TLS_SKIP_VERIFY", "").strip().lower()
    return skip not in ("1", "true", "yes", "on")


# ------------------------------------------------------------------ SSE lines


class LineSplitter:
    """Text to lines as server-sent events define them: a line ends at ``\\r\\n``, ``\\n`` or
    ``\\r``, and nowhere else (httpx's ``iter_lines`` also splits at U+2028 and the other
    separators of ``str.splitlines``, which a JSON event may hold raw). The last line is
    returned even without its line end."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        buf = self._buf + text
        if "\r" in buf:
            # A "\r" at the very end may be the first half of "\r\n": keep it for the next feed.
            held = buf.endswith("\r")
            buf = buf[:-1] if held else buf
            buf = buf.replace("\r\n", "\n").replace("\r", "\n") + ("\r" if held else "")
        lines = buf.split("\n")
        self._buf = lines.pop()
        return lines

    def close(self) -> list[str]:
        rest, self._buf = self._buf.rstrip("\r"), ""
        return [rest] if rest else []


def iter_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines of a text stream (see :class:`LineSplitter`)."""
    split = LineSplitter()
    for text in chunks:
        yield from split.feed(text)
    yield from split.close()


async def aiter_lines(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Async twin of :func:`iter_lines`."""
    split = LineSplitter()
    async for text in chunks:
        for line in split.feed(text):
            yield line
    for line in split.close():
        yield line


async def _aio_text(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """A response body as text, as it arrives (UTF-8 unless the response names a charset)."""
    decoder = codecs.getincrementaldecoder(resp.charset or "utf-8")("replace")
    async for chunk in resp.content.iter_any():
        text = decoder.decode(chunk)
        if text:
            yield text
    text = decoder.decode(b"", final=True)
    if text:
        yield text


# ------------------------------------------------------------------ the async transport

# Connections the shared async session keeps open to one host (httpx's default cap, and what
# this package gave each model's httpx client before).
MAX_CONNECTIONS_PER_HOST = 100
# Seconds an idle connection is kept for reuse: under uvicorn's 5 s (vLLM's server, TGI's
# router and this package's gateway close idle keep-alive connections then). aiohttp's default
# (15 s) reuses a connection the server has already closed: the request then fails with
# "Server disconnected" before the server ever reads it.
KEEPALIVE_S = 4.0

_SESSIONS: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_SESSIONS_LOCK = threading.Lock()
# Headers of an httpx request that aiohttp writes itself.
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
# Headers of an aiohttp response that no longer describe its (decoded) body.
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _drop(session: aiohttp.ClientSession) -> None:
    """Forget a session whose loop is closed (or is ending): mark its connector closed, so
    aiohttp does not log "Unclosed client session" when it is collected; nothing to await."""
    connector = session.connector
    close = getattr(connector, "_close", None)
    if connector is not None and callable(close):
        close()


def _session() -> aiohttp.ClientSession:
    """The aiohttp session of the running event loop (one per loop, shared by every model).

    Cookies are not kept (one model's cookies never reach another's server). Proxies and CA
    bundles come from the environment, as with httpx (see :func:`_env_proxy`). A loop that has
    closed (each ``asyncio.run`` makes a new one) has its session dropped here.
    """
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is not None and not session.closed:
        return session
    import aiohttp

    with _SESSIONS_LOCK:
        for old in [lp for lp in _SESSIONS if lp.is_closed()]:
            _drop(_SESSIONS.pop(old))
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0,
                limit_per_host=MAX_CONNECTIONS_PER_HOST,
                keepalive_timeout=KEEPALIVE_S,
                ssl=_ssl_context(True),  # a request may name its own (verify_ssl=False)
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            # Not aiohttp's trust_env: it looks the proxy up in a worker thread on every request
            # (a thread hop per call); _env_proxy reads it once per host. No .netrc (as httpx).
            trust_env=False,
        )
        _SESSIONS[loop] = session
        _env_proxy.cache_clear()  # a new loop reads the environment again
    return session


@functools.lru_cache(maxsize=256)
def _env_proxy(scheme: str, host: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for a host (``HTTPS_PROXY``, ``HTTP_PROXY``,
    ``ALL_PROXY``, ``NO_PROXY``), as httpx's ``trust_env`` reads them, and its credentials."""
    from urllib.request import getproxies, proxy_bypass

    import aiohttp
    from yarl import URL

    proxies = getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or proxy_bypass(host):
        return None, None
    url = URL(proxy if "://" in proxy else f"http://{proxy}")
    auth = aiohttp.BasicAuth.from_url(url)
    return str(url.with_user(None)), auth


async def aclose_sessions() -> None:
    """Close the shared async session of the running loop (a later call opens a new one)."""
    session = _SESSIONS.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


@atexit.register
def _drop_sessions() -> None:
    with _SESSIONS_LOCK:
        while _SESSIONS:
            _drop(_SESSIONS.popitem()[1])


def openai_aiohttp_client() -> Any | None:
    """An async HTTP client for the ``openai`` SDK that sends through the shared aiohttp
    session of the running loop (the SDK's own aiohttp adapter, ``DefaultAioHttpClient``), or
    None where the installed SDK has no such adapter (its default httpx client is used then)."""
    transport = _openai_transport()
    if transport is None:
        return None
    from openai import DefaultAioHttpClient

    return DefaultAioHttpClient(transport=transport())


@functools.cache
def _openai_transport() -> Callable[[], Any] | None:
    try:
        from openai import DefaultAioHttpClient  # noqa: F401
        from openai._vendor.httpx_aiohttp import AiohttpTransport
    except ImportError:
        return None

    class SharedSessionTransport(AiohttpTransport):
        """The SDK's adapter on the shared session (fetched per request: a closed one is
        replaced); closing it closes the loop's session, as :meth:`HTTPConnection.aclose`."""

        async def handle_async_request(self, request: Any) -> Any:
            self.client = _session()
            return await super().handle_async_request(request)

        async def aclose(self) -> None:
            await aclose_sessions()

    return SharedSessionTransport


@functools.lru_cache(maxsize=2)
def _ssl_context(verify: bool) -> ssl.SSLContext:
    """The TLS context httpx would use (certifi's bundle or ``SSL_CERT_FILE``), made once."""
    return httpx.create_ssl_context(verify=verify, trust_env=True)


@functools.lru_cache(maxsize=64)
def _aio_timeout(timeout: float | None) -> aiohttp.ClientTimeout:
    """httpx's timeouts in aiohttp's terms: pool -> connect (waiting for a connection),
    connect -> sock_connect, read -> sock_read (between two reads); no write timeout."""
    import aiohttp

    t = request_timeout(timeout)
    return aiohttp.ClientTimeout(
        total=None, connect=t.pool, sock_connect=t.connect, sock_read=t.read
    )


@functools.cache
def _aio_error_types() -> tuple[type[BaseException], ...]:
    """What the aiohttp path catches and maps: aiohttp's errors, timeouts, socket errors."""
    return (*aiohttp_errors(), asyncio.TimeoutError, TimeoutError, OSError)


def _as_httpx(
    resp: aiohttp.ClientResponse, content: bytes, request: httpx.Request
) -> httpx.Response:
    """An aiohttp response (its body read) as an ``httpx.Response``, for what judges one."""
    headers = [
        (k, v) for k, v in resp.raw_headers if k.decode("latin-1").lower() not in _BODY_HEADERS
    ]
    return httpx.Response(resp.status, headers=headers, content=content, request=request)


# ------------------------------------------------------------------ probes, as data

# A probe's reader: (the model, the route's JSON body) -> what it reads. Readers are plain
# functions, so the same probe runs on the sync and on the async client.
Reader = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Route:
    """A ``GET`` of a server: ``path`` under its root (``base="root"``: ``server_root`` of the
    ``base_url``, where ``/health`` and ``/info`` live) or under its API URL (``base="api"``:
    the ``base_url`` itself, e.g. ``.../v1`` + ``/models``). ``label`` names it in health
    details (default: the path)."""

    path: str
    base: Literal["root", "api"] = "root"
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.path


@dataclass(frozen=True)
class HealthProbe:
    """A server's free health check, as data: :class:`HTTPConnection` runs it with its sync and
    its async client (``_health`` / ``_ahealth``), ``health_timeout`` shared by its requests.

    * ``status`` (optional): a route judged by its status alone (``/health``): no answer or a
      5xx is down; another 4xx is alive, not ready; with ``status_optional`` a 404 means the
      server has no such route, and ``models`` alone decides.
    * ``models``: the JSON route that says what is served. ``served(model, body)`` reads the
      served model ids (a list), or the one id of a server that serves one model (a str: the
      report then names it); ``window(model, body)`` the context window (None: the model's own
      ``context_window``). The configured ``model_name`` must be served (``any_model``: a name
      that matches whatever is).
    * Wording (the details users read): ``not_served`` (``{model}``, ``{served}``);
      ``refused_key``: the detail of a refused key (401/403) on ``models`` with no status
      route to go by (None: like any other failure); ``status_refused`` (``{answered}``) for
      a 4xx of ``status``; ``models_failed`` (``{status}``, ``{state}``: "ok" or its answer,
      ``{code}``, ``{models}``, ``{error}``) when ``status`` answered and ``models`` failed.
    """

    models: Route
    served: Reader
    window: Reader | None = None
    status: Route | None = None
    status_optional: bool = False
    any_model: str | None = None
    not_served: str = "{model!r} is not served; the server has {served!r}"
    refused_key: str | None = None
    status_refused: str = "{answered}"
    models_failed: str = "{status} {state}; {models} failed: {error}"

    @property
    def requests(self) -> int:
        return 2 if self.status is not None else 1

    def judge(
        self,
        model: Any,
        started: float,
        status: httpx.Response | Exception | None,
        body: Any,
    ) -> HealthReport:
        """The report from the answers (``status``: the status route's response or error,
        None where there is none; ``body``: the models route's JSON or error)."""
        name = model.model_name
        no_route = False
        route = self.status.name if self.status is not None else ""
        if self.status is not None:
            if isinstance(status, Exception):
                return down(started, name, f"{route} failed: {describe(status)}")
            assert status is not None
            if unhealthy(status.status_code):
                return down(started, name, answered(route, status))
            no_route = self.status_optional and status.status_code == 404
        if isinstance(body, Exception):
            what = f"{self.models.name} failed"
            if self.status is None or no_route:
                if self.refused_key and isinstance(
                    body, (AuthenticationError, PermissionDeniedError)
                ):
                    return not_ready(started, name, f"{self.refused_key}: {describe(body)}")
                return probe_failed(started, name, what, body)
            assert isinstance(status, httpx.Response)
            state = "ok" if status.status_code < 400 else answered(route, status)
            detail = self.models_failed.format(
                status=route,
                state=state,
                code=status.status_code,
                models=self.models.name,
                error=describe(body),
            )
            return not_ready(started, name, detail)
        window = (self.window(model, body) if self.window else None) or model.context_window
        served = self.served(model, body)
        shown = served if isinstance(served, str) and served else name
        if isinstance(status, httpx.Response) and status.status_code >= 400 and not no_route:
            refused = self.status_refused.format(answered=answered(route, status))
            return not_ready(started, shown, refused, window)
        ids = [served] if isinstance(served, str) or served is None else list(served)
        if name != self.any_model and name not in ids:
            return not_ready(
                started, shown, self.not_served.format(model=name, served=served), window
            )
        return HealthReport(
            alive=True,
            ready=True,
            latency_s=time.perf_counter() - started,
            model=shown,
            context_window=window,
            detail=f"serving {shown}",
        )


@dataclass(frozen=True)
class LimitsProbe:
    """Where a server reports its limits, as data: ``read(model, body)`` turns the route's JSON
    into :class:`~langchain_multillm.fit.Limits` (a body of the wrong shape:
    ``malformed_body``). :class:`HTTPConnection` fetches it with either client (then runs the
    backend's ``_measure_template`` / ``_ameasure_template``)."""

    route: Route
    read: Reader


EventParser = Callable[..., Iterator[dict[str, Any]]]
AsyncEventParser = Callable[..., AsyncIterator[dict[str, Any]]]


class HTTPConnection(BaseModel):
    """A server backend's connection: settings, pooled clients, JSON calls and SSE streams.

    Sync calls use one ``httpx.Client`` per model; async calls use the shared aiohttp session
    of the running event loop; the clients injected for tests and proxies (``httpx``) replace
    either. Every transport error and non-2xx answer becomes an error of the package's tree,
    named after the backend (``_backend``). A backend adds its ``api_key`` field (with its own
    environment variable) and, where it has one, an auth flow.
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    verify_ssl: bool = Field(default_factory=_tls_verify_default)
    """Verify TLS certificates (off only when asked; env ``LLM_TLS_SKIP_VERIFY=1`` turns it off)."""

    timeout: float | None = Field(default=None, gt=0, alias="request_timeout")
    """Seconds a request may take (None: 600 s, 10 s to connect)."""

    default_headers: dict[str, str] | None = None
    """Headers sent with every request."""

    http_client: httpx.Client | None = Field(default=None, exclude=True)
    """An httpx client to use for sync calls (proxies, tests); its base URL is ignored."""

    http_async_client: httpx.AsyncClient | None = Field(default=None, exclude=True)
    """An httpx client to use for async calls (by default they go through aiohttp)."""

    _backend: ClassVar[str] = "http"
    _health_probe: ClassVar[HealthProbe | None] = None
    """The free health check as data (fills ``_health`` / ``_ahealth``)."""
    _limits_probe: ClassVar[LimitsProbe | None] = None
    """Where the server reports its limits, as data (fills ``_fetch_limits`` /
    ``_afetch_limits``); None: unknown, unless the backend writes them."""
    _sync: httpx.Client | None = PrivateAttr(default=None)
    if TYPE_CHECKING:
        # Fields of the model this connection is combined with (``ModelSurface`` and
        # ``_Sampling`` in ``_base``, the backend's ``base_url``), declared for the type
        # checker only: a pydantic field here would replace theirs.
        model_name: str
        context_window: int | None
        health_timeout: float
        base_url: str | None

    # ---- probes (data: ``_health_probe``, ``_limits_probe``) ----
    @final
    def _route_url(self, route: Route) -> str:
        base = self.base_url
        assert base, "a probed server needs its base_url"
        return (server_root(base) if route.base == "root" else base) + route.path

    def _declared_probe(self) -> HealthProbe:
        probe = self._health_probe
        if probe is None:
            raise NotImplementedError(
                f"{type(self).__name__} declares no _health_probe and writes no _health"
            )
        return probe

    def _probe_steps(self) -> HealthSteps:
        """The declared :class:`HealthProbe` as steps (run on either client)."""
        probe = self._declared_probe()
        started = time.perf_counter()
        t = self.health_timeout / probe.requests
        status: httpx.Response | Exception | None = None
        if probe.status is not None:
            status_url = self._route_url(probe.status)
            try:
                status = yield Call(
                    lambda: self._get(status_url, timeout=t),
                    lambda: self._aget(status_url, timeout=t),
                )
            except Exception as exc:
                status = exc
        models_url = self._route_url(probe.models)
        try:
            body: Any = yield Call(
                lambda: self._get_json(models_url, timeout=t),
                lambda: self._aget_json(models_url, timeout=t),
            )
        except Exception as exc:
            body = exc
        return probe.judge(self, started, status, body)

    def _health(self) -> HealthReport:
        """The declared :class:`HealthProbe`, on the sync client."""
        return run_steps(self._probe_steps())

    async def _ahealth(self) -> HealthReport:
        """The declared :class:`HealthProbe`, on the async client."""
        return await arun_steps(self._probe_steps())

    def _fetch_limits(self) -> Limits:
        """The declared :class:`LimitsProbe`, on the sync client (none: unknown)."""
        probe = self._limits_probe
        if probe is None:
            return Limits()
        limits: Limits = probe.read(self, self._get_json(self._route_url(probe.route)))
        self._measure_template()
        return limits

    async def _afetch_limits(self) -> Limits:
        """The declared :class:`LimitsProbe`, on the async client."""
        probe = self._limits_probe
        if probe is None:
            return Limits()
        limits: Limits = probe.read(self, await self._aget_json(self._route_url(probe.route)))
        await self._ameasure_template()
        return limits

    def _measure_template(self) -> None:
        """After the limits: measure what the chat template adds (counts on the server), for
        the cheap bound (``fit.TemplateBound``); by default nothing."""

    async def _ameasure_template(self) -> None:
        """Async twin of :meth:`_measure_template`."""

    # ---- clients ----
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **(self.default_headers or {})}
        api_key: SecretStr | None = getattr(self, "api_key", None)
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        return headers

    def _auth_flow(self) -> httpx.Auth | None:
        """An httpx auth flow (OAuth2 and the like), where the backend has one."""
        return None

    def _secrets(self) -> list[str]:
        """The credentials this model sends: every ``SecretStr`` field, the headers' values
        that hold one, and an OAuth2 access token once issued."""
        out = [
            v.get_secret_value()
            for name in type(self).model_fields
            if isinstance(v := getattr(self, name, None), SecretStr)
        ]
        auth = self._auth_flow()
        token = getattr(auth, "_token", None)
        if isinstance(token, str):
            out.append(token)
        return [x for x in out if len(x) >= 4]  # a 1-3 character "key" would mask plain text

    @final
    def _response_error(self, response: httpx.Response) -> MultiLLMError:
        """The error of the tree for a non-2xx response, with this model's credentials masked
        wherever the server echoed them."""
        return redact(from_response(response, backend=self._backend), self._secrets())

    @property
    def _client(self) -> httpx.Client:
        if self.http_client is not None:
            return self.http_client
        if self._sync is None:
            self._sync = httpx.Client(
                **client_kwargs(self.timeout, self.verify_ssl, self._auth_flow())
            )
        return self._sync

    @final
    def _request_kwargs(self, timeout: float | None = None) -> dict[str, Any]:
        kw: dict[str, Any] = {"headers": self._headers()}
        if self.http_client is not None or self.http_async_client is not None:
            auth = self._auth_flow()
            if auth is not None:
                kw["auth"] = auth
            if self.timeout:
                kw["timeout"] = self.timeout
        if timeout:
            kw["timeout"] = timeout
        return kw

    # ---- the aiohttp path (no async client injected) ----
    @final
    async def _aio_send(
        self, method: str, url: str, content: bytes | None, timeout: float | None
    ) -> tuple[aiohttp.ClientResponse, bytes | None]:
        """Send one request on the shared session; the response with its headers read (and its
        body, when an auth flow had to read it). Runs the auth flow as httpx would."""
        session = _session()
        options: dict[str, Any] = {
            "data": content,
            "timeout": _aio_timeout(timeout or self.timeout),
            "allow_redirects": False,
        }
        parts = urlsplit(url)
        if parts.scheme == "https":
            options["ssl"] = _ssl_context(self.verify_ssl)
        proxy, proxy_auth = _env_proxy(parts.scheme, parts.hostname or "")
        if proxy is not None:
            options["proxy"] = proxy
            options["proxy_auth"] = proxy_auth
        auth = self._auth_flow()
        if auth is None:
            return await session.request(method, url, headers=self._headers(), **options), None
        flow = auth.async_auth_flow(httpx.Request(method, url, headers=self._headers()))
        request = await flow.__anext__()
        while True:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
            resp = await session.request(method, str(request.url), headers=headers, **options)
            body = await resp.read() if auth.requires_response_body else None
            try:
                request = await flow.asend(_as_httpx(resp, body or b"", request))
            except StopAsyncIteration:
                return resp, body
            resp.release()

    @final
    async def _aio_call(
        self, method: str, url: str, content: bytes | None, timeout: float | None = None
    ) -> httpx.Response:
        """A whole request and response on the aiohttp path, as an ``httpx.Response``."""
        try:
            resp, body = await self._aio_send(method, url, content, timeout)
            async with resp:
                raw = body if body is not None else await resp.read()
                return _as_httpx(resp, raw, httpx.Request(method, url))
        except _aio_error_types() as exc:
            raise from_aiohttp_error(exc, backend=self._backend) from exc

    @final
    async def _aio_post_json(self, url: str, body: dict[str, Any]) -> Any:
        """The hot path: a JSON POST whose 2xx body is decoded without building a response."""
        content = _dumps(body)
        try:
            resp, raw = await self._aio_send("POST", url, content, None)
            async with resp:
                if raw is None:
                    raw = await resp.read()
                if resp.status < 400:
                    try:
                        return json.loads(raw)
                    except ValueError:
                        text = raw.decode("utf-8", "replace")
                        raise malformed_body(
                            f"not JSON: {text[:200]!r}", body=text, backend=self._backend
                        ) from None
                error = _as_httpx(resp, raw, httpx.Request("POST", url))
        except _aio_error_types() as exc:
            raise from_aiohttp_error(exc, backend=self._backend) from exc
        raise self._response_error(error)

    # ---- plain JSON calls ----
    @final
    def _json(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            raise self._response_error(r)
        try:
            return r.json()
        except ValueError:
            raise malformed_body(
                f"not JSON: {r.text[:200]!r}", body=r.text, backend=self._backend
            ) from None

    @final
    def _post_json(self, url: str, body: dict[str, Any]) -> Any:
        try:
            r = self._client.post(url, json=body, **self._request_kwargs())
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc
        return self._json(r)

    @final
    async def _apost_json(self, url: str, body: dict[str, Any]) -> Any:
        if self.http_async_client is None:
            return await self._aio_post_json(url, body)
        try:
            r = await self.http_async_client.post(url, json=body, **self._request_kwargs())
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc
        return self._json(r)

    @final
    def _get(self, url: str, timeout: float | None = None) -> httpx.Response:
        """A GET whose status the caller judges (health routes); transport errors raise."""
        try:
            return self._client.get(url, **self._request_kwargs(timeout))
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc

    @final
    async def _aget(self, url: str, timeout: float | None = None) -> httpx.Response:
        """Async twin of :meth:`_get`."""
        if self.http_async_client is None:
            return await self._aio_call("GET", url, None, timeout)
        try:
            return await self.http_async_client.get(url, **self._request_kwargs(timeout))
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc

    @final
    def _get_json(self, url: str, timeout: float | None = None) -> Any:
        return self._json(self._get(url, timeout))

    @final
    async def _aget_json(self, url: str, timeout: float | None = None) -> Any:
        return self._json(await self._aget(url, timeout))

    # ---- streams ----
    @final
    def _sse(self, url: str, body: dict[str, Any], events: EventParser) -> Iterator[dict[str, Any]]:
        """POST and parse the server-sent events with ``events(lines, backend=...)``."""
        try:
            with self._client.stream("POST", url, json=body, **self._request_kwargs()) as r:
                if r.status_code >= 400:
                    r.read()
                    raise self._response_error(r)
                yield from events(iter_lines(r.iter_text()), backend=self._backend)
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc

    @final
    async def _asse(
        self, url: str, body: dict[str, Any], events: AsyncEventParser
    ) -> AsyncIterator[dict[str, Any]]:
        """Async twin of :meth:`_sse`."""
        if self.http_async_client is None:
            async for event in self._aio_sse(url, body, events):
                yield event
            return
        client = self.http_async_client
        try:
            async with client.stream("POST", url, json=body, **self._request_kwargs()) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise self._response_error(r)
                async for event in events(aiter_lines(r.aiter_text()), backend=self._backend):
                    yield event
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc

    @final
    async def _aio_sse(
        self, url: str, body: dict[str, Any], events: AsyncEventParser
    ) -> AsyncIterator[dict[str, Any]]:
        """:meth:`_asse` on the aiohttp path. Leaving early closes the connection (the server
        sees the client go and can stop generating)."""
        try:
            resp, raw = await self._aio_send("POST", url, _dumps(body), None)
            async with resp:
                if resp.status >= 400:
                    if raw is None:
                        raw = await resp.read()
                    raise self._response_error(_as_httpx(resp, raw, httpx.Request("POST", url)))
                lines = aiter_lines(_aio_text(resp)) if raw is None else _lines_of(raw)
                async for event in events(lines, backend=self._backend):
                    yield event
        except _aio_error_types() as exc:
            raise from_aiohttp_error(exc, backend=self._backend) from exc

    @final
    def close(self) -> None:
        """Close the sync client this model opened (injected clients are left alone)."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    @final
    async def aclose(self) -> None:
        """Close what this model opened: its sync client, and the shared async session of the
        running loop (the models that share it open a new one on their next call)."""
        await aclose_sessions()
        self.close()


def _dumps(body: dict[str, Any]) -> bytes:
    """A JSON body as httpx's ``json=`` encodes it (compact, UTF-8, no NaN)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


async def _lines_of(raw: bytes) -> AsyncIterator[str]:
    for line in iter_lines([raw.decode("utf-8", "replace")]):
        yield line
