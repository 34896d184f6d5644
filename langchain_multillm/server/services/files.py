"""Service files and prompt templates, in the replaced gateway's (LinTO llm-gateway) shapes.

A service file is YAML: one or more services, each under its route::

    summarize/en:
      type: summary            # summary | chat | rag
      fields: 2                # summary: 2 = batch after batch, the last lines carried forward
      name: summarize-en       # the template is prompts/summarize-en.txt
      route: summarize/en      # optional: the key above
      description: {fr: English summary}
      flavor:
        - name: llama
          modelName: smollm2   # a model of the gateway config, or a load_chat_model spec
          ...

A template is text with ``{}`` positional placeholders (as that gateway used) and/or named ones
(``{text}``); ``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from langchain_multillm.errors import InvalidInputError
from langchain_multillm.server.config import yaml_problem

__all__ = [
    "FlavorSpec",
    "ServiceFileError",
    "ServiceSpec",
    "Template",
    "parse_service_file",
    "parse_template",
]


class ServiceFileError(InvalidInputError):
    """A service file or template that cannot be loaded; ``field`` is the file and key path."""


_STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True)


class FlavorSpec(BaseModel):
    """One flavor: a model and its budgets (the replaced gateway's keys)."""

    model_config = _STRICT

    name: str = Field(min_length=1)
    modelName: str = Field(min_length=1)  # a gateway model name, or a load_chat_model spec
    totalContextLength: int | None = Field(default=None, gt=0)
    maxGenerationLength: int = Field(default=256, gt=0)
    tokenizerClass: str | None = None  # accepted and ignored: the model's own tokenizer counts
    createNewTurnAfter: int = Field(default=250, gt=0)
    summaryTurns: int = Field(default=3, ge=0)
    maxNewTurns: int = Field(default=9, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    reduceSummary: bool = False
    consolidateSummary: bool = False
    reduce_prompt: str | None = None
    type: Literal["abstractive", "extractive", "markdown"] = "abstractive"


_ROUTE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


class ServiceSpec(BaseModel):
    """One service of a file."""

    model_config = _STRICT

    type: Literal["summary", "chat", "rag"]
    fields: int = Field(default=1, ge=1, le=2)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    route: str | None = None
    description: dict[str, str] | str | None = None
    backend: str | None = None  # the replaced gateway's; accepted and ignored
    flavor: list[FlavorSpec] = Field(min_length=1)

    @field_validator("route")
    @classmethod
    def _route(cls, route: str | None) -> str | None:
        if route is not None and not _ROUTE.match(route):
            raise ValueError(
                "must be path segments of letters, digits, '_', '.', '-' joined by '/' "
                f"(no leading '/'); got {route!r}"
            )
        return route

    @field_validator("flavor")
    @classmethod
    def _unique(cls, flavors: list[FlavorSpec]) -> list[FlavorSpec]:
        seen: set[str] = set()
        for i, f in enumerate(flavors):
            if f.name in seen:
                raise ValueError(f"[{i}].name: {f.name!r} is already a flavor of this service")
            seen.add(f.name)
        return flavors


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def _loc(loc: Sequence[Any]) -> str:
    """A pydantic location as a key path, without the union members pydantic names."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in _TYPE_TAGS or "[" in str(part):
            continue
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _one_error(exc: ValidationError, where: str) -> ServiceFileError:
    e = exc.errors(include_url=False, include_input=False)[0]
    path = _loc(e["loc"])
    msg = str(e["msg"]).removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        parent = e["loc"][:-1]
        model: type[BaseModel] = FlavorSpec if "flavor" in parent else ServiceSpec
        msg = f"unknown key; allowed: {', '.join(model.model_fields)}"
    elif e["type"] == "missing":
        msg = "is required"
    if msg.startswith("[") and "]." in msg:  # a check on a list names its own item
        idx, _, msg = msg.partition(": ")
        path += idx
    return ServiceFileError(f"{where}: {path}" if path else where, msg)


def parse_service_file(path: Path) -> dict[str, ServiceSpec]:
    """The services of one file by route; :class:`ServiceFileError` naming the key path."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServiceFileError(path.name, f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ServiceFileError(path.name, yaml_problem(exc)) from None
    if not isinstance(raw, dict) or not raw:
        raise ServiceFileError(path.name, "must be a mapping of route: service")
    out: dict[str, ServiceSpec] = {}
    for key, body in raw.items():
        where = f"{path.name}: {key}"
        if not isinstance(body, dict):
            raise ServiceFileError(where, "must be a mapping (type, name, flavor, ...)")
        try:
            spec = ServiceSpec.model_validate(body)
        except ValidationError as exc:
            raise _one_error(exc, where) from None
        route = spec.route or str(key)
        if not _ROUTE.match(route):
            raise ServiceFileError(
                where, f"the key is the route when 'route' is unset, and {route!r} is not one"
            )
        if route in out:
            raise ServiceFileError(where, f"route {route!r} is already a service of this file")
        out[route] = spec.model_copy(update={"route": route})
    return out


# ------------------------------------------------------------------ templates

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Template:
    """A prompt template: ``{}`` positional placeholders and named ones."""

    text: str
    parts: tuple[tuple[str, str | int | None], ...]
    """Literal text, then the placeholder after it (an index, a name, or None at the end)."""

    @property
    def positional(self) -> int:
        """How many positional values it takes."""
        idx = [p for _, p in self.parts if isinstance(p, int)]
        return max(idx) + 1 if idx else 0

    @property
    def named(self) -> set[str]:
        """The named placeholders."""
        return {p for _, p in self.parts if isinstance(p, str)}

    def render(self, positional: Sequence[str], named: dict[str, str]) -> str:
        """The text with its placeholders filled (missing values: empty)."""
        out = []
        for literal, field in self.parts:
            out.append(literal)
            if isinstance(field, int):
                out.append(positional[field] if field < len(positional) else "")
            elif isinstance(field, str):
                out.append(named.get(field, ""))
        return "".join(out)

    def as_fstring(self, names: Sequence[str]) -> str:
        """The template as a LangChain f-string, positional ``i`` named ``names[i]``."""
        out = []
        for literal, field in self.parts:
            out.append(literal.replace("{", "{{").replace("}", "}}"))
            if isinstance(field, int):
                out.append("{" + names[field] + "}")
            elif isinstance(field, str):
                out.append("{" + field + "}")
        return "".join(out)


def parse_template(text: str, where: str) -> Template:
    """``text`` as a :class:`Template`; :class:`ServiceFileError` (field ``where``) if wrong."""
    parts: list[tuple[str, str | int | None]] = []
    auto = 0
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ServiceFileError(where, f"{exc} (write {{{{ and }}}} for literal braces)") from None
    for literal, field, spec, conversion in parsed:
        if field is None:
            parts.append((literal, None))
            continue
        if spec or conversion:
            raise ServiceFileError(
                where, f"placeholder {{{field}}} has a format or conversion; only {{}} or {{name}}"
            )
        if field == "":
            parts.append((literal, auto))
            auto += 1
        elif field.isdigit():
            parts.append((literal, int(field)))
        elif _NAME.match(field):
            parts.append((literal, field))
        else:
            raise ServiceFileError(
                where, f"placeholder {{{field}}} is not {{}}, {{N}} or {{name}} (write {{{{ }}}})"
            )
    return Template(text, tuple(parts))
