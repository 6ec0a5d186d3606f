"""Single changes to a config that would make it fit, each with its estimate."""

from __future__ import annotations

import dataclasses

from stjax.configlib import ConfigKeyError
from stjax.planning.estimate import Estimate, estimate


def suggestions(config, topology, model_config, base: Estimate, **kwargs) -> list[tuple[str, Estimate]]:
    """Single changes to the config and what each gives."""
    options = []
    chips = topology.chips
    if base.mesh != {"data": 1, "fsdp": chips, "tensor": 1} and chips > 1:
        options.append((f"mesh.data=1 mesh.fsdp={chips} mesh.tensor=1", {"mesh": {"data": 1, "fsdp": chips, "tensor": 1}}))
    if chips % 2 == 0 and base.mesh["tensor"] == 1 and model_config.num_kv_heads % 2 == 0:
        options.append((f"mesh.data=1 mesh.fsdp={chips // 2} mesh.tensor=2",
                        {"mesh": {"data": 1, "fsdp": chips // 2, "tensor": 2}}))
    for remat in ("full", "dots_no_batch", "dots"):
        if config.model.remat != remat:
            options.append((f"model.remat={remat}", {"model": {"remat": remat}}))
    for accum in (2, 4, 8):
        if config.train.batch_size % (accum * config.train.grad_accum) == 0:
            value = config.train.grad_accum * accum
            options.append((f"train.grad_accum={value}", {"train": {"grad_accum": value}}))
    if not config.lora.enabled:
        options.append(("lora.enabled=true", {"lora": {"enabled": True}}))
    if config.model.dtype == "float32":
        options.append(("model.dtype=bfloat16", {"model": {"dtype": "bfloat16", "compute_dtype": "bfloat16"}}))
    results = []
    for text, change in options:
        changed = _replace(config, change)
        try:
            results.append((text, estimate(changed, topology, model_config.replace(remat=changed.model.remat,
                                                                                      param_dtype=changed.model.dtype),
                                           **kwargs)))
        except (ConfigKeyError, ValueError):  # a knob that does not apply is simply not offered
            continue
    return results


def _replace(config, change: dict):
    sections = {}
    for section, values in change.items():
        sections[section] = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **sections)
