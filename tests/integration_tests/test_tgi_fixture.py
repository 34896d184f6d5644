"""The TGI protocol fixture itself (tests/fixtures/tgi_server.py), with plain httpx: each route
answers in the spec's shapes, TGI's limits give TGI's statuses and error types, requests the
spec refuses are refused, and nothing the fixture serves breaks the spec (the violations list
stays empty after every test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from langchain_multillm import TGI, ChatTGI
from tests import peers
from tests.conftest import LOG_DIR

pytestmark = [pytest.mark.tgi, pytest.mark.timeout(300)]

Q = "The capital of France is"
GREEDY = {"max_new_tokens": 3, "details": True}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def client(tgi_server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tgi_server_url, timeout=120) as c:
        yield c


@pytest.fixture(autouse=True)
def _clean_fixture(client: httpx.Client) -> Iterator[None]:
    client.post("/__fixture__/reset")
    yield
    client.post("/__fixture__/reset")
    assert client.get("/__fixture__/violations").json() == []


@pytest.fixture(scope="module")
def vocab(gguf_path: str) -> Any:
    """llama.cpp's own tokenizer for the same GGUF (vocabulary only)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)


def events(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of a server-sent-event body; TGI writes JSON events as
    ``data:{...}`` and ends chat streams with the exact line ``data: [DONE]``."""
    out: list[Any] = []
    for line in response.text.splitlines():
        if not line.startswith("data:"):
            assert line == "", line
            continue
        if line == "data: [DONE]":
            out.append("[DONE]")
        else:
            assert line.startswith("data:{"), line
            out.append(json.loads(line[len("data:") :]))
    return out


def error_of(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    return body["error"]


def chat(content: str, **kw: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **kw}


# ---- routes ----


def test_info_gives_the_limits(client: httpx.Client) -> None:
    info = client.get("/info").json()
    assert info["model_id"] == "smollm2"
    assert info["max_input_tokens"] == 1024
    assert info["max_total_tokens"] == 2048
    assert info["max_stop_sequences"] == 4
    assert info["max_concurrent_requests"] == 8
    assert info["version"] == "3.3.6-dev0"
    assert info["router"] == "text-generation-router"


def test_health_is_empty_200_or_503_when_unhealthy(client: httpx.Client) -> None:
    ok = client.get("/health")
    assert ok.status_code == 200
    assert ok.content == b""
    client.post("/__fixture__/state", json={"healthy": False})
    assert error_of(client.get("/health"), 503, "healthcheck") == "unhealthy"


def test_models_is_a_list_as_the_server_answers(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == "smollm2"
    assert model["object"] == "model"
    assert isinstance(model["created"], int)


def test_metrics_is_text(client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "tgi_request_count" in response.text


def test_tokenize_counts_equal_llamas_own(client: httpx.Client, vocab: Any) -> None:
    text = "Hello world, héllo: <|im_start|> tokens & ünïcode."
    tokens = client.post("/tokenize", json={"inputs": text}).json()
    assert [t["id"] for t in tokens] == vocab.tokenize(text.encode(), add_bos=True, special=True)
    assert "".join(t["text"] for t in tokens) == text
    assert all(text[t["start"] : t["stop"]] == t["text"] for t in tokens)


def test_chat_tokenize_is_the_template_and_the_chat_usage(client: httpx.Client, vocab: Any) -> None:
    body = chat("Name one colour.", max_tokens=2, temperature=0)
    out = client.post("/chat_tokenize", json=body).json()
    templated = out["templated_text"]
    assert templated.endswith(
        "<|im_start|>user\nName one colour.<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = [t["id"] for t in out["tokenize_response"]]
    assert ids == vocab.tokenize(templated.encode(), add_bos=False, special=True)
    usage = client.post("/v1/chat/completions", json=body).json()["usage"]
    assert usage["prompt_tokens"] == len(ids)


def test_generate_with_details_stops_at_the_length(client: httpx.Client) -> None:
    response = client.post("/generate", json={"inputs": Q, "parameters": GREEDY})
    assert response.status_code == 200
    body = response.json()
    details = body["details"]
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == 3 == len(details["tokens"])
    assert details["seed"] is None  # greedy
    assert body["generated_text"] == "".join(t["text"] for t in details["tokens"])
    assert response.headers["x-generated-tokens"] == "3"
    plain = client.post("/generate", json={"inputs": Q, "parameters": {"max_new_tokens": 3}})
    assert plain.json() == {"generated_text": body["generated_text"]}


def test_a_stop_sequence_ends_generation_and_stays_in_the_text(client: httpx.Client) -> None:
    params = {"max_new_tokens": 10, "details": True, "stop": [" Paris"]}
    body = client.post("/generate", json={"inputs": Q, "parameters": params}).json()
    assert body["details"]["finish_reason"] == "stop_sequence"
    assert body["generated_text"].endswith(" Paris")


def test_a_grammar_constrains_and_ends_on_the_eos_token(client: httpx.Client) -> None:
    params = {
        "max_new_tokens": 10,
        "details": True,
        "grammar": {"type": "regex", "value": " ?(yes|no)"},
    }
    body = client.post("/generate", json={"inputs": "Is Paris in France?", "parameters": params})
    details = body.json()["details"]
    assert details["finish_reason"] == "eos_token"
    assert details["tokens"][-1]["special"] is True
    assert body.json()["generated_text"].strip() in ("yes", "no")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    params = {"max_new_tokens": 20, "grammar": {"type": "json", "value": schema}}
    text = client.post("/generate", json={"inputs": "JSON:", "parameters": params}).json()
    assert isinstance(json.loads(text["generated_text"])["ok"], bool)


def test_sampling_reports_and_honours_the_seed(client: httpx.Client) -> None:
    params = {"max_new_tokens": 4, "details": True, "do_sample": True, "seed": 42}
    first = client.post("/generate", json={"inputs": Q, "parameters": params}).json()
    again = client.post("/generate", json={"inputs": Q, "parameters": params}).json()
    assert first["details"]["seed"] == 42
    assert first["generated_text"] == again["generated_text"]


def test_top_n_tokens_and_decoder_input_details(client: httpx.Client, vocab: Any) -> None:
    params = {"max_new_tokens": 2, "details": True, "top_n_tokens": 3}
    params["decoder_input_details"] = True
    details = client.post("/generate", json={"inputs": Q, "parameters": params}).json()["details"]
    assert [len(top) for top in details["top_tokens"]] == [3, 3]
    assert [p["id"] for p in details["prefill"]] == vocab.tokenize(Q.encode(), special=True)


def test_generate_stream_events(client: httpx.Client) -> None:
    response = client.post("/generate_stream", json={"inputs": Q, "parameters": GREEDY})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    got = events(response)
    assert [e["index"] for e in got] == [1, 2, 3]
    assert all(e["generated_text"] is None and e["details"] is None for e in got[:-1])
    last = got[-1]
    assert last["generated_text"] == "".join(e["token"]["text"] for e in got)
    assert last["details"]["finish_reason"] == "length"
    assert last["details"]["generated_tokens"] == 3
    n_input = len(client.post("/tokenize", json={"inputs": Q}).json())
    assert last["details"]["input_length"] == n_input
    whole = client.post("/generate", json={"inputs": Q, "parameters": GREEDY}).json()
    assert last["generated_text"] == whole["generated_text"]


def test_compat_route_lists_one_generation_or_streams(client: httpx.Client) -> None:
    body = client.post("/", json={"inputs": Q, "parameters": {"max_new_tokens": 3}}).json()
    assert isinstance(body, list)
    assert len(body) == 1
    # The pipeline tag is text-generation: the compat route returns the prompt too.
    assert body[0]["generated_text"].startswith(Q)
    params = {"max_new_tokens": 3, "return_full_text": False}
    stream = client.post("/", json={"inputs": Q, "parameters": params, "stream": True})
    got = events(stream)
    assert len(got) == 3
    assert got[-1]["generated_text"] == body[0]["generated_text"][len(Q) :]


def test_chat_completion_and_its_stream_agree(client: httpx.Client) -> None:
    body = chat("Name one colour.", max_tokens=6, temperature=0)
    whole = client.post("/v1/chat/completions", json=body).json()
    assert whole["object"] == "chat.completion"
    (choice,) = whole["choices"]
    assert choice["message"]["role"] == "assistant"
    usage = whole["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    got = events(client.post("/v1/chat/completions", json=stream_body))
    assert got[-1] == "[DONE]"
    chunks, usage_chunk = got[:-2], got[-2]
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == usage
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text == choice["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    no_usage = events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    assert all(c["usage"] is None for c in no_usage[:-1])


def test_chat_logprobs(client: httpx.Client) -> None:
    body = chat("Hi", max_tokens=2, temperature=0, logprobs=True, top_logprobs=2)
    logprobs = client.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]
    assert len(logprobs["content"]) == 2
    assert all(len(c["top_logprobs"]) == 2 for c in logprobs["content"])


def test_chat_response_format_json_schema(client: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    fmt = {"type": "json_schema", "value": {"name": "person", "schema": schema}}
    body = chat("Describe a person as JSON.", max_tokens=60, temperature=0, response_format=fmt)
    content = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    person = json.loads(content["content"])
    assert set(person) == {"name", "age"}
    # TGI needs `properties` in a JSON grammar.
    fmt = {"type": "json", "value": {"type": "object"}}
    refused = client.post("/v1/chat/completions", json=chat("x", response_format=fmt))
    assert "Grammar must have a 'properties' field" in error_of(refused, 422, "validation")


def test_chat_tool_call_forced_by_name(client: httpx.Client) -> None:
    body = chat(
        "What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
        temperature=0,
    )
    message = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    got = events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    assert got[-1] == "[DONE]"
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in got[:-1]]
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == call["function"]["arguments"]
    both = {**body, "response_format": {"type": "json", "value": {"properties": {}}}}
    error = error_of(client.post("/v1/chat/completions", json=both), 422, "tool_error")
    assert error == "Tool error: Grammar and tools are mutually exclusive"


# ---- TGI's limits and rules ----


def test_input_over_max_input_tokens_is_422(client: httpx.Client) -> None:
    text = "hello " * 1500
    n = len(client.post("/tokenize", json={"inputs": text}).json())
    expected = f"Input validation error: `inputs` must have less than 1024 tokens. Given: {n}"
    response = client.post("/generate", json={"inputs": text, "parameters": {"max_new_tokens": 5}})
    assert error_of(response, 422, "validation") == expected
    response = client.post("/v1/chat/completions", json=chat(text, max_tokens=5))
    assert "`inputs` must have less than 1024 tokens" in error_of(response, 422, "validation")


def test_input_plus_max_new_tokens_over_max_total_tokens_is_422(client: httpx.Client) -> None:
    text = "hello " * 1000
    n = len(client.post("/tokenize", json={"inputs": text}).json())
    params = {"max_new_tokens": 1100}
    response = client.post("/generate", json={"inputs": text, "parameters": params})
    assert error_of(response, 422, "validation") == (
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. "
        f"Given: {n} `inputs` tokens and 1100 `max_new_tokens`"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"typical_p": 1.5}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
        ({"frequency_penalty": 3}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
        ({"truncate": 0}, "`truncate` must be strictly positive and less than 1024. Given: 0"),
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
    ],
)
def test_bad_parameter_values_are_tgis_422(
    client: httpx.Client, params: dict[str, Any], message: str
) -> None:
    response = client.post("/generate", json={"inputs": "Hi", "parameters": params})
    assert error_of(response, 422, "validation") == f"Input validation error: {message}"


def test_empty_inputs_are_refused(client: httpx.Client) -> None:
    response = client.post("/generate", json={"inputs": ""})
    assert error_of(response, 422, "validation").endswith("`inputs` cannot be empty")


def test_streams_carry_failures_as_events(client: httpx.Client) -> None:
    text = "hello " * 1500
    stream = client.post("/generate_stream", json={"inputs": text})
    assert stream.status_code == 200
    (event,) = events(stream)
    assert event["error_type"] == "validation"
    assert "must have less than 1024 tokens" in event["error"]
    chat_stream = client.post("/v1/chat/completions", json=chat(text, stream=True))
    assert chat_stream.status_code == 200
    error, done = events(chat_stream)
    assert done == "[DONE]"
    assert error["error"]["http_status_code"] == 422
    assert "must have less than 1024 tokens" in error["error"]["message"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/generate", {"inputs": "Hi", "max_new_tokens": 3}),
        ("/generate", {"inputs": "Hi", "parameters": {"max_tokens": 3}}),
        ("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": "3"}}),
        ("/generate", {"inputs": "Hi", "parameters": {"do_sample": None}}),
        ("/generate", {"inputs": "Hi", "parameters": {"stop": "x"}}),
        ("/generate", {"inputs": ["Hi"]}),
        ("/generate_stream", {"inputs": "Hi", "parameters": {"details": "yes"}}),
        ("/tokenize", {"text": "Hi"}),
        ("/", {"inputs": "Hi", "stream": "true"}),
        ("/v1/chat/completions", chat("Hi", max_completion_tokens=3)),
        ("/v1/chat/completions", chat("Hi", stop="x")),
        ("/v1/chat/completions", chat("Hi", stream_options={"include_usage": "yes"})),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi", "x": 1}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "tool", "content": "1", "tool_call_id": "a"}]},
        ),
        (
            "/v1/chat/completions",
            chat("Hi", response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        ),
        ("/chat_tokenize", {"messages": "Hi"}),
    ],
)
def test_unknown_or_mistyped_fields_are_refused(
    client: httpx.Client, route: str, body: dict[str, Any]
) -> None:
    error = error_of(client.post(route, json=body), 422, "validation")
    assert error.startswith("Failed to deserialize the JSON body into the target type")
    (entry,) = client.get("/__fixture__/requests").json()
    assert entry["json"] == body
    assert entry["spec_problems"]


def test_malformed_json_and_missing_content_type(client: httpx.Client) -> None:
    bad = client.post(
        "/generate", content=b'{"inputs": ', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    plain = client.post(
        "/generate", content=b'{"inputs": "Hi"}', headers={"content-type": "text/plain"}
    )
    assert plain.status_code == 415


def test_more_requests_than_max_concurrent_are_overloaded(
    client: httpx.Client, tgi_server_url: str
) -> None:
    client.post("/__fixture__/state", json={"delay_s": 2.0})

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=tgi_server_url, timeout=120) as c:
            return c.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}})

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(one, range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 8 + [429, 429]
    for r in responses:
        if r.status_code == 429:
            assert error_of(r, 429, "overloaded") == "Model is overloaded"


def test_forced_failures(client: httpx.Client) -> None:
    body = {"inputs": Q, "parameters": {"max_new_tokens": 4}}
    client.post("/__fixture__/state", json={"fail_next": 1, "fail_status": 429})
    assert error_of(client.post("/generate", json=body), 429, "overloaded")
    assert client.post("/generate", json=body).status_code == 200
    client.post("/__fixture__/state", json={"fail_next": 2, "fail_status": 424})
    error = error_of(client.post("/generate", json=body), 424, "generation")
    assert error.startswith("Request failed during generation: ")
    token, failure = events(client.post("/generate_stream", json=body))
    assert token["index"] == 1
    assert failure["error_type"] == "generation"
    client.post("/__fixture__/state", json={"fail_next": 1, "fail_status": 500})
    error = error_of(
        client.post("/v1/chat/completions", json=chat("Hi", max_tokens=2)),
        500,
        "incomplete_generation",
    )
    assert error == "Incomplete generation"


def test_the_request_log_keeps_bodies_and_drops_authorization(client: httpx.Client) -> None:
    headers = {"authorization": "Bearer secret", "x-trace": "t1"}
    client.post("/tokenize", json={"inputs": "Hi"}, headers=headers)
    (entry,) = client.get("/__fixture__/requests").json()
    assert entry["path"] == "/tokenize"
    assert entry["json"] == {"inputs": "Hi"}
    assert entry["headers"]["x-trace"] == "t1"
    assert "authorization" not in entry["headers"]
    assert entry["has_authorization"] is True
    assert "secret" not in json.dumps(entry)


def test_huggingface_hub_inference_client(
    tgi_server_url: str, monkeypatch: pytest.MonkeyPatch, client: httpx.Client
) -> None:
    import huggingface_hub as hub  # the test group installs it: a missing client fails
    from huggingface_hub import constants
    from huggingface_hub.errors import ValidationError

    # PEERS.md: with HF_HUB_OFFLINE the hub client refuses even 127.0.0.1.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hf = hub.InferenceClient(base_url=tgi_server_url)
    out = hf.text_generation("Hello", max_new_tokens=5, details=True)
    assert out.details is not None
    assert 1 <= out.details.generated_tokens <= 5
    assert out.details.finish_reason in ("length", "eos_token", "stop_sequence")
    streamed = list(hf.text_generation("Hello", max_new_tokens=3, stream=True, details=True))
    assert streamed[-1].details is not None
    with pytest.raises(ValidationError, match="stop sequences"):
        hf.text_generation("Hello", max_new_tokens=3, stop=["a", "b", "c", "d", "e"])
    paths = [e["path"] for e in client.get("/__fixture__/requests").json()]
    assert paths == ["/", "/", "/"]


def test_a_base_model_without_chat_template_and_other_limits(gguf_path: str) -> None:
    pytest.importorskip("llama_cpp")
    port = peers.free_port()
    log = LOG_DIR / "tgi_fixture_base.log"
    proc = peers.start_tgi_fixture(
        port, log, gguf_path, "--no-chat-template", "--max-stop-sequences", "1",
        "--max-input-tokens", "16", "--max-total-tokens", "32", "--unknown-fields", "ignore",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        peers.wait_ready(f"{url}/health", proc, 60, log)
        with httpx.Client(base_url=url, timeout=60) as c:
            info = c.get("/info").json()
            assert (info["max_input_tokens"], info["max_total_tokens"]) == (16, 32)
            refused = c.post("/v1/chat/completions", json=chat("Hi"))
            assert error_of(refused, 422, "template_error") == "Template error: template not found"
            stops = c.post("/generate", json={"inputs": "Hi", "parameters": {"stop": ["a", "b"]}})
            assert error_of(stops, 422, "validation").endswith("up to 1 stop sequences. Given: 2")
            ok = c.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
            assert ok.status_code == 200
            # --unknown-fields ignore: dropped as TGI's serde drops them, and logged.
            c.delete("/__fixture__/requests")
            lenient = {"inputs": "Hi", "parameters": {"max_new_tokens": 2, "max_tokens": 9}}
            assert c.post("/generate", json=lenient).status_code == 200
            (entry,) = c.get("/__fixture__/requests").json()
            (ignored,) = entry["ignored_unknown_fields"]
            assert ignored["path"] == "parameters"
            assert "max_tokens" in ignored["message"]
            mistyped = {"inputs": "Hi", "parameters": {"max_new_tokens": "2"}}
            assert error_of(c.post("/generate", json=mistyped), 422, "validation")
            # Through the package: chat is refused before any request, completion works.
            c.delete("/__fixture__/requests")
            with pytest.raises(ValueError, match="use TGI"):
                ChatTGI(base_url=url, chat_completion_enabled=False).invoke("Hi")
            assert c.get("/__fixture__/requests").json() == []
            assert isinstance(TGI(base_url=url, max_new_tokens=2).invoke("Hi"), str)
            assert c.get("/__fixture__/violations").json() == []
    finally:
        peers.stop(proc)
