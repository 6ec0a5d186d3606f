"""Accelerators: TPU chips and slices, NVIDIA GPUs (one host, N cards), their memory, peak
FLOPs, and the compile-only topologies libtpu knows.

On GPUs, jax preallocates a fraction of each card's memory for XLA
(`XLA_PYTHON_CLIENT_MEM_FRACTION`, default 0.75); the plan counts that fraction, read from the
environment, as the memory a run may use."""

from __future__ import annotations

import dataclasses
import os

from stjax.configlib import ConfigKeyError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    family: str
    hbm_gib: float  # per chip
    peak_tflops: float  # dense bf16 per chip
    cores_in_name: int  # v4-8 / v5p-8 count TensorCores (2 per chip); v5e / v6e count chips
    compile_name: str | None  # jax.experimental.topologies name prefix (None: no compile-only check)
    compile_kwargs: tuple = ()
    gpu: bool = False


CHIPS = {
    "v4": Chip("v4", 32, 275, 2, "v4", (("chip_config_name", "megacore"),)),
    "v5e": Chip("v5e", 16, 197, 1, "v5e"),
    "v5p": Chip("v5p", 95, 459, 2, "v5p", (("chip_config_name", "megacore"),)),
    "v6e": Chip("v6e", 32, 918, 1, "v6e"),
    # NVIDIA data-center GPUs: memory as nvidia-smi reports it, dense bf16 tensor-core peak (SXM)
    "h100": Chip("h100", 79.6, 989, 1, None, gpu=True),
    "h200": Chip("h200", 140.4, 989, 1, None, gpu=True),
    "a100": Chip("a100", 80, 312, 1, None, gpu=True),  # the 80 GB card; a100_40gb for the other
    "a100_40gb": Chip("a100_40gb", 40, 312, 1, None, gpu=True),
    "l40s": Chip("l40s", 44.4, 362, 1, None, gpu=True),
    "l4": Chip("l4", 22.5, 121, 1, None, gpu=True),
}
GPU_MEMORY_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"

# Compile-only topologies (chips -> physical shape) for the single-host slices.
_SHAPES = {("v4", 4): "2x2x1", ("v5p", 4): "2x2x1", ("v5e", 1): "1x1", ("v5e", 4): "2x2", ("v5e", 8): "2x4",
           ("v6e", 1): "1x1", ("v6e", 4): "2x2", ("v6e", 8): "2x4", ("v4", 8): "2x2x2", ("v5p", 8): "2x2x2"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given, e.g. v5e-8
    chip: Chip
    chips: int

    @property
    def hbm_bytes(self) -> float:
        """The memory a run may use on each chip (on GPUs, the part jax preallocates)."""
        return self.chip.hbm_gib * GiB * (gpu_memory_fraction() if self.chip.gpu else 1.0)

    @property
    def memory_text(self) -> str:
        if not self.chip.gpu:
            return f"{self.chip.hbm_gib:g} GiB HBM"
        return (f"{self.hbm_bytes / GiB:.1f} GiB usable ({gpu_memory_fraction():g} of {self.chip.hbm_gib:g} GiB: "
                f"{GPU_MEMORY_FRACTION_ENV})")


def gpu_memory_fraction() -> float:
    """The share of each GPU's memory jax preallocates: XLA_PYTHON_CLIENT_MEM_FRACTION, else 0.75."""
    value = os.environ.get(GPU_MEMORY_FRACTION_ENV, "")
    try:
        fraction = float(value) if value else 0.75
    except ValueError:
        raise ConfigKeyError(f"{GPU_MEMORY_FRACTION_ENV}={value!r}: expected a number in (0, 1]") from None
    if not 0 < fraction <= 1:
        raise ConfigKeyError(f"{GPU_MEMORY_FRACTION_ENV}={value!r}: expected a number in (0, 1]")
    return fraction


def parse_topology(name: str) -> Topology:
    """'v5e-8' (or gcloud's 'v5litepod-8') -> 8 v5e chips; 'v4-8' -> 4 v4 chips (8 TensorCores);
    'h100-8' -> 8 H100 GPUs."""
    family, _, count = name.lower().partition("-")
    family = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}.get(family, family)
    if family not in CHIPS or not count.isdigit() or int(count) < 1:
        raise ConfigKeyError(f"--topology {name!r}: expected <family>-<size> with family one of "
                             f"{', '.join(CHIPS)} (e.g. v5e-8, v4-8, v5p-8, v6e-8, h100-8)")
    chip = CHIPS[family]
    chips = max(1, int(count) // chip.cores_in_name)
    return Topology(name, chip, chips)


def topology_devices(topology: Topology):
    """Compile-only TPU devices for the topology (libtpu needed; no TPU)."""
    from jax.experimental import topologies

    if topology.chip.compile_name is None:
        raise ConfigKeyError(f"--compile: compile-only checks run for TPU slices; for {topology.name}, run "
                             "`stjax train` on one GPU with train.max_steps=1 (its peak memory is the measure)")
    shape = _SHAPES.get((topology.chip.family, topology.chips))
    if shape is None:
        raise ConfigKeyError(f"--compile: no compile-only shape known for {topology.name}")
    return topologies.get_topology_desc(f"{topology.chip.compile_name}:{shape}", "tpu",
                                        **dict(topology.chip.compile_kwargs)).devices
