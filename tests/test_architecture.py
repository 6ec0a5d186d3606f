"""Imports run one way, bottom up through the layers of docs/architecture.md, with no cycle
between top-level units, counting imports inside functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "stjax"

# layer -> the top-level units (stjax.X) in it, bottom up
LAYERS = [
    ("leaves", ["stjax", "stjax.errors", "stjax.configlib", "stjax.fileio", "stjax.locations", "stjax.hub", "stjax.logs", "stjax.plotting",
                "stjax.losses", "stjax.objective", "stjax.distributed"]),
    ("models", ["stjax.models"]),
    ("data", ["stjax.data"]),
    ("generation / lora", ["stjax.generation", "stjax.lora", "stjax.assets"]),
    ("pact", ["stjax.pact"]),
    ("training", ["stjax.training", "stjax.planning"]),
    ("evaluation", ["stjax.evaluation"]),
    ("toy", ["stjax.toy"]),
    ("front ends", ["stjax.cli", "stjax.train", "stjax.eval", "stjax.report", "stjax.plan", "stjax.safety_tokens"]),
]
LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports_of(path: Path, module: str | None = None) -> set[str]:
    """Every stjax module a file (module `module`) imports, at module level or inside functions."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "stjax")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "stjax":
                found.add(name)
                for alias in node.names:  # `from stjax.pact import stage1` imports a module
                    if (ROOT.parent / f"{name}.{alias.name}".replace(".", "/")).with_suffix(".py").is_file():
                        found.add(f"{name}.{alias.name}")
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in graph()}
    assert units <= set(LAYER_OF), f"units without a layer: {sorted(units - set(LAYER_OF))}"


def test_imports_never_go_up_a_layer():
    upward = [f"{m} (layer {LAYERS[LAYER_OF[unit_of(m)]][0]}) imports {i} (layer {LAYERS[LAYER_OF[unit_of(i)]][0]})"
              for m, targets in graph().items() for i in sorted(targets)
              if LAYER_OF[unit_of(i)] > LAYER_OF[unit_of(m)]]
    assert not upward, "\n".join(upward)


def test_no_cycle_between_units():
    edges: dict[str, set[str]] = {}
    for m, targets in graph().items():
        edges.setdefault(unit_of(m), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(m))
    # the package root imports nothing, so a cycle through it cannot hide
    seen, stack, cycles = set(), [], []

    def visit(unit):
        if unit in stack:
            cycles.append(stack[stack.index(unit):] + [unit])
            return
        if unit in seen:
            return
        seen.add(unit)
        stack.append(unit)
        for nxt in sorted(edges.get(unit, ())):
            visit(nxt)
        stack.pop()

    for unit in sorted(edges):
        visit(unit)
    assert not cycles, "; ".join(" -> ".join(c) for c in cycles)


def test_the_library_never_imports_the_toy_world():
    clients = {"stjax.toy", *LAYERS[-1][1]}
    offenders = [f"{m} imports {i}" for m, targets in graph().items() for i in targets
                 if unit_of(i) == "stjax.toy" and unit_of(m) not in clients]
    assert not offenders, offenders


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The parser itself: a function-level upward import is an edge (so the tests above can fail)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from stjax.training import trainer\n    from . import config\n")
    found = imports_of(probe, "stjax.models.probe")
    assert {"stjax.training.trainer", "stjax.models.config"} <= found
    upward = sorted(i for i in found if LAYER_OF[unit_of(i)] > LAYER_OF["stjax.models"])
    assert upward == ["stjax.training", "stjax.training.trainer"]


def test_report_command_runs_without_jax(tmp_path):
    """`stjax report` is JSON and matplotlib: it must start (and fail cleanly) without importing jax."""
    code = ("import sys; from stjax.cli import main; rc = main(['report', sys.argv[1], '--out', sys.argv[2]]); "
            "assert 'jax' not in sys.modules, 'jax was imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("stjax report: error:") and "report.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
