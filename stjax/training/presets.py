"""Named fine-tuning settings: `preset: NAME` at the top of a training config.

A preset is a partial config merged *under* the file's own keys (and `--set` overrides), so
anything the file says wins. The run's `config.yaml` records the expanded values, never
the name, so a run directory always says what trained it.

- `pact`: the reference release's PACT objective exactly (lambda 1, T 2, the default gate,
  the KL at every response position, the end-of-turn one included).
- `refusal_mix`: plain SFT with refusal rows mixed into the task data at 20% of the set
  (`data.safety` names them: the refusal set given to `stjax safety-tokens` serves). In
  the poisoning study (docs/safety_study.md) it is the one setting that kept clean
  refusals and the task in the toy world with 10% harmful rows (10% refusal rows were not
  enough), where every PACT variant lost one or the other.
"""

from __future__ import annotations

from stjax.configlib import ConfigKeyError, deep_merge

PRESETS: dict[str, dict] = {
    "pact": {"loss": {"kind": "pact", "lam": 1.0, "temperature": 2.0, "kl_at_end": True, "kl_first_positions": None,
                      "gate": {"top_p": 0.9, "alpha": 2.0, "bias": 0.0, "temperature": 1.0, "prefix_n": 8,
                               "decay_tau": 8.0, "prefix_boost": 1.0}}},
    "refusal_mix": {"loss": {"kind": "sft"}, "data": {"safety_ratio": 0.2}},
}


def apply_preset(data: dict) -> dict:
    """`data` (a training config as a mapping) with its `preset:` expanded under its keys."""
    if "preset" not in data:
        return data
    rest = {k: v for k, v in data.items() if k != "preset"}
    name = data["preset"]
    if name is None:
        return rest
    if name not in PRESETS:
        raise ConfigKeyError(f"'preset': unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    merged = deep_merge(PRESETS[name], rest)
    if name == "refusal_mix" and not (merged.get("data") or {}).get("safety"):
        raise ConfigKeyError("'data.safety': preset refusal_mix mixes refusal rows into the task data; name them "
                             "(e.g. data.safety: {path: refusals.jsonl}, the set given to stjax safety-tokens)")
    return merged
