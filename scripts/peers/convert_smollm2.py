"""Convert the SmolLM2 GGUF into a Hugging Face folder that vLLM can load.

Usage: python convert_smollm2.py GGUF_FILE OUT_DIR

vLLM 0.32 cannot load a GGUF file; transformers can read one (dequantizing it) and write a
plain safetensors checkpoint plus the tokenizer, which keeps the GGUF's ChatML chat template.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig


def read_gguf_chat_template(gguf_file: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_file)).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def convert(gguf_file: Path, out_dir: Path) -> None:
    src, name = str(gguf_file.parent), gguf_file.name
    model = AutoModelForCausalLM.from_pretrained(
        src,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    # Otherwise save_pretrained refuses: "The model is quantized with gguf and is not serializable".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = read_gguf_chat_template(gguf_file)
    if not tokenizer.chat_template:
        raise SystemExit(f"{gguf_file} carries no chat template")

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    # Check the result: it loads without the GGUF and still renders ChatML.
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    rendered = reloaded.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    if "<|im_start|>" not in rendered:
        raise SystemExit(f"saved tokenizer lost the ChatML template: {rendered!r}")
    print(f"saved {out_dir}; chat template renders {rendered!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    convert(Path(argv[1]).resolve(), Path(argv[2]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
