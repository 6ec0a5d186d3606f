"""Markdown tables of eval reports: one run's summary.md and the multi-run comparison."""

from __future__ import annotations

from stjax.evaluation.scoring import sample_lines

REPORT_FILE, SUMMARY_FILE = "report.json", "summary.md"  # what stjax eval writes in its output directory

METRIC_NAMES = {
    "clean_refusal": "clean refusal",
    "clean_asr": "not a clean refusal",
    "keyword_refusal": "refusal (keyword judge)",
    "keyword_asr": "ASR (keyword judge)",
    "exact_refusal": "exact refusal",
    "degenerate": "degenerate replies",
    "unfinished": "cut off at max_new_tokens",
    "llama_guard_harmful": "harmful score (Llama Guard)",
    "accuracy": "accuracy",
    "over_refusal": "over-refusal (refusal marker in the answer)",
}


def format_rate(aggregate: dict) -> str:
    """'12.0% [8.1, 17.2]' (rate and 95% Wilson interval, in percent)."""
    if aggregate["rate"] is None:
        return "n/a"
    low, high = aggregate["ci95"]
    return f"{100 * aggregate['rate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def rate_rows(report: dict):
    """(benchmark, metric key, aggregate) for every rate in a report, in config order."""
    for name, bench in report["benchmarks"].items():
        for metric, aggregate in bench["aggregates"].items():
            if isinstance(aggregate, dict):
                yield name, metric, aggregate


def summary_markdown(report: dict) -> str:
    run = report["run"]
    lines = [f"# {run['label']}", "",
             f"model `{report['metadata']['model']}`" + (f", adapter `{report['metadata']['adapter']}`"
                                                         if report["metadata"]["adapter"] else ""), "",
             "| benchmark | metric | value [95% CI] | n |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {METRIC_NAMES[metric]} | {format_rate(agg)} | {agg['n']} |"
              for name, metric, agg in rate_rows(report)]
    for name, bench in report["benchmarks"].items():
        if bench.get("samples"):
            lines += ["", f"Sample replies, {name}:", *sample_lines(bench)]
    mass = report.get("safety_mass")
    if mass:
        head = [m for m in mass["mean"][:8] if m is not None]
        lines += ["", f"Safety-token mass on {mass['benchmark']} (own greedy responses, {mass['num_prompts']} "
                      f"prompts), positions 1-{len(head)}: " + ", ".join(f"{m:.3f}" for m in head)]
    return "\n".join(lines) + "\n"


def comparison_markdown(reports: list[dict]) -> str:
    """One row per run, one column per (benchmark, metric) any run has."""
    columns = list(dict.fromkeys((name, metric) for report in reports for name, metric, _ in rate_rows(report)))
    header = ["run", "method", "harmful ratio"] + [f"{name}: {METRIC_NAMES[metric]}" for name, metric in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for report in reports:
        run, cells = report["run"], {(n, m): a for n, m, a in rate_rows(report)}
        ratio = "" if run["harmful_ratio"] is None else f"{run['harmful_ratio']:g}"
        row = [run["label"], run["method"] or "", ratio]
        row += [format_rate(cells[c]) if c in cells else "" for c in columns]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
