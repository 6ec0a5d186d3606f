"""benchmarks/accelerator.py: its FLOP count against the model's own weights, and a CPU smoke run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import accelerator  # noqa: E402


@pytest.mark.parametrize("shape", ["tiny", "smollm2-135m"])
def test_decoder_weights_are_the_models_weights_without_embeddings_and_norms(shape):
    import jax
    from flax import nnx

    from stjax.models import ModelConfig, init_model

    hf = accelerator.hf_dict(shape) | {"num_hidden_layers": 2}
    config = ModelConfig.from_hf_dict(hf, source=shape)
    model = jax.eval_shape(lambda: nnx.split(init_model(config))[1])
    matrices = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(model)
                   if x.ndim >= 2 and "embed" not in jax.tree_util.keystr(path) and "lm_head" not in jax.tree_util.keystr(path))
    assert accelerator.decoder_weights(hf) == matrices


def test_model_flops_count_backward_and_online_passes():
    hf = accelerator.hf_dict("tiny")
    n, d, v = accelerator.decoder_weights(hf), hf["hidden_size"], hf["vocab_size"]
    lora = accelerator.model_flops(hf, rows=1, real_tokens=1, loss_tokens=1, full=False)
    full = accelerator.model_flops(hf, rows=1, real_tokens=1, loss_tokens=1, full=True)
    attention = 4 * hf["num_hidden_layers"] * d * 1 / 2  # one token attending to itself
    assert lora == pytest.approx(2 * (2 * n + attention) + 2 * (2 * d * v))
    assert full == pytest.approx(3 * (2 * n + attention) + 3 * (2 * d * v))
    online = accelerator.model_flops(hf, rows=1, real_tokens=1, loss_tokens=1, full=False, online_tokens=((1, 1),))
    assert online - lora == pytest.approx(2 * n + attention)


def test_cpu_smoke_run_prints_every_variant(capsys):
    accelerator.main(["--shape", "tiny", "--layers", "1", "--batch", "2", "--length", "32", "--warmup", "0",
                      "--repeats", "1", "--peak-tflops", "1"])
    out = capsys.readouterr().out
    for variant in ("sft (lora)", "pact cached (lora)", "pact online (lora)"):
        line = next(l for l in out.splitlines() if l.startswith(variant))
        assert line.rstrip().endswith("%"), line  # MFU against the given peak
