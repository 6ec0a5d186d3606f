"""`stjax convert-gguf IN.gguf OUT_DIR [--dtype bfloat16]`: a llama-architecture GGUF file ->
a Hugging Face model directory (config.json, safetensors, tokenizer)."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stjax convert-gguf", description=__doc__.splitlines()[0])
    parser.add_argument("gguf_file", help="input .gguf file")
    parser.add_argument("out_dir", help="output directory (replaced if it exists)")
    parser.add_argument("--dtype", default=None, help="saved weight dtype, e.g. bfloat16 (default float32)")
    args = parser.parse_args(argv)

    from stjax.models.gguf_import import convert_gguf

    print(convert_gguf(args.gguf_file, args.out_dir, dtype=args.dtype))
    return 0
