"""HTTP plumbing shared by the server backends: clients, OAuth2 client credentials, base URLs."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import Any, ClassVar
from urllib.parse import urlparse

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from langchain_multillm.errors import (
    AuthenticationError,
    InvalidInputError,
    MultiLLMWarning,
    from_httpx_error,
    from_response,
    malformed_body,
)

__all__ = ["ClientCredentials", "HTTPConnection", "check_url", "server_root"]

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
            err = from_response(response, backend="oauth2")
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


def client_kwargs(timeout: float | None, verify: bool, auth: httpx.Auth | None) -> dict[str, Any]:
    """Arguments for the httpx clients this package creates."""
    return {
        "timeout": httpx.Timeout(timeout) if timeout else httpx.Timeout(600.0, connect=10.0),
        "verify": verify,
        "auth": auth,
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=20),
    }


def _tls_verify_default() -> bool:
    import os

    skip = os.environ.get("LLM_TLS_SKIP_VERIFY", "").strip().lower()
    return skip not in ("1", "true", "yes", "on")


EventParser = Callable[..., Iterator[dict[str, Any]]]
AsyncEventParser = Callable[..., AsyncIterator[dict[str, Any]]]


class HTTPConnection(BaseModel):
    """A server backend's connection: settings, pooled clients, JSON calls and SSE streams.

    One sync and one async ``httpx`` client per model (the async one per event loop), or the
    clients injected for tests and proxies. Every transport error and non-2xx answer becomes
    an error of the package's tree, named after the backend (``_backend``). A backend adds its
    ``api_key`` field (with its own environment variable) and, where it has one, an auth flow.
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
    """An httpx client to use for async calls."""

    _backend: ClassVar[str] = "http"
    _sync: httpx.Client | None = PrivateAttr(default=None)
    _async: httpx.AsyncClient | None = PrivateAttr(default=None)
    _async_loop: asyncio.AbstractEventLoop | None = PrivateAttr(default=None)

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

    @property
    def _client(self) -> httpx.Client:
        if self.http_client is not None:
            return self.http_client
        if self._sync is None:
            self._sync = httpx.Client(
                **client_kwargs(self.timeout, self.verify_ssl, self._auth_flow())
            )
        return self._sync

    @property
    def _aclient(self) -> httpx.AsyncClient:
        if self.http_async_client is not None:
            return self.http_async_client
        # An async client's connections belong to the event loop that opened them: a new loop
        # (a second asyncio.run, a notebook restarted) gets a new client.
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async_loop = loop
            self._async = httpx.AsyncClient(
                **client_kwargs(self.timeout, self.verify_ssl, self._auth_flow())
            )
        return self._async

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

    # ---- plain JSON calls ----
    def _json(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            raise from_response(r, backend=self._backend)
        try:
            return r.json()
        except ValueError:
            raise malformed_body(
                f"not JSON: {r.text[:200]!r}", body=r.text, backend=self._backend
            ) from None

    def _post_json(self, url: str, body: dict[str, Any]) -> Any:
        try:
            r = self._client.post(url, json=body, **self._request_kwargs())
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc
        return self._json(r)

    async def _apost_json(self, url: str, body: dict[str, Any]) -> Any:
        try:
            r = await self._aclient.post(url, json=body, **self._request_kwargs())
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc
        return self._json(r)

    def _get(self, url: str, timeout: float | None = None) -> httpx.Response:
        """A GET whose status the caller judges (health routes); transport errors raise."""
        try:
            return self._client.get(url, **self._request_kwargs(timeout))
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc

    async def _aget(self, url: str, timeout: float | None = None) -> httpx.Response:
        """Async twin of :meth:`_get`."""
        try:
            return await self._aclient.get(url, **self._request_kwargs(timeout))
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc

    def _get_json(self, url: str, timeout: float | None = None) -> Any:
        return self._json(self._get(url, timeout))

    async def _aget_json(self, url: str, timeout: float | None = None) -> Any:
        return self._json(await self._aget(url, timeout))

    # ---- streams ----
    def _sse(self, url: str, body: dict[str, Any], events: EventParser) -> Iterator[dict[str, Any]]:
        """POST and parse the server-sent events with ``events(lines, backend=...)``."""
        try:
            with self._client.stream("POST", url, json=body, **self._request_kwargs()) as r:
                if r.status_code >= 400:
                    r.read()
                    raise from_response(r, backend=self._backend)
                yield from events(r.iter_lines(), backend=self._backend)
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc

    async def _asse(
        self, url: str, body: dict[str, Any], events: AsyncEventParser
    ) -> AsyncIterator[dict[str, Any]]:
        """Async twin of :meth:`_sse`."""
        try:
            async with self._aclient.stream("POST", url, json=body, **self._request_kwargs()) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise from_response(r, backend=self._backend)
                async for event in events(r.aiter_lines(), backend=self._backend):
                    yield event
        except httpx.HTTPError as exc:
            raise from_httpx_error(exc, backend=self._backend) from exc

    def close(self) -> None:
        """Close the clients this model opened (injected clients are left alone)."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        self.close()
