"""The plan as text: memory per chip by part, fit verdict, knobs, time and cost."""

from __future__ import annotations

from stjax.lora import expand_targets
from stjax.planning.estimate import FIT_FRACTION, Estimate, rows_per_chip
from stjax.planning.hardware import GiB


def _gib(x: float) -> str:
    if x >= 0.1 * GiB or x == 0:
        return f"{x / GiB:8.2f} GiB"
    if x >= 0.1 * 2**20:
        return f"{x / 2**20:8.2f} MiB"
    return f"{x / 2**10:8.2f} KiB"


def report(config, est: Estimate, source: str, knobs: list[tuple[str, Estimate]] | None = None,
           compiled: dict | str | None = None, price: float | None = None) -> str:
    t = est.topology
    m = est.mesh
    lines = [
        (f"plan: {config.model.path} ({source}) on {t.name}: {t.chips} x {t.chip.family} "
         f"{'GPUs' if t.chip.gpu else 'chips'}, {t.memory_text} and {t.chip.peak_tflops:g} bf16 TFLOP/s each"),
        (f"  mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']}; "
         f"batch {config.train.batch_size} (grad_accum {config.train.grad_accum}, "
         f"{rows_per_chip(config, m):g} rows/chip/micro-batch) x max_len {config.data.max_len}; dtype {config.model.dtype}; "
         f"remat {config.model.remat}; loss {config.loss.kind}"
         + (f" (ref {config.loss.ref})" if config.loss.kind != "sft" else "")
         + (f"; LoRA r={config.lora.rank} on {'/'.join(expand_targets(config.lora.targets))}" if config.lora.enabled else "; full FT")),
        f"  parameters {est.params_total / 1e9:.3f} B, trained {est.params_trained / 1e6:.2f} M",
        "",
        "memory per chip (estimate)",
    ]
    for part, value in est.memory.items():
        lines.append(f"  {part:<52} {_gib(value)}")
    total = est.total_bytes
    lines.append(f"  {'total':<52} {_gib(total)}   ({total / t.hbm_bytes:.0%} of {t.hbm_bytes / GiB:.1f} GiB)")
    if isinstance(compiled, dict):
        lines.append(f"  {'XLA compiled for ' + t.name + ': peak':<52} {_gib(compiled['peak'])}   (arguments "
                     f"{compiled['arguments'] / GiB:.2f}, temporaries {compiled['temporaries'] / GiB:.2f} GiB)")
    elif compiled:
        lines.append(f"  XLA compile-only check: {compiled}")
    lines.append("")
    for error in est.errors:
        lines.append(f"ERROR: {error}")
    peak = compiled["peak"] if isinstance(compiled, dict) else total
    if est.errors:
        lines.append("no fit verdict until the errors above are fixed.")
    elif peak > t.hbm_bytes:
        lines.append(f"WARNING: will NOT fit: {peak / GiB:.1f} GiB per chip > {t.memory_text} on {t.name}.")
    elif peak > FIT_FRACTION * t.hbm_bytes:
        lines.append(f"WARNING: tight: {peak / GiB:.1f} GiB per chip is over {FIT_FRACTION:.0%} of "
                     f"{t.memory_text}; XLA scratch and fragmentation may not fit.")
    else:
        lines.append(f"fits: {peak / GiB:.1f} of {t.hbm_bytes / GiB:.1f} GiB per chip.")
    if knobs and (est.errors or peak > FIT_FRACTION * t.hbm_bytes):
        lines.append("  knobs (one change each -> total per chip):")
        for text, k in sorted(knobs, key=lambda kv: kv[1].total_bytes):
            verdict = "fits" if k.fits else "no"
            lines.append(f"    {text:<44} {_gib(k.total_bytes)}  {verdict}")
    lines += ["", "time and cost (estimate)"]
    lines.append(f"  tokens/step {est.tokens_per_step:,.0f} (batch x mean padded width, width from "
                 f"{est.seq_len_source})")
    lines.append(f"  FLOPs/step {est.flops_per_step:.3e}; at MFU {est.mfu:.0%}: {est.step_seconds:.3f} s/step")
    for note in est.notes:
        lines.append(f"  {note}")
    if est.steps:
        hours = est.steps * est.step_seconds / 3600
        lines.append(f"  {est.examples} examples x {config.train.epochs} epochs = {est.steps} steps: {hours:.2f} h"
                     + (f" + {est.cache_seconds / 60:.1f} min reference cache" if est.cache_seconds else "")
                     + f" = {est.chip_hours:.2f} chip-hours")
        if price:
            lines.append(f"  at ${price:.2f} per chip-hour: ${est.chip_hours * price:,.2f}")
    else:
        lines.append("  steps unknown (data not local): pass --examples N")
    return "\n".join(lines)
