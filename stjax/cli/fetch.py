"""`stjax fetch NAME [--cache-dir DIR]`: download and convert a known model (offline afterwards)."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from stjax.assets import ASSETS, fetch

    parser = argparse.ArgumentParser(prog="stjax fetch", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(ASSETS))
    parser.add_argument("--cache-dir", default=None, help="default: $STJAX_CACHE or ~/.cache/stjax")
    args = parser.parse_args(argv)
    try:
        gguf_path, hub_dir = fetch(args.name, args.cache_dir)
    except OSError as e:  # AssetError and GGUFError are user errors already; a full disk is too
        raise FileNotFoundError(f"{args.name}: {e}") from None
    print(f"gguf: {gguf_path}")
    print(f"hub:  {hub_dir}")
    return 0
