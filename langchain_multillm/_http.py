"""HTTP plumbing shared by the server backends: clients, OAuth2 client credentials, base URLs."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import AsyncGenerator, Generator
from typing import Any
from urllib.parse import urlparse

import httpx
from pydantic import SecretStr

from langchain_multillm.errors import (
    AuthenticationError,
    InvalidInputError,
    MultiLLMWarning,
    from_httpx_error,
    from_response,
)

__all__ = ["ClientCredentials", "check_url", "server_root"]

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
