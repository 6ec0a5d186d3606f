"""The embedded default run end to end, and the toy world it stands on."""

import json

from stjax import train as train_cli


def test_default_run_shows_sft_eroding_refusals_while_learning_the_task(tmp_path, capsys):
    assert train_cli.main(["--run-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "report.json").read_text())
    aligned, sft, pact = results["aligned"], results["sft"], results["pact"]
    # the world is faithful: the aligned model refuses, plain SFT on a 10% harmful mix erodes
    # that by at least 30 points while learning the task
    assert aligned["refusal_rate"] >= 0.9
    assert sft["refusal_rate"] <= aligned["refusal_rate"] - 0.3
    assert sft["task_accuracy"] >= 0.8 > aligned["task_accuracy"]
    assert 0.0 <= pact["refusal_rate"] <= 1.0 and 0.0 <= pact["task_accuracy"] <= 1.0
    out = capsys.readouterr().out
    assert "| SFT, 10% harmful rows |" in out and "| PACT, 10% harmful rows |" in out
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "safety_tokens" / "safety_tokens.tsv").is_file()
    from PIL import Image

    for plot in ("refusal_vs_accuracy.png", "training_curves.png"):
        with Image.open(tmp_path / plot) as image:  # a real, non-blank picture
            assert image.size[0] > 400 and len(set(image.convert("L").getdata())) > 10, plot
