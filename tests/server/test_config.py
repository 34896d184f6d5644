"""The config: YAML, ${...} interpolation, one-line refusals naming the key path, the replaced
microservice's environment, secrets kept out of errors and reprs, and ``multillm serve`` exiting
2 before it binds."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from langchain_multillm.server.config import (
    ConfigError,
    ServeConfig,
    config_from_env,
    interpolate,
    load_config,
)
from tests import peers


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- interpolation


def test_interpolation_forms() -> None:
    env = {"A": "1", "HOST": "gpu1.invalid", "EMPTY": ""}
    data = {
        "oc": "${oc.env:A}",
        "oc_default_unused": "${oc.env:A,9}",
        "oc_default": "${oc.env:MISSING,fallback}",
        "oc_quoted_default": "${oc.env:MISSING,'a,b'}",
        "oc_null": "${oc.env:MISSING,null}",
        "plain": "${A}",
        "spliced": "http://${oc.env:HOST,localhost}:8000/v1",
        "escaped": "\\${A}",
        "empty": "${EMPTY}",
        "nested": [{"x": "${A}"}],
        "number": 5,
    }
    assert interpolate(data, env) == {
        "oc": "1",
        "oc_default_unused": "1",
        "oc_default": "fallback",
        "oc_quoted_default": "a,b",
        "oc_null": None,
        "plain": "1",
        "spliced": "http://gpu1.invalid:8000/v1",
        "escaped": "${A}",
        "empty": "",
        "nested": [{"x": "1"}],
        "number": 5,
    }


def test_a_missing_variable_names_the_key_path() -> None:
    with pytest.raises(ConfigError) as err:
        interpolate({"models": [{"params": {"api_key": "${oc.env:NOPE}"}}]}, {})
    assert err.value.field == "models[0].params.api_key"
    assert "NOPE is not set" in str(err.value)


def test_a_bad_expression_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"oc.env:NAME"):
        interpolate({"a": "${oc.decode:x}"}, {})


def test_typed_fields_take_interpolated_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server:\n  port: ${oc.env:PORT}\n  disable_streaming: ${oc.env:OFF,false}\n"
        "models:\n  - name: m\n    model: 'llamacpp:'\n    max_concurrency: ${N}\n",
    )
    config = load_config(path, {"PORT": "9123", "N": "3"})
    assert config.server.port == 9123
    assert config.server.disable_streaming is False
    assert config.models[0].max_concurrency == 3


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ("models: []\n", "models", "at least 1"),
        ("server: {}\n", "models", "is required"),
        (
            "models:\n  - {name: m, model: 'llamacpp:', max_queue: -1}\n",
            "models[0].max_queue",
            "greater than or equal to 0",
        ),
        (
            "models:\n  - {name: m, model: 'llamacpp:'}\n  - {name: n, model: 'x:'}\n",
            "models[1].model",
            "provider one of azure, deepseek",
        ),
        (
            "models:\n  - {name: m, model: 'azure:x', kind: completion}\n",
            "models[0].model",
            "completion model",
        ),
        (
            "models:\n  - {name: m, model: 'llamacpp:', max_concurency: 2}\n",
            "models[0].max_concurency",
            "unknown key; allowed: name, model, kind, params, max_concurrency, max_queue",
        ),
        (
            "server: {prot: 1}\nmodels:\n  - {name: m, model: 'llamacpp:'}\n",
            "server.prot",
            "allowed: host, port, workers, api_keys",
        ),
        (
            "server: {port: high}\nmodels:\n  - {name: m, model: 'llamacpp:'}\n",
            "server.port",
            "valid integer",
        ),
        (
            "models:\n  - {name: m, model: 'llamacpp:'}\n  - {name: m, model: 'llamacpp:'}\n",
            "models[1].name",
            "already the name of models[0]",
        ),
        (
            "server: {host: 0.0.0.0}\nmodels:\n  - {name: m, model: 'llamacpp:'}\n",
            "server.host",
            "needs server.api_keys",
        ),
        (
            "server: {api_keys: ['']}\nmodels:\n  - {name: m, model: 'llamacpp:'}\n",
            "server.api_keys",
            "is empty",
        ),
        ("models: [\n", "--config", "line 2"),
        ("- just a list\n", "config", "must be a mapping"),
    ],
)
def test_a_wrong_config_is_one_line_naming_the_key(
    tmp_path: Path, text: str, field: str, says: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), {})
    assert err.value.field == field, str(err.value)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_a_public_bind_needs_keys_and_the_command_line_is_checked_too(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "models:\n  - {name: m, model: 'llamacpp:'}\n"), {})
    assert config.server.host == "127.0.0.1"
    for host in ("::1", "localhost", "127.0.0.2"):
        assert config.with_overrides(host=host).server.host == host
    with pytest.raises(ConfigError, match=r"server.host: binding '0.0.0.0'"):
        config.with_overrides(host="0.0.0.0")
    keyed = load_config(
        write(
            tmp_path,
            "server: {host: 0.0.0.0, api_keys: ['${oc.env:K}']}\n"
            "models:\n  - {name: m, model: 'llamacpp:'}\n",
        ),
        {"K": "s3cret-key"},
    )
    assert keyed.with_overrides(port=9000, workers=2).server.port == 9000


def test_secrets_stay_out_of_reprs_and_errors(tmp_path: Path) -> None:
    env = {"GATEWAY_KEY": "gw-secret-123", "VLLM_API_KEY_X": "upstream-secret-456"}
    path = write(
        tmp_path,
        "server: {api_keys: ['${oc.env:GATEWAY_KEY}']}\nmodels:\n"
        "  - name: q\n    model: vllm-server:q\n"
        "    params: {api_key: '${oc.env:VLLM_API_KEY_X}', base_url: 'ftp://x/${GATEWAY_KEY}'}\n",
    )
    config = load_config(path, env)
    text = repr(config) + str(config)
    assert "gw-secret-123" not in text and "upstream-secret-456" not in text
    assert config.secrets == {"gw-secret-123", "upstream-secret-456"}
    from langchain_multillm.server.app import create_app

    with pytest.raises(ConfigError) as err:  # the model refuses its base_url, which holds a key
        create_app(config)
    assert err.value.field == "models[0].params.base_url"
    assert "gw-secret-123" not in str(err.value) and "**********" in str(err.value)


def test_a_literal_key_in_params_is_a_secret_too(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "models:\n  - {name: q, model: 'llamacpp:', params: {api_key: abc123}}\n"),
        {},
    )
    assert config.redact("key abc123 here") == "key ********** here"


# ---------------------------------------------------------------- the environment


def test_no_environment_serves_the_embedded_model() -> None:
    config = config_from_env({})
    assert [(m.name, m.model, m.params) for m in config.models] == [("smollm2", "llamacpp:", {})]
    assert config.server.port == 8000
    assert config.server.api_keys == []


def test_the_replaced_microservice_variables() -> None:
    env = {
        "LLM_MODEL_SERVER": "vllm",
        "LLM_MODEL_SERVER_ENDPOINT": "http://vllm-svc.invalid:8000",
        "LLM_MODEL_NAME": "Qwen/Qwen2.5-7B-Instruct",
        "LLM_USVC_PORT": "9000",
        "LLM_DISABLE_STREAMING": "True",
        "LLM_OUTPUT_GUARD_EXISTS": "0",
        "MULTILLM_API_KEY": "k1, k2",
    }
    config = config_from_env(env)
    (model,) = config.models
    assert model.name == "Qwen/Qwen2.5-7B-Instruct"
    assert model.model == "vllm-server:Qwen/Qwen2.5-7B-Instruct"
    assert model.params == {"base_url": "http://vllm-svc.invalid:8000/v1"}
    assert config.server.port == 9000
    assert config.server.disable_streaming is True
    assert config.server.output_guard is False
    assert [k.get_secret_value() for k in config.server.api_keys] == ["k1", "k2"]
    tgi = config_from_env(
        {"LLM_MODEL_SERVER": "tgi", "LLM_MODEL_SERVER_ENDPOINT": "http://tgi.invalid:8080/"}
    )
    assert (tgi.models[0].model, tgi.models[0].params) == (
        "tgi:",
        {"base_url": "http://tgi.invalid:8080"},
    )
    assert tgi.models[0].name == "tgi"


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"LLM_MODEL_SERVER": "ray"}, "LLM_MODEL_SERVER"),
        ({"LLM_MODEL_SERVER_ENDPOINT": "http://x.invalid:1"}, "LLM_MODEL_SERVER"),
        ({"LLM_DISABLE_STREAMING": "maybe"}, "LLM_DISABLE_STREAMING"),
        ({"LLM_USVC_PORT": "nine"}, "LLM_USVC_PORT"),
    ],
)
def test_wrong_environment_names_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_env(env)
    assert err.value.field == field


def test_the_model_reads_its_own_llm_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Key, OAuth and TLS settings are read by the vLLM client's own fields (not again here)."""
    from langchain_multillm.server.app import create_app

    env = {
        "LLM_MODEL_SERVER": "vllm",
        "LLM_MODEL_SERVER_ENDPOINT": "http://vllm-svc.invalid:8000",
        "LLM_MODEL_NAME": "m",
        "LLM_VLLM_API_KEY": "upstream-key-789",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    app = create_app(config_from_env())
    model = app.state.gateway.models["m"].model
    assert model.api_key.get_secret_value() == "upstream-key-789"
    assert model.base_url == "http://vllm-svc.invalid:8000/v1"
    assert "upstream-key-789" not in repr(model)


# ---------------------------------------------------------------- the command


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "langchain_multillm.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=peers.REPO_ROOT,
    )


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_serve_refuses_a_wrong_config_with_exit_2_before_binding(tmp_path: Path) -> None:
    port = peers.free_port()
    bad = write(tmp_path, "models:\n  - {name: m, model: 'llamacpp:', max_concurrency: 0}\n")
    done = _serve("--config", str(bad), "--port", str(port))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: models[0].max_concurrency:")
    assert _port_free(port)


def test_serve_refuses_a_public_bind_without_keys(tmp_path: Path) -> None:
    done = _serve("--host", "0.0.0.0", "--port", str(peers.free_port()))
    assert done.returncode == 2
    assert "server.host" in done.stderr and "api_keys" in done.stderr


def test_serve_refuses_a_model_that_cannot_be_built_naming_it(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "models:\n  - {name: m, model: 'llamacpp:', params: {n_ctx: 64, temprature: 1}}\n",
    )
    done = _serve("--config", str(bad), "--port", str(peers.free_port()))
    assert done.returncode == 2
    assert done.stderr.startswith("error: models[0].params.temprature:"), done.stderr


def test_the_example_config_loads() -> None:
    example = peers.REPO_ROOT / "examples" / "serve.yaml"
    bare = load_config(example, {})
    assert bare.server.api_keys == []
    assert [(m.name, m.kind) for m in bare.models] == [
        ("smollm2", "chat"),
        ("smollm2-text", "completion"),
    ]
    keyed = load_config(example, {"MULTILLM_API_KEY": "k"})
    assert [k.get_secret_value() for k in keyed.server.api_keys] == ["k"]


def test_config_models_are_pydantic(tmp_path: Path) -> None:
    config = ServeConfig.model_validate({"models": [{"name": "a", "model": "llamacpp:"}]})
    assert config.models[0].kind == "chat"
    assert config.models[0].max_concurrency == 4
    assert config.models[0].max_queue == 64
