"""Who an evaluation run is: its label in tables and plots.

Fine-tuning runs write their resolved config next to their export (`<run>/config.yaml`,
`<run>/adapter/`), so the method (loss.kind) and the harmful ratio of the data are read
from there unless the eval config names them; comparison plots then label themselves.
"""

from __future__ import annotations

from pathlib import Path

from stjax.configlib import load_yaml

EXPORT_DIRS = ("model", "merged")  # what stjax train writes a Hub checkpoint into


def training_run_info(export_dir: str | Path | None) -> dict:
    """{method, harmful_ratio} of the stjax training run that exported `export_dir`, or {}."""
    if export_dir is None:
        return {}
    config_file = Path(export_dir).parent / "config.yaml"
    if not config_file.is_file():
        return {}
    config = load_yaml(config_file.read_text()) or {}
    loss, data = config.get("loss") or {}, config.get("data") or {}
    if "kind" not in loss:
        return {}
    return {"method": loss["kind"], "harmful_ratio": data.get("harmful_ratio")}


def run_label(name: str | None, method: str | None, harmful_ratio: float | None, model: str) -> str:
    """The name if given, else e.g. "PACT, harmful 10%", else the model directory's name (the
    run's, for a training run's export directory `<run>/model` or `<run>/merged`)."""
    if name:
        return name
    if method:
        return method.upper() if harmful_ratio is None else f"{method.upper()}, harmful {harmful_ratio:.0%}"
    path = Path(model)
    if path.name in EXPORT_DIRS and path.parent.name:
        return path.parent.name
    return path.name or model
