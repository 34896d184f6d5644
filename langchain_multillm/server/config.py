"""The gateway's configuration: a YAML file, or the environment of the service it replaces.

A file (``multillm serve --config serve.yaml``)::

    server:
      api_keys: ["${oc.env:MULTILLM_API_KEY}"]   # none: only a loopback bind is allowed
    models:
      - name: smollm2            # what clients send as "model"
        model: "llamacpp:"       # a load_chat_model spec
        params: {temperature: 0} # fields of that model
        max_concurrency: 4       # calls in flight; more wait in a queue...
        max_queue: 64            # ...of this length; past it: 429 with Retry-After

Strings may hold ``${oc.env:NAME}``, ``${oc.env:NAME,default}`` (OmegaConf's form, which the
replaced gateway used) and ``${NAME}``; ``\\${`` is a literal ``${``. A wrong file is refused with
one line naming the key path and what is allowed (:class:`ConfigError`), before any port is bound.

Without a file, :func:`config_from_env` serves one model from the replaced LLM microservice's
variables (``LLM_MODEL_SERVER``, ``LLM_MODEL_SERVER_ENDPOINT``, ``LLM_MODEL_NAME``, ...), or the
embedded model when none is set. Secrets (the gateway's keys, and every value interpolated from
a variable whose name says key, secret, token or password) never reach a log, an error or a route.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from langchain_multillm._http import with_api_path
from langchain_multillm.errors import InvalidInputError

__all__ = [
    "CacheSettings",
    "ConfigError",
    "JobsSettings",
    "ModelConfig",
    "ServeConfig",
    "ServerSettings",
    "ServicesSettings",
    "config_from_env",
    "interpolate",
    "load_config",
]

DEFAULT_PORT = 8000
LOOPBACK_NAMES = ("localhost",)


class ConfigError(InvalidInputError):
    """A configuration that cannot be served; ``field`` is the key path (``models[0].name``)."""


# ------------------------------------------------------------------ interpolation

_INTERP = re.compile(r"(?<!\\)\$\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def _resolve(expr: str, path: str, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The value of one ``${...}`` expression, and the variable it read."""
    body = expr.strip()
    if body.startswith("oc.env:"):
        name, sep, default = body[len("oc.env:") :].partition(",")
        name = name.strip()
        default = default.strip()
        if len(default) >= 2 and default[0] == default[-1] and default[0] in "'\"":
            default = default[1:-1]
        has_default = bool(sep)
    else:
        name, has_default, default = body, False, ""
    if not _NAME.match(name):
        raise ConfigError(
            path,
            "an interpolation must be ${oc.env:NAME}, ${oc.env:NAME,default} or ${NAME}; "
            f"got ${{{expr}}}",
        )
    value = environ.get(name)
    if value is None:
        if not has_default:
            raise ConfigError(
                path, f"environment variable {name} is not set (and ${{{expr}}} gives no default)"
            )
        return (None if default == "null" else default), name
    return value, name


def interpolate(
    data: Any,
    environ: Mapping[str, str] | None = None,
    *,
    path: str = "",
    secrets: set[str] | None = None,
) -> Any:
    """``data`` (parsed YAML) with every ``${...}`` in its strings resolved from ``environ``.

    A string that is one whole interpolation takes the variable's value as it is (``null`` as a
    default gives None); interpolations inside a longer string are spliced in. Values read from
    variables whose name says key, secret, token or password are added to ``secrets``.
    """
    env = os.environ if environ is None else environ
    if isinstance(data, dict):
        return {
            k: interpolate(v, env, path=_join(path, str(k)), secrets=secrets)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [
            interpolate(v, env, path=f"{path}[{i}]", secrets=secrets) for i, v in enumerate(data)
        ]
    if not isinstance(data, str) or "${" not in data:
        return data
    whole = _INTERP.fullmatch(data)
    if whole:
        value, name = _resolve(whole.group(1), path, env)
        _note_secret(secrets, name, value)
        return value

    def splice(m: re.Match[str]) -> str:
        value, name = _resolve(m.group(1), path, env)
        _note_secret(secrets, name, value)
        return "" if value is None else value

    return _INTERP.sub(splice, data).replace("\\${", "${")


def _note_secret(secrets: set[str] | None, name: str, value: str | None) -> None:
    if secrets is not None and value and _SECRET_NAME.search(name):
        secrets.add(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``**********``."""
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, "**********")
    return text


# ------------------------------------------------------------------ the models

_STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True)


class ServerSettings(BaseModel):
    """The ``server:`` section."""

    model_config = _STRICT

    host: str = "127.0.0.1"
    """Address to bind; anything but a loopback address needs ``api_keys``."""

    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    """TCP port to bind."""

    workers: int = Field(default=1, ge=1, le=256)
    """Worker processes (each has its own models, queues and metrics)."""

    api_keys: list[SecretStr] = Field(default_factory=list)
    """Keys clients send as ``Authorization: Bearer KEY``; none: no key is asked (loopback only)."""

    disable_streaming: bool = False
    """Streamed requests are generated whole and sent as one chunk (``LLM_DISABLE_STREAMING``)."""

    output_guard: bool = False
    """Streamed requests are answered as one JSON body, for an output guard that streams it
    on (``LLM_OUTPUT_GUARD_EXISTS``)."""

    force_include_usage: bool = False
    """Every stream ends with a usage chunk, asked for or not."""

    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request body; larger is a 413."""

    health_cache_s: float = Field(default=5.0, ge=0)
    """Seconds a model's health report is reused by ``/ready`` (a probe storm reaches the
    backend once per period)."""

    startup_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds the start may spend loading models and asking their limits; a model that is
    not ready by then is served anyway and reported by ``/ready``."""

    access_log: bool = False
    """One log line per request (uvicorn's access log)."""

    idle_gc_after_s: float = Field(default=5.0, ge=0)
    """After a burst (``idle_gc_min_peak`` requests in flight at once), a full garbage
    collection once the worker has been idle this long, so the burst's memory comes back
    (``server/idle_gc.py``); ``0``: never. The default outlasts the 4 s the backends keep an
    idle upstream connection, so the burst's connections are gone by then."""

    idle_gc_min_peak: int = Field(default=64, ge=1)
    """Requests in flight at once that make a burst for ``idle_gc_after_s``."""

    allocator: Literal["auto", "jemalloc", "pymalloc"] = "auto"
    """The memory allocator ``multillm serve`` runs on: ``auto`` is jemalloc where
    ``libjemalloc.so.2`` is installed (RSS comes back after a burst), else CPython's pymalloc;
    ``jemalloc`` refuses to start without it (``server/allocator.py``, docs/server.md)."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _drop_nulls(cls, keys: Any) -> Any:
        """``${oc.env:KEY,null}`` with KEY unset leaves no key (not an empty one)."""
        return [k for k in keys if k is not None] if isinstance(keys, list) else keys

    @field_validator("api_keys")
    @classmethod
    def _keys_not_empty(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for i, k in enumerate(keys):
            if not k.get_secret_value().strip():
                raise ValueError(f"key {i} is empty; each key must be a non-empty string")
        return keys


class ModelConfig(BaseModel):
    """One entry of ``models:``."""

    model_config = _STRICT

    name: str = Field(min_length=1, max_length=256, pattern=r"^[^\s]+$")
    """What clients send as ``model``."""

    model: str = Field(min_length=1)
    """A ``load_chat_model`` spec, ``provider:model`` (``llamacpp:`` is the embedded model)."""

    kind: Literal["chat", "completion"] = "chat"
    """``chat`` (``/v1/chat/completions``) or ``completion`` (``/v1/completions``, built by
    ``load_completion_model``)."""

    params: dict[str, Any] = Field(default_factory=dict, repr=False)
    """Fields of the model (``base_url``, ``api_key``, ``temperature``, ...)."""

    max_concurrency: int = Field(default=4, ge=1, le=100_000)
    """Calls to this model in flight at once (per worker process)."""

    max_queue: int = Field(default=64, ge=0, le=1_000_000)
    """Calls waiting for a slot; past it: 429 with Retry-After."""

    replicas: list[ReplicaConfig] = Field(default_factory=list)
    """More deployments of the same model (``model`` + ``params`` each): with them the entry is
    served by a ``ChatRouter`` over ``model`` and its replicas (docs/routing.md)."""

    fallbacks: list[str] = Field(default_factory=list)
    """Names of other chat entries tried, in order, when this one cannot take a call (none of
    its replicas fits the prompt, or all failed or have open breakers)."""

    routing: RoutingConfig = Field(default_factory=lambda: RoutingConfig())
    """The router's settings, where ``replicas`` or ``fallbacks`` are given."""

    @model_validator(mode="after")
    def _spec(self) -> ModelConfig:
        from langchain_multillm.loader import COMPLETION_PROVIDERS, PROVIDERS

        table = PROVIDERS if self.kind == "chat" else COMPLETION_PROVIDERS
        provider, sep, _ = self.model.partition(":")
        if not sep or provider not in table:
            what = "a chat" if self.kind == "chat" else "a completion"
            raise ValueError(
                f"model: must be 'provider:model' with provider one of "
                f"{', '.join(sorted(table))} ({what} model)"
            )
        if self.kind != "chat" and (self.replicas or self.fallbacks):
            raise ValueError("replicas, fallbacks: only chat models are routed")
        return self


class ReplicaConfig(BaseModel):
    """One entry of a model's ``replicas:``: a ``load_chat_model`` spec and its params."""

    model_config = _STRICT

    model: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict, repr=False)

    @model_validator(mode="after")
    def _spec(self) -> ReplicaConfig:
        from langchain_multillm.loader import PROVIDERS

        provider, sep, _ = self.model.partition(":")
        if not sep or provider not in PROVIDERS:
            raise ValueError(
                f"model: must be 'provider:model' with provider one of "
                f"{', '.join(sorted(PROVIDERS))} (a chat model)"
            )
        return self


class RoutingConfig(BaseModel):
    """A routed model's ``routing:`` (``ChatRouter``'s settings)."""

    model_config = _STRICT

    strategy: Literal["least_busy", "round_robin", "weighted", "ordered"] = "least_busy"
    """How the model and its replicas are chosen; fallbacks always come after, in order."""

    weights: list[float] | None = None
    """For ``weighted``: one per deployment (the model first, then the replicas)."""

    failure_threshold: int = Field(default=3, ge=1, le=1000)
    """Consecutive retryable failures that open a deployment's breaker."""

    cooldown_s: float = Field(default=30.0, gt=0, le=86_400)
    """Seconds an open breaker passes its deployment over before a health check."""


_BROKER_SCHEMES = ("redis://", "rediss://", "unix://")


class JobsSettings(BaseModel):
    """The ``jobs:`` section: service jobs on Celery with Redis as broker and result store,
    run by ``multillm worker`` processes. Without it, jobs run inside the gateway process."""

    model_config = _STRICT

    broker: SecretStr
    """``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``): Celery's broker and
    the store of job statuses, progress and results."""

    queue: str = Field(default="multillm-jobs", min_length=1, max_length=200, pattern=r"^[\w.:-]+$")
    """The Celery queue (and Redis key prefix) the gateway and its workers share."""

    result_ttl_s: int = Field(default=86_400, ge=1)
    """Seconds a finished job's status and result stay in Redis; after that its id is unknown."""

    visibility_timeout_s: float = Field(default=3600, ge=2)
    """Seconds after which a job a worker took but did not finish (the worker died) goes to
    another worker: the broker's visibility timeout. Every job's time limit stays below it."""

    restore_interval_s: float = Field(default=10, gt=0)
    """How often each worker looks for the jobs of dead workers past the visibility timeout."""

    time_limit_s: float | None = Field(default=None, gt=0)
    """The most one job may run (each job's own limit comes from its flavor's budgets, capped
    by this); default and maximum: 90% of the visibility timeout."""

    lease_s: float | None = Field(default=None, ge=1)
    """Seconds a worker's claim on a job, and on a model slot (``max_concurrency`` holds across
    workers), lasts unless renewed: what a dead worker holds frees after this. Default: 30, or a
    third of the visibility timeout if that is less."""

    min_tokens_per_s: float = Field(default=2.0, gt=0)
    """The slowest generation expected: a job's time limit is its calls (one, or a summary's
    batches and reductions) times 30 s plus its flavor's ``maxGenerationLength`` at this rate,
    capped by ``time_limit_s``."""

    max_attempts: int = Field(default=3, ge=1, le=100)
    """Starts of one job (its worker lost mid-job) before it is an error."""

    concurrency: int = Field(default=1, ge=1, le=256)
    """Jobs one ``multillm worker`` runs at once, each in its own process (``--concurrency``)."""

    @field_validator("broker")
    @classmethod
    def _scheme(cls, url: SecretStr) -> SecretStr:
        if not url.get_secret_value().startswith(_BROKER_SCHEMES):
            raise ValueError(f"must be a Redis URL starting with {', '.join(_BROKER_SCHEMES)}")
        return url

    @model_validator(mode="after")
    def _limits(self) -> JobsSettings:
        cap = 0.9 * self.visibility_timeout_s
        if self.time_limit_s is not None and self.time_limit_s > cap:
            raise ValueError(
                f"time_limit_s: {self.time_limit_s:g} must be at most 90% of "
                f"visibility_timeout_s ({cap:g}): a job still running past the visibility "
                "timeout would be given to a second worker"
            )
        if self.lease_s is not None and self.lease_s >= self.visibility_timeout_s:
            raise ValueError(
                f"lease_s: {self.lease_s:g} must be below visibility_timeout_s "
                f"({self.visibility_timeout_s:g})"
            )
        return self

    @property
    def job_time_limit_s(self) -> float:
        """The most one job may run: ``time_limit_s``, or 90% of the visibility timeout."""
        return self.time_limit_s or 0.9 * self.visibility_timeout_s

    @property
    def claim_lease_s(self) -> float:
        """Seconds a claim lasts unless renewed: ``lease_s``, else 30 or a third of the
        visibility timeout if that is less."""
        return self.lease_s or min(30.0, self.visibility_timeout_s / 3)


class ServicesSettings(BaseModel):
    """The ``services:`` section: a folder of service files and one of prompt templates, in the
    replaced gateway's shapes (docs/services.md); paths relative to the config file."""

    model_config = _STRICT

    dir: str = Field(default="services", min_length=1)
    """The folder of service files (``*.yaml`` / ``*.yml``), checked for changes while serving."""

    prompts: str = Field(default="prompts", min_length=1)
    """The folder of prompt templates (``NAME.txt``)."""

    reload_s: float = Field(default=1.0, gt=0, le=60)
    """How often each process checks the files for changes (a change takes effect within it)."""

    concurrency: int = Field(default=4, ge=1, le=10_000)
    """Jobs run at once in the gateway process when there is no ``jobs:`` section."""

    result_ttl_s: float = Field(default=3600, ge=1)
    """Seconds a finished job's result is kept in the gateway process (no ``jobs:``)."""

    def relative_to(self, base: Path) -> ServicesSettings:
        """A copy with the folders made absolute from ``base`` (the config file's folder)."""
        return self.model_copy(
            update={"dir": str(base / self.dir), "prompts": str(base / self.prompts)}
        )


_CACHE_SCHEMES = ("redis://", "rediss://", "unix://")


class CacheSettings(BaseModel):
    """The ``cache:`` section: the response cache on Redis (``server/cache.py``). Requests with
    temperature 0 or a seed are answered from it when the same request was answered before."""

    model_config = _STRICT

    redis: SecretStr
    """``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``)."""

    ttl: int = Field(default=3600, ge=1)
    """Seconds an answer stays cached."""

    prefix: str = Field(
        default="multillm:cache", min_length=1, max_length=200, pattern=r"^[\w.:-]+$"
    )
    """Prefix of the cache's Redis keys."""

    timeout_s: float = Field(default=0.5, gt=0, le=30)
    """Most seconds one Redis command may take; past it the request is answered by the model."""

    retry_s: float = Field(default=5.0, ge=0)
    """After Redis failed, seconds before it is tried again (meanwhile: answered by the models)."""

    @field_validator("redis")
    @classmethod
    def _cache_scheme(cls, url: SecretStr) -> SecretStr:
        if not url.get_secret_value().startswith(_CACHE_SCHEMES):
            raise ValueError(f"must be a Redis URL starting with {', '.join(_CACHE_SCHEMES)}")
        return url

    @property
    def secrets(self) -> set[str]:
        """The URL and its password (never shown)."""
        from urllib.parse import urlsplit

        url = self.redis.get_secret_value()
        try:
            password = urlsplit(url).password
        except ValueError:
            return {url}
        return {url, password} if password else {url}


class ServeConfig(BaseModel):
    """The whole file: ``server:`` and ``models:``."""

    model_config = _STRICT

    server: ServerSettings = Field(default_factory=ServerSettings)
    models: list[ModelConfig] = Field(min_length=1)
    jobs: JobsSettings | None = None
    """Jobs on Celery and Redis (``multillm worker``); None: jobs run in the gateway process."""
    cache: CacheSettings | None = None
    """The response cache on Redis; None: no cache."""
    services: ServicesSettings | None = None
    """Named services (``POST /services/{route}/generate``): their files and templates."""

    _secrets: set[str] = PrivateAttr(default_factory=set)

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise ValueError(
                    f"models[{i}].name: {m.name!r} is already the name of models[{seen[m.name]}]; "
                    "names must be unique"
                )
            seen[m.name] = i
        for i, m in enumerate(self.models):
            for j, name in enumerate(m.fallbacks):
                k = seen.get(name)
                if k is None or k == i or self.models[k].kind != "chat":
                    raise ValueError(
                        f"models[{i}].fallbacks[{j}]: {name!r} must be the name of another "
                        "chat model of models"
                    )
        check_bind(self.server.host, self.server.api_keys)
        return self

    @property
    def secrets(self) -> set[str]:
        """Values that must never be shown: the gateway's keys and interpolated secrets."""
        out = self._secrets | {k.get_secret_value() for k in self.server.api_keys}
        if self.jobs is not None:
            out |= url_secrets(self.jobs.broker.get_secret_value())
        if self.cache is not None:
            out |= self.cache.secrets
        return out

    def redact(self, text: str) -> str:
        """``text`` with every secret of this config replaced."""
        return redact(text, self.secrets)

    def with_overrides(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        workers: int | None = None,
        allocator: str | None = None,
    ) -> ServeConfig:
        """A copy with command-line overrides, checked again (a public bind needs keys)."""
        server = self.server.model_dump()
        overrides = (("host", host), ("port", port), ("workers", workers), ("allocator", allocator))
        for key, value in overrides:
            if value is not None:
                server[key] = value
        data = {**self.model_dump(), "server": server}  # every section carried
        return _validate(data, self.secrets)


def url_secrets(url: str) -> set[str]:
    """The password (and the whole URL) of a URL that holds one, to be redacted."""
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return {url}
    return {url, password} if password else set()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_keys: list[SecretStr]) -> None:
    """Refuse a bind beyond loopback without keys (anyone on the network could use it)."""
    if not api_keys and not is_loopback(host):
        raise ValueError(
            f"server.host: binding {host!r} (not a loopback address) needs server.api_keys "
            "(or MULTILLM_API_KEY); without keys only 127.0.0.1, ::1 or localhost is allowed"
        )


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, str(part))
    return out


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The keys allowed where an unknown key was found."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        is_model = isinstance(current, type) and issubclass(current, BaseModel)
        field = current.model_fields.get(str(part)) if is_model else None
        if field is None:
            return ""
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if current is None:
            return ""
    if isinstance(current, type) and issubclass(current, BaseModel):
        return ", ".join(current.model_fields)
    return ""


_NAMED = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)


def _one_error(exc: ValidationError, secrets: Iterable[str]) -> ConfigError:
    """The first problem of a validation error, as one line naming the key path."""
    e = exc.errors(include_url=False, include_input=False)[0]
    path = _loc(tuple(e["loc"]))
    msg = str(e["msg"]).removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        allowed = _allowed(ServeConfig, tuple(e["loc"]))
        msg = f"unknown key; allowed: {allowed}" if allowed else "unknown key"
    elif e["type"] == "missing":
        msg = "is required"
    named = _NAMED.match(msg)
    if named:  # a check across fields names its own key path
        path, msg = _join(path, named.group(1)), named.group(2)
    return ConfigError(path or "config", redact(msg, secrets))


def _validate(data: Any, secrets: set[str]) -> ServeConfig:
    if not isinstance(data, dict):
        raise ConfigError("config", "must be a mapping with 'server' and 'models'")
    try:
        config = ServeConfig.model_validate(data)
    except ValidationError as exc:
        raise _one_error(exc, secrets) from None
    config._secrets = set(secrets) | _param_secrets(config)
    return config


def _param_secrets(config: ServeConfig) -> set[str]:
    """String values of model params whose key says key, secret, token or password."""
    out: set[str] = set()

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and value and _SECRET_NAME.search(key):
            out.add(value)

    for m in config.models:
        walk(m.params)
        for replica in m.replicas:
            walk(replica.params)
    return out


def yaml_problem(exc: Exception) -> str:
    """What a YAML parser's error says, and where (``... at line L, column C``)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(exc, 'problem', None) or 'not valid YAML'}{where}"


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> ServeConfig:
    """Read, interpolate and check a YAML config file; :class:`ConfigError` if it is wrong."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"{p.name}: {yaml_problem(exc)}") from None
    secrets: set[str] = set()
    data = interpolate(raw, environ, secrets=secrets)
    config = _validate(data, secrets)
    if config.services is not None:  # its folders are relative to the file
        config.services = config.services.relative_to(p.resolve().parent)
    return config


# ------------------------------------------------------------------ the environment

# The replaced microservice's LLM_MODEL_SERVER values, and what serves them here: its endpoint
# (LLM_MODEL_SERVER_ENDPOINT) is a server's root, and an OpenAI-compatible server's API is under
# /v1 of it. Any provider of load_chat_model is taken by its own name too.
MODEL_SERVERS: dict[str, tuple[str, str]] = {
    "vllm": ("vllm-server", "/v1"),
    "tgi": ("tgi", ""),
    "llamacpp": ("vllm-server", "/v1"),  # llama.cpp's server speaks the OpenAI API
    "ollama": ("vllm-server", "/v1"),
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, f"must be true or false (1/0, yes/no, on/off); got {value!r}")


def config_from_env(environ: Mapping[str, str] | None = None) -> ServeConfig:
    """One model from the replaced microservice's variables, or the embedded model.

    ``LLM_MODEL_SERVER`` (vllm, tgi, llamacpp, ollama, or a ``load_chat_model`` provider) with
    ``LLM_MODEL_SERVER_ENDPOINT`` (the server's root) and ``LLM_MODEL_NAME`` pick the model; its
    key, OAuth2 client credentials and TLS setting are read by the model itself
    (``LLM_VLLM_API_KEY``, ``LLM_VLLM_CLIENT_ID`` / ``_SECRET``, ``LLM_VLLM_TOKEN_URL``,
    ``LLM_TLS_SKIP_VERIFY``). ``LLM_USVC_PORT`` is the port, ``LLM_DISABLE_STREAMING`` and
    ``LLM_OUTPUT_GUARD_EXISTS`` the stream settings, ``MULTILLM_API_KEY`` the gateway's keys
    (comma-separated). With no ``LLM_MODEL_SERVER`` and no endpoint: the embedded model
    (``llamacpp:``), served as ``LLM_MODEL_NAME`` or ``smollm2``.
    """
    from langchain_multillm.loader import PROVIDERS

    env = os.environ if environ is None else environ
    server_kind = env.get("LLM_MODEL_SERVER", "").strip().lower()
    endpoint = env.get("LLM_MODEL_SERVER_ENDPOINT", "").strip()
    name = env.get("LLM_MODEL_NAME", "").strip()
    params: dict[str, Any] = {}
    if not server_kind and not endpoint:
        spec = "llamacpp:"
        served = name or "smollm2"
    else:
        if not server_kind:
            raise ConfigError(
                "LLM_MODEL_SERVER",
                "is required with LLM_MODEL_SERVER_ENDPOINT; one of "
                f"{', '.join(sorted({*MODEL_SERVERS, *PROVIDERS}))}",
            )
        if server_kind in MODEL_SERVERS:
            provider, api_path = MODEL_SERVERS[server_kind]
        elif server_kind in PROVIDERS:
            provider, api_path = server_kind, ""
        else:
            raise ConfigError(
                "LLM_MODEL_SERVER",
                f"must be one of {', '.join(sorted({*MODEL_SERVERS, *PROVIDERS}))}; "
                f"got {server_kind!r}",
            )
        if endpoint:
            params["base_url"] = with_api_path(endpoint, api_path)
        spec = f"{provider}:{name}"
        served = name or provider
    keys = [k.strip() for k in env.get("MULTILLM_API_KEY", "").split(",") if k.strip()]
    port = env.get("LLM_USVC_PORT", "").strip()
    server: dict[str, Any] = {
        "api_keys": keys,
        "disable_streaming": _flag(env, "LLM_DISABLE_STREAMING"),
        "output_guard": _flag(env, "LLM_OUTPUT_GUARD_EXISTS"),
    }
    if port:
        server["port"] = port
    allocator = env.get("MULTILLM_ALLOCATOR", "").strip()
    if allocator:
        server["allocator"] = allocator
    data = {"server": server, "models": [{"name": served, "model": spec, "params": params}]}
    try:
        return _validate(data, set(keys))
    except ConfigError as exc:
        names = {"server.port": "LLM_USVC_PORT", "server.allocator": "MULTILLM_ALLOCATOR"}
        field = names.get(exc.field, exc.field)
        raise ConfigError(field, exc.problem) from None
