"""`stjax report RUN_DIR [RUN_DIR ...] --out DIR`

Combines eval runs (output directories of stjax eval) into a Markdown table and
PNG plots: harmful score vs task accuracy, and the safety-token mass per response position.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stjax.errors import UserError
from stjax.fileio import read_json_object

TABLE_FILE, TRADE_OFF_PLOT, MASS_PLOT = "report.md", "harmful_vs_accuracy.png", "safety_mass.png"
REPORT_KEYS = ("run", "headline", "benchmarks")  # what the table and the plots read


def load_report(run_dir: str | Path) -> dict:
    from stjax.evaluation.tables import REPORT_FILE

    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {REPORT_FILE} (expected an output directory of stjax eval)")
    report = read_json_object(path, UserError, "; rerun stjax eval for it")
    missing = [k for k in REPORT_KEYS if not isinstance(report.get(k), dict)]
    if missing:
        raise UserError(f"{path}: not a report of stjax eval (no {', '.join(repr(k) for k in missing)} object)")
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stjax report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="eval output directories")
    parser.add_argument("--out", required=True, help="directory for the table and the plots")
    args = parser.parse_args(argv)

    from stjax.evaluation.plots import plot_harmful_vs_accuracy, plot_safety_mass
    from stjax.evaluation.tables import comparison_markdown

    reports = [load_report(d) for d in args.run_dirs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_markdown(reports)
    (out / TABLE_FILE).write_text(table)
    written = [out / TABLE_FILE]
    for plot, name in ((plot_harmful_vs_accuracy, TRADE_OFF_PLOT), (plot_safety_mass, MASS_PLOT)):
        if plot(reports, out / name):
            written.append(out / name)
    print(table, end="")
    print("stjax report: " + ", ".join(str(p) for p in written))
    return 0
