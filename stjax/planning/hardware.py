"""TPU chips and slices: HBM, peak FLOPs, and the compile-only topologies libtpu knows."""

from __future__ import annotations

import dataclasses

from stjax.configlib import ConfigKeyError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    family: str
    hbm_gib: float  # per chip
    peak_tflops: float  # dense bf16 per chip
    cores_in_name: int  # v4-8 / v5p-8 count TensorCores (2 per chip); v5e / v6e count chips
    compile_name: str  # jax.experimental.topologies name prefix
    compile_kwargs: tuple = ()


CHIPS = {
    "v4": Chip("v4", 32, 275, 2, "v4", (("chip_config_name", "megacore"),)),
    "v5e": Chip("v5e", 16, 197, 1, "v5e"),
    "v5p": Chip("v5p", 95, 459, 2, "v5p", (("chip_config_name", "megacore"),)),
    "v6e": Chip("v6e", 32, 918, 1, "v6e"),
}

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
        return self.chip.hbm_gib * GiB


def parse_topology(name: str) -> Topology:
    """'v5e-8' (or gcloud's 'v5litepod-8') -> 8 v5e chips; 'v4-8' -> 4 v4 chips (8 TensorCores)."""
    family, _, count = name.lower().partition("-")
    family = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}.get(family, family)
    if family not in CHIPS or not count.isdigit() or int(count) < 1:
        raise ConfigKeyError(f"--topology {name!r}: expected <family>-<size> with family one of "
                             f"{', '.join(CHIPS)} (e.g. v5e-8, v4-8, v5p-8, v6e-8)")
    chip = CHIPS[family]
    chips = max(1, int(count) // chip.cores_in_name)
    return Topology(name, chip, chips)


def topology_devices(topology: Topology):
    """Compile-only TPU devices for the topology (libtpu needed; no TPU)."""
    from jax.experimental import topologies

    shape = _SHAPES.get((topology.chip.family, topology.chips))
    if shape is None:
        raise ConfigKeyError(f"--compile: no compile-only shape known for {topology.name}")
    return topologies.get_topology_desc(f"{topology.chip.compile_name}:{shape}", "tpu",
                                        **dict(topology.chip.compile_kwargs)).devices
