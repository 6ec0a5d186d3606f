"""Will a training run fit a TPU slice, and what will it cost? (`stjax plan`)

hardware (chips, topologies) -> known_models (config.json without a download) ->
estimate (memory per chip by part, FLOPs, step time) -> knobs (single changes that fit)
-> compile_check (the real step compiled for the topology with libtpu) -> report (text).
data_size counts a config's local examples and estimates its batch width.
"""

from stjax.planning.compile_check import compiled_memory
from stjax.planning.data_size import count_examples, estimate_seq_len
from stjax.planning.estimate import FIT_FRACTION, Estimate, estimate, rows_per_chip
from stjax.planning.hardware import CHIPS, GiB, Topology, parse_topology, topology_devices
from stjax.planning.knobs import suggestions
from stjax.planning.known_models import KNOWN_MODELS, model_hf_config
from stjax.planning.report import report

__all__ = [
    "CHIPS", "FIT_FRACTION", "KNOWN_MODELS", "Estimate", "GiB", "Topology", "compiled_memory", "count_examples",
    "estimate", "estimate_seq_len", "model_hf_config", "parse_topology", "report", "rows_per_chip", "suggestions",
    "topology_devices",
]
