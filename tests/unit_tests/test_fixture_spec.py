"""The protocol fixtures' one spec validator (tests/fixtures/core/spec.py), over the three
OpenAPI specs the fixtures answer to, each patched as its fixture patches it: what the spec
allows passes, an unknown field or a wrong type fails (objects closed, ``allOf`` closed once)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("jsonschema")

from tests.fixtures import azure_server, deepseek_server, tgi_server
from tests.fixtures.core.spec import SpecValidator


@pytest.fixture(scope="module")
def tgi() -> SpecValidator:
    return SpecValidator(tgi_server.DEFAULT_SPEC, patch=tgi_server._patch_spec)


@pytest.fixture(scope="module")
def azure() -> SpecValidator:
    return SpecValidator(azure_server.DEFAULT_SPEC, patch=azure_server._patch_spec)


@pytest.fixture(scope="module")
def openai() -> SpecValidator:
    return SpecValidator(deepseek_server.DEFAULT_SPEC, patch=deepseek_server.deepseek_additions)


def keywords(spec: SpecValidator, name: str, instance: Any) -> set[str]:
    return {p.keyword for p in spec.problems(name, instance)}


def test_tgi_messages_close_once_at_their_allof(tgi: SpecValidator) -> None:
    # Message = allOf[MessageBody, {role, name}]: the fields of both members pass, others fail.
    body = {"messages": [{"role": "user", "content": "hi", "name": "a"}], "max_tokens": 4}
    assert tgi.problems("ChatRequest", body) == []
    odd = {"messages": [{"role": "user", "content": "hi", "colour": "red"}]}
    problems = tgi.problems("ChatRequest", odd)
    assert problems and problems[0].path == "messages[0]"
    assert "colour" in problems[0].message
    assert keywords(tgi, "ChatRequest", {**body, "max_tokens": "4"}) == {"type"}


def test_tgi_patch_takes_the_servers_side(tgi: SpecValidator) -> None:
    chunk = {
        "object": "chat.completion.chunk",
        "id": "",
        "created": 1,
        "model": "m",
        "system_fingerprint": "f",
        "choices": [],
        "usage": None,
    }
    assert tgi.problems("ChatCompletionChunk", chunk) == []
    assert tgi.problems("ChatCompletionChunk", {**chunk, "object": "x"})


def test_openai_nested_allof_and_unknown_fields(openai: SpecValidator) -> None:
    # CreateChatCompletionRequest nests allOf three deep: fields from every level pass.
    body = {
        "model": "deepseek-chat",
        "messages": [{"role": "assistant", "content": "a", "reasoning_content": "r"}],
        "temperature": 0.5,
        "user": "u",
    }
    assert openai.problems("CreateChatCompletionRequest", body) == []
    problems = openai.problems("CreateChatCompletionRequest", {**body, "bogus": 1})
    assert [p.keyword for p in problems] == ["unevaluatedProperties"]
    # A bad field inside a message names that field, not the oneOf around the messages.
    bad = {**body, "messages": [{"role": "user", "content": "a", "colour": 1}]}
    assert openai.problems("CreateChatCompletionRequest", bad)[0].path == "messages[0]"


def test_azure_properties_beside_an_allof(azure: SpecValidator) -> None:
    # error = allOf[errorBase] + param/type/inner_error: errorBase's and its own fields pass.
    error = {"error": {"code": "c", "message": "m", "param": "p", "type": "t"}}
    assert azure.problems("errorResponse", error) == []
    assert azure.problems("errorResponse", {"error": {**error["error"], "bogus": 1}})


def test_azure_allof_members_stay_closed_where_used_alone(azure: SpecValidator) -> None:
    results = {
        "hate": {"filtered": False, "severity": "safe"},
        "jailbreak": {"filtered": False, "detected": False},
    }
    assert azure.problems("contentFilterPromptResults", results) == []
    odd = {**results, "jailbreak": {"filtered": False, "detected": False, "bogus": 1}}
    assert azure.problems("contentFilterPromptResults", odd)


def test_azure_polymorphic_bases_mean_one_of_their_kinds(azure: SpecValidator) -> None:
    source = {
        "type": "azure_search",
        "parameters": {
            "endpoint": "https://search.invalid",
            "index_name": "i",
            "authentication": {"type": "api_key", "key": "k"},
        },
    }
    body = {"messages": [{"role": "user", "content": "x"}], "data_sources": [source]}
    assert azure.problems("createChatCompletionRequest", body) == []
    wrong = {**source, "parameters": {**source["parameters"], "index_name": 3}}
    assert azure.problems("createChatCompletionRequest", {**body, "data_sources": [wrong]})
