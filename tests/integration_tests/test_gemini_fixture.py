"""The Gemini protocol fixture itself (tests/fixtures/gemini_server.py), with plain httpx: the
key rules, Google's error shapes, the input/output limits, requests either validator refuses,
the stream shapes (SSE and JSON array), countTokens agreeing with usage, tools and JSON, the
control routes; and nothing the fixture serves breaks google-genai's types or the protos (the
violations list stays empty after every test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import peers

pytestmark = [pytest.mark.gemini, pytest.mark.timeout(300)]

KEY = {"x-goog-api-key": peers.GEMINI_FIXTURE_KEY}
M = "/v1beta/models/gemini-2.5-flash"
WEATHER = {
    "functionDeclarations": [
        {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parametersJsonSchema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
}


@pytest.fixture(scope="module")
def client(gemini_server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gemini_server_url, timeout=120, headers=KEY) as c:
        yield c


@pytest.fixture(autouse=True)
def _clean_fixture(client: httpx.Client) -> Iterator[None]:
    client.post("/__fixture__/reset")
    yield
    client.post("/__fixture__/reset")
    assert client.get("/__fixture__/violations").json() == []


def ask(text: str, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    body["generationConfig"] = {"temperature": 0, **config}
    return body


def error_of(response: httpx.Response, code: int, status: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status and error["message"]
    assert set(error) <= {"code", "message", "status", "details"}
    return error


def sse(response: httpx.Response) -> list[dict[str, Any]]:
    out = []
    for line in response.text.split("\r\n"):
        if line:
            assert line.startswith("data: "), line
            out.append(json.loads(line[len("data: ") :]))
    return out


def test_the_key(client: httpx.Client) -> None:
    assert client.get(M).json()["inputTokenLimit"] == 1536
    error_of(client.get(M, headers={"x-goog-api-key": ""}), 403, "PERMISSION_DENIED")
    wrong = error_of(
        client.get(M, headers={"x-goog-api-key": "sk-not-google"}), 400, "INVALID_ARGUMENT"
    )
    assert wrong["message"] == "API key not valid. Please pass a valid API key."
    assert wrong["details"][0]["reason"] == "API_KEY_INVALID"
    with httpx.Client(base_url=str(client.base_url)) as bare:
        by_query = bare.get(M, params={"key": peers.GEMINI_FIXTURE_KEY})
        assert by_query.status_code == 200
    (logged, *_) = [r for r in client.get("/__fixture__/requests").json() if r["query"] == ""]
    assert logged["has_key"] and "x-goog-api-key" not in logged["headers"]
    assert peers.GEMINI_FIXTURE_KEY not in json.dumps(client.get("/__fixture__/requests").json())


def test_model_card_and_unknown_model(client: httpx.Client) -> None:
    card = client.get(M).json()
    assert card["name"] == "models/gemini-2.5-flash"
    assert (card["inputTokenLimit"], card["outputTokenLimit"]) == (1536, 512)
    assert "generateContent" in card["supportedGenerationMethods"]
    error = error_of(client.get("/v1beta/models/gemini-9"), 404, "NOT_FOUND")
    assert "models/gemini-9 is not found" in error["message"]
    error_of(
        client.post("/v1beta/models/gemini-9:generateContent", json=ask("Hi")), 404, "NOT_FOUND"
    )


def test_generate_content_usage_and_count_tokens_agree(client: httpx.Client) -> None:
    body = ask("Name one colour.", maxOutputTokens=8)
    body["systemInstruction"] = {"parts": [{"text": "Answer in one word."}]}
    answer = client.post(f"{M}:generateContent", json=body).json()
    (cand,) = answer["candidates"]
    assert cand["content"]["role"] == "model" and cand["content"]["parts"][0]["text"]
    assert cand["finishReason"] in ("STOP", "MAX_TOKENS")
    usage = answer["usageMetadata"]
    assert 0 < usage["candidatesTokenCount"] <= 8
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    counted = client.post(
        f"{M}:countTokens",
        json={"generateContentRequest": {"model": "models/gemini-2.5-flash", **body}},
    ).json()
    assert counted["totalTokens"] == usage["promptTokenCount"]
    no_model = client.post(f"{M}:countTokens", json={"generateContentRequest": body})
    assert "models/gemini-2.5-flash" in error_of(no_model, 400, "INVALID_ARGUMENT")["message"]
    plain = client.post(f"{M}:countTokens", json={"contents": body["contents"]}).json()
    # without the system instruction (SmolLM2's template then adds its default one)
    assert plain["totalTokens"] != counted["totalTokens"]


def test_stream_sse_and_json_array_agree_with_the_whole(client: httpx.Client) -> None:
    body = ask("Name one colour.", maxOutputTokens=8)
    whole = client.post(f"{M}:generateContent", json=body).json()
    text = whole["candidates"][0]["content"]["parts"][0]["text"]
    streamed = client.post(f"{M}:streamGenerateContent", params={"alt": "sse"}, json=body)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = sse(streamed)
    assert len(chunks) > 1 and len({c["responseId"] for c in chunks}) == 1
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == text
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == whole["candidates"][0]["finishReason"]
    assert chunks[-1]["usageMetadata"] == whole["usageMetadata"]
    array = client.post(f"{M}:streamGenerateContent", json=body).json()
    assert isinstance(array, list) and array[-1]["usageMetadata"] == whole["usageMetadata"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (ask("Hi", maxOutputTokens=513), "max_output_tokens (513) is out of range"),
        (ask("Hi", temperature=2.5), "temperature"),
        (ask("Hi", topP=0), "top_p"),
        (ask("Hi", stopSequences=["a", "b", "c", "d", "e", "f"]), "at most 5"),
        (ask("Hi", candidateCount=2), "Only one candidate"),
        (
            {**ask("Hi"), "generationConfig": {"maxOutputTokens": 4, "frobnicate": 1}},
            "Unknown name \"frobnicate\" at 'generation_config': Cannot find field.",
        ),
        (
            {"contents": [{"role": "user", "parts": [{"text": "Hi", "x": 1}]}]},
            "Unknown name \"x\" at 'contents.parts': Cannot find field.",
        ),
        (
            {**ask("Hi"), "safetySettings": [{"category": "HARM_X", "threshold": "BLOCK_NONE"}]},
            "safetySettings[0].category",
        ),
        (
            {**ask("Hi"), "generationConfig": {"routingConfig": {}}},
            'Unknown name "routingConfig"',  # a Vertex-only field the SDK's types carry
        ),
        ({"contents": [{"role": "system", "parts": [{"text": "Hi"}]}]}, "valid role"),
        ({"generationConfig": {}}, "contents is not specified"),
        (
            {
                **ask("Hi"),
                "tools": [WEATHER],
                "toolConfig": {
                    "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["nope"]}
                },
            },
            "not declared",
        ),
    ],
)
def test_refused_requests_are_invalid_argument(
    client: httpx.Client, body: dict[str, Any], needle: str
) -> None:
    error = error_of(client.post(f"{M}:generateContent", json=body), 400, "INVALID_ARGUMENT")
    assert needle in error["message"]
    log = client.get("/__fixture__/requests").json()
    assert log[-1]["refused"]["status"] == 400


def test_not_json_is_invalid_argument(client: httpx.Client) -> None:
    bad = client.post(f"{M}:generateContent", content=b'{"contents": ')
    assert error_of(bad, 400, "INVALID_ARGUMENT")["message"].startswith("Invalid JSON payload")


def test_the_input_token_limit(client: httpx.Client) -> None:
    error = error_of(
        client.post(f"{M}:generateContent", json=ask("hello " * 1600)), 400, "INVALID_ARGUMENT"
    )
    assert error["message"].startswith("The input token count (")
    assert error["message"].endswith("exceeds the maximum number of tokens allowed (1536).")
    # countTokens still counts a prompt over the limit (as Gemini's does)
    n = client.post(f"{M}:countTokens", json={"contents": ask("hello " * 1600)["contents"]})
    assert n.json()["totalTokens"] > 1536


def test_function_calls(client: httpx.Client) -> None:
    body = {
        **ask("What is the weather in Paris?", maxOutputTokens=40),
        "tools": [WEATHER],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }
    answer = client.post(f"{M}:generateContent", json=body).json()
    (part,) = answer["candidates"][0]["content"]["parts"]
    assert part["functionCall"]["name"] == "get_weather"
    assert isinstance(part["functionCall"]["args"]["city"], str)
    assert answer["candidates"][0]["finishReason"] == "STOP"
    chunks = sse(client.post(f"{M}:streamGenerateContent", params={"alt": "sse"}, json=body))
    assert chunks[-1]["candidates"][0]["content"]["parts"] == [part]
    off = {**body, "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}
    parts = client.post(f"{M}:generateContent", json=off).json()["candidates"][0]["content"]
    assert "functionCall" not in parts["parts"][0]


def test_json_schema_output(client: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    body = ask(
        "Give JSON with name and age for Alice, 30.",
        maxOutputTokens=40,
        responseMimeType="application/json",
        responseJsonSchema=schema,
    )
    text = client.post(f"{M}:generateContent", json=body).json()["candidates"][0]["content"]
    value = json.loads(text["parts"][0]["text"])
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)


def test_stop_sequences_are_left_out(client: httpx.Client) -> None:
    body = ask("Count: one, two, three, four", maxOutputTokens=20)
    full = client.post(f"{M}:generateContent", json=body).json()
    text = full["candidates"][0]["content"]["parts"][0]["text"]
    word = text.split()[2]
    body["generationConfig"]["stopSequences"] = [word]
    cut = client.post(f"{M}:generateContent", json=body).json()["candidates"][0]
    assert cut["finishReason"] == "STOP"
    assert cut["content"]["parts"][0]["text"] == text[: text.index(word)]


def test_forced_failures_and_blocks(client: httpx.Client) -> None:
    client.post("/__fixture__/state", json={"fail_next": 2, "fail_status": 429, "retry_delay_s": 3})
    error = error_of(client.post(f"{M}:generateContent", json=ask("Hi")), 429, "RESOURCE_EXHAUSTED")
    retry = [d for d in error["details"] if d["@type"].endswith("RetryInfo")]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]
    error_of(client.get(M), 429, "RESOURCE_EXHAUSTED")
    assert client.get(M).status_code == 200
    for code, status in ((500, "INTERNAL"), (503, "UNAVAILABLE")):
        client.post("/__fixture__/state", json={"fail_next": 1, "fail_status": code})
        error_of(client.post(f"{M}:generateContent", json=ask("Hi")), code, status)
    client.post("/__fixture__/state", json={"block_next": 1})
    blocked = client.post(f"{M}:generateContent", json=ask("Hi", maxOutputTokens=4)).json()
    (cand,) = blocked["candidates"]
    assert cand["finishReason"] == "SAFETY" and "content" not in cand
    assert any(r.get("blocked") for r in cand["safetyRatings"])
    client.post("/__fixture__/state", json={"block_next": 1, "block_mode": "prompt"})
    chunks = sse(client.post(f"{M}:streamGenerateContent", params={"alt": "sse"}, json=ask("Hi")))
    assert chunks == [
        {**chunks[0], "promptFeedback": {**chunks[0]["promptFeedback"], "blockReason": "SAFETY"}}
    ]
    assert "candidates" not in chunks[0]
    assert client.post("/__fixture__/state", json={"fail_status": 404}).status_code == 400
    assert client.post("/__fixture__/state", json={"nope": 1}).status_code == 400
