"""The model and mesh sections of every application config (train, safety tokens, eval)."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class ModelSection:
    path: str  # Hub-format directory (config.json + safetensors)
    tokenizer: str | None = None  # defaults to the model directory
    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # parameter storage
    compute_dtype: Literal["float32", "bfloat16"] | None = None  # defaults to dtype
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    attention: str = "xla"


@dataclasses.dataclass
class MeshSection:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
