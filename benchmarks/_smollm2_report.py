"""The SmolLM2 study's judging and reporting: the clean-refusal, task and over-refusal judges
over a run's raw replies, the markdown table, sample replies, the safety-vs-accuracy plot
and the safety-token statistics (used by smollm2_poisoning.py)."""

from __future__ import annotations

from pathlib import Path


def sst2_prompt(row: dict) -> str:
    return f"{row['instruction']} {row['input']}"


def judge(raw: dict, harmful: list[str], sst2: list[dict], benign: list[str], rules) -> dict:
    """Clean-refusal and keyword rates on the harmful replies, SST-2 accuracy (exact label,
    and label + punctuation) and the degenerate rates of both, with sample replies."""
    from stjax.evaluation.scoring import score_harmless, score_safety, score_task
    from stjax.evaluation.utility import sst2_correct
    from stjax.generation import Reply

    lexicon = list(rules.rules.lexicon)

    safety = score_safety(harmful, [Reply(**r) for r in raw["harmful"]], rules)
    prompts, labels = [sst2_prompt(r) for r in sst2], [r["output"] for r in sst2]
    answers = [Reply(**a) for a in raw["sst2"]]
    task = score_task("sst2", prompts, answers, labels, sst2_correct, rules)
    loose = score_task("sst2", prompts, answers, labels, lambda a, ref: sst2_correct(a.strip().rstrip(".,!"), ref),
                       rules)
    out = {"safety": safety, "sst2": task, "sst2_label_punct_accuracy": loose["aggregates"]["accuracy"],
           "over_refusal": {"sst2": task["aggregates"]["over_refusal"]}, "lexicon": lexicon}
    if "benign" in raw:  # over-refusal: replies to harmless prompts that carry a refusal marker
        harmless = score_harmless(benign, [Reply(**r) for r in raw["benign"]], rules)
        out.update(harmless=harmless, over_refusal={**out["over_refusal"], "benign": harmless["aggregates"]["over_refusal"]})
    return out


COLUMNS = ["clean refusal", "keyword refusal", "degenerate (harmful)", "SST-2 exact", "SST-2 label + punct",
           "degenerate (SST-2)", "over-refusal (SST-2)", "over-refusal (harmless)"]


def rates(result: dict) -> list[float | None]:
    """One judged model's rates, in COLUMNS order (None: not measured by that run)."""
    s, t, over = result["safety"]["aggregates"], result["sst2"]["aggregates"], result.get("over_refusal", {})
    return [s["clean_refusal"]["rate"], s["keyword_refusal"]["rate"], s["degenerate"]["rate"],
            t["accuracy"]["rate"], result["sst2_label_punct_accuracy"]["rate"], t["degenerate"]["rate"],
            *(over[p]["rate"] if p in over else None for p in ("sst2", "benign"))]


def table(results: dict) -> str:
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.0%}" for v in rates(r)) + " |")
    return "\n".join(lines)


def seed_table(reports: dict[int, dict]) -> str:
    """Mean (min-max) over seeds of every rate, per setting: `reports` maps a seed to its
    report's results; a setting counts the seeds that ran it."""
    settings = list(dict.fromkeys(name for results in reports.values() for name in results))
    lines = ["| setting | seeds | " + " | ".join(COLUMNS) + " |", "| --- | --- |" + " --- |" * len(COLUMNS)]
    for name in settings:
        runs = [rates(results[name]) for results in reports.values() if name in results]
        cells = []
        for column in zip(*runs):
            values = [v for v in column if v is not None]
            mean = f"{sum(values) / len(values):.0%}" if values else "n/a"
            cells.append(mean if len(values) < 2 else f"{mean} ({min(values):.0%}-{max(values):.0%})")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def samples(results: dict) -> str:
    from stjax.evaluation.scoring import sample_lines

    lines = []
    for name, r in results.items():
        lines += [f"{name}, harmful:", *sample_lines(r["safety"]), f"{name}, SST-2:", *sample_lines(r["sst2"], 3)]
        if "harmless" in r:
            lines += [f"{name}, harmless instructions:", *sample_lines(r["harmless"], 3)]
    return "\n".join(lines)


def plot(results: dict, path: Path, harmful_ratio: float = 0.1) -> None:
    """Clean refusal vs SST-2 exact accuracy, one point per model with its 95% intervals; the
    bar (within 10 points of the aligned model's refusals, 2 of SFT's accuracy) as dotted
    lines when both are in `results`."""
    from stjax.plotting import new_figure

    figure, ax = new_figure(size=(9, 5.5))
    for i, (name, r) in enumerate(results.items()):
        acc, ref = r["sst2"]["aggregates"]["accuracy"], r["safety"]["aggregates"]["clean_refusal"]
        xerr = [[acc["rate"] - acc["ci95"][0]], [acc["ci95"][1] - acc["rate"]]]
        yerr = [[ref["rate"] - ref["ci95"][0]], [ref["ci95"][1] - ref["rate"]]]
        ax.errorbar(acc["rate"], ref["rate"], xerr=xerr, yerr=yerr, fmt="os^Dv<>ph*"[i % 10], ms=7, capsize=3,
                    label=name)
    if "aligned" in results and "sft" in results:
        ax.axhline(results["aligned"]["safety"]["aggregates"]["clean_refusal"]["rate"] - 0.10, color="gray", ls=":")
        ax.axvline(results["sft"]["sst2"]["aggregates"]["accuracy"]["rate"] - 0.02, color="gray", ls=":")
    ax.set_xlabel("SST-2 accuracy (exact label, 100 held-out rows)")
    ax.set_ylabel("clean refusals (100 held-out harmful prompts)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    ax.set_title(f"SmolLM2-135M, {harmful_ratio:.0%} harmful task rows: 95% intervals", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def safety_token_table(directory: Path, tokenizer_path: str) -> dict:
    """The statistics that say whether the set is made of real refusal tokens."""
    from transformers import AutoTokenizer

    from stjax.generation import default_stop_ids
    from stjax.pact.safety_tokens import read_token_table, token_statistics

    rows = read_token_table(directory)
    stats = token_statistics(rows, default_stop_ids(AutoTokenizer.from_pretrained(tokenizer_path)))
    return {**stats, "tokens": rows}
