"""Compile-only check: the real train step compiled for a topology, and XLA's memory figures."""

from __future__ import annotations

from stjax.configlib import ConfigKeyError
from stjax.planning.estimate import abstract_model, resolve_mesh


def compiled_memory(config, model_config, devices, *, safety_tokens: int = 50) -> dict[str, float]:
    """XLA's memory figures (bytes per device) for the real train step compiled for `devices`
    (a TPU topology's compile-only devices, or local ones): the trainer's own program
    (`stjax.training.program.build_program`) on abstract parameters."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from stjax.models.partitioning import MESH_AXES
    from stjax.models.sections import mesh_rules
    from stjax.training.objectives import build_objective
    from stjax.training.optimizer import make_optimizer, make_schedule
    from stjax.training.program import build_program, compiled_step

    mesh_sizes, errors = resolve_mesh(config.mesh, len(devices))
    if errors:
        raise ConfigKeyError(errors[0])
    mesh = jax.sharding.Mesh(np.array(devices).reshape([mesh_sizes[a] for a in MESH_AXES]), MESH_AXES)
    layout = model_config.replace(remat=config.model.remat, scan_layers=config.model.scan_layers)
    graphdef, trained, rest = abstract_model(layout, config.lora, for_compile=True)
    kind = config.loss.kind
    ids = np.arange(safety_tokens, dtype=np.int32) if kind in ("pact", "pact_bucket") else None
    weights = np.ones(safety_tokens, np.float32) if ids is not None else None
    objective = build_objective(config.loss, safety_ids=ids, safety_weights=weights, header_len=4)
    tx = make_optimizer(config.optimizer, make_schedule(config.optimizer, 1000, 100))
    program = build_program(graphdef, trained, rest, objective, tx, mesh, lora=config.lora.enabled,
                            ref=config.loss.ref, grad_accum=config.train.grad_accum, rules=mesh_rules(config.mesh))
    B, L = config.train.batch_size, config.data.max_len
    batch = {"inputs": (B, L, jnp.int32), "targets": (B, L, jnp.int32), "loss_mask": (B, L, jnp.float32),
             "attention_mask": (B, L, jnp.bool_), "response_pos": (B, L, jnp.int32), "example_index": (B, None, jnp.int32),
             "loss_index": (B, L, jnp.int32)}  # as the trainer's batches; R = L: the worst case, every position
    if config.data.packing:  # packed rows: segments (the dense-mask attention path), one example index each
        batch.update({"segment_ids": (B, L, jnp.int32), "positions": (B, L, jnp.int32),
                      "example_index": (B, L, jnp.int32)})
    batch = {k: jax.ShapeDtypeStruct((b,) if l is None else (b, l), d) for k, (b, l, d) in batch.items()}
    if objective.needs_reference and not program.online:
        batch.update(_cached_ref_shapes(kind, B, L, safety_tokens))
    stats = compiled_step(program, batch).memory_analysis()
    return {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
            "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
            "code": stats.generated_code_size_in_bytes,
            "peak": stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes}


def _cached_ref_shapes(kind, B, L, K) -> dict:
    import jax
    import jax.numpy as jnp

    shapes = {"pact": ("ref_full", "ref_post"), "pact_bucket": ("ref_full", "ref_post")}.get(kind)
    if shapes:
        out = {k: jax.ShapeDtypeStruct((B, L, K), jnp.float32) for k in shapes}
        if kind == "pact_bucket":
            out.update({k: jax.ShapeDtypeStruct((B, L), jnp.float32) for k in ("ref_full_lse", "ref_post_lse")})
        return out
    return {"ref_logprobs": jax.ShapeDtypeStruct((B, L), jnp.float32)}  # constrained_sft
