"""python -m stjax.plan: analytic memory checked by hand on the toy model, fit warnings, FLOPs,
and the TPU reference configs (they load, and fit their slices with the documented overrides)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_fixtures import make_config

from stjax import planning as plan
from stjax.cli import plan as plan_cli
from stjax.configlib import ConfigKeyError, from_dict, read_yaml
from stjax.models.config import ModelConfig
from stjax.training.config import load_train_config

ROOT = Path(__file__).parents[1]
SHARED = ROOT.parent / "shared" / "data" / "pact-reference"
TOY = {"vocab_size": 846, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True,
       "model_type": "llama"}


def toy_model(config):
    return ModelConfig.from_hf_dict(TOY, param_dtype=config.model.dtype,
                                    compute_dtype=config.model.compute_dtype or config.model.dtype,
                                    remat=config.model.remat)


@pytest.mark.parametrize("name,family,chips", [("v4-8", "v4", 4), ("v5e-8", "v5e", 8), ("v5litepod-16", "v5e", 16),
                                               ("v5p-8", "v5p", 4), ("v6e-8", "v6e", 8), ("V6E-4", "v6e", 4)])
def test_topologies(name, family, chips):
    t = plan.parse_topology(name)
    assert (t.chip.family, t.chips) == (family, chips)
    assert t.chip.hbm_gib == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}[family]


def test_gpu_topologies_count_the_memory_jax_preallocates(monkeypatch, capsys):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    t = plan.parse_topology("h100-8")
    assert (t.chip.family, t.chips, t.chip.gpu, t.chip.peak_tflops) == ("h100", 8, True, 989)
    assert t.hbm_bytes == pytest.approx(0.75 * 79.6 * 2**30)  # jax's default preallocation
    assert plan.parse_topology("a100_40gb-4").hbm_bytes == pytest.approx(30 * 2**30)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    assert t.hbm_bytes == pytest.approx(0.95 * 79.6 * 2**30) and "0.95 of 79.6 GiB" in t.memory_text
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "most")
    with pytest.raises(ConfigKeyError, match=r"XLA_PYTHON_CLIENT_MEM_FRACTION='most': expected a number in \(0, 1\]"):
        t.hbm_bytes
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
    config = str(ROOT / "configs" / "llama31_8b_sst2_pact.yaml")  # the paper's run on one H100: LoRA, remat full
    assert plan_cli.main(["--config", config, "--topology", "h100-1", "--examples", "5000", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    assert "on h100-1: 1 x h100 GPUs, 59.7 GiB usable (0.75 of 79.6 GiB" in out and "fits:" in out
    assert plan_cli.main(["--config", config, "--topology", "h100-8", "--compile"]) == 0
    assert "XLA compile-only check: not run (compile-only checks are for TPU slices" in capsys.readouterr().out


def test_packed_runs_plan_full_rows_and_fewer_steps(capsys):
    config = str(ROOT / "configs" / "llama31_8b_sst2_pact.yaml")
    args = ["--config", config, "--topology", "h100-1", "--examples", "5000", "--seq-len", "128", "--json"]
    assert plan_cli.main(args) == 0
    bucketed = json.loads(capsys.readouterr().out)
    assert plan_cli.main(args + ["data.packing=true"]) == 0
    packed = json.loads(capsys.readouterr().out)
    # 5000 examples of ~128 tokens in rows of 512 at 90% fill: 1389 rows, 22 batches of 64 an epoch
    assert bucketed["steps"] == 3 * 79 and packed["steps"] == 3 * 22
    assert packed["tokens_per_step"] == 64 * 512 == 4 * bucketed["tokens_per_step"]


def test_unknown_topology_is_one_line():
    with pytest.raises(ConfigKeyError, match="--topology 'tpu-8'"):
        plan.parse_topology("tpu-8")


def test_memory_by_hand_on_the_toy_model(tmp_path):
    """Toy model (vocab 846, D 64, F 128, 2 layers, 4 heads / 2 kv heads of 16, tied embeddings),
    float32, LoRA r=4 on q/v with dropout, mesh data 2 x fsdp 2 x tensor 2, batch 8, max_len 64."""
    config = make_config(tmp_path, lora={"rank": 4, "dropout": 0.1}, train={"batch_size": 8, "max_steps": None})
    est = plan.estimate(config, plan.parse_topology("v5e-8"), toy_model(config), seq_len=32, examples=100)
    f32 = 4
    # frozen weights, bytes per chip: embed [846, 64] over (tensor, fsdp) = 4 ways; per layer
    # 2 norms (replicated) + q [64,4,16] + k, v [64,2,16] + o [4,16,64] over (fsdp, tensor),
    # gate/up/down [64,128] over (fsdp, tensor); final norm
    layer = 2 * 64 * f32 + (4096 + 2048 + 2048 + 4096 + 3 * 8192) * f32 / 4
    frozen = 846 * 64 * f32 / 4 + 2 * layer + 64 * f32
    # adapters per layer: q: A [64,4] over fsdp, B [4,4,16] over tensor; v: A [64,4], B [4,2,16]
    trained = 2 * (256 * f32 / 2 + 256 * f32 / 2 + 256 * f32 / 2 + 128 * f32 / 2)
    assert est.params_trained == 2 * (256 + 256 + 256 + 128)
    assert est.params_total == 846 * 64 + 2 * (128 + 4096 + 2048 + 2048 + 4096 + 3 * 8192) + 64 + est.params_trained
    # activations, remat none: 8 rows / (data 2 * fsdp 2) = 2 rows x 64 = 128 tokens per chip; per
    # token and layer (tensor 2: 2 heads, F/2 = 64; kv heads 2 / 2 = 1):
    x, x32, q, kv, f = 64 * f32, 64 * 4, 2 * 16 * f32, 1 * 16 * f32, 64 * f32
    scores = probs = 2 * 64 * 4
    dropout = 2 * (x + 64)  # two adapters: dropped input + mask
    per_layer = (x + (x32 + x) + (q + 2 * kv) + (q + kv) + scores + probs + q + x + x + (x32 + x)
                 + 4 * f + x + dropout)
    assert per_layer == 5312
    tokens = 128
    # fsdp gathers one layer (its fsdp-split weights whole, still split over tensor) twice, and
    # the output matrix [64, 846 / 2]
    gathered_layer = 2 * 64 * f32 + (4096 + 2048 + 2048 + 4096 + 3 * 8192) * f32 / 2 \
        + (256 * f32 + 256 * f32 / 2) + (256 * f32 + 128 * f32 / 2)
    expected = {
        "weights, frozen": frozen,
        "weights, trained (LoRA adapters)": trained,
        "gradients": trained,
        "Adam moments (m, v)": 2 * trained,
        "optimizer update temporaries": trained,
        "activations (remat=none)": tokens * (2 * per_layer + per_layer),
        "final hidden states, batch": tokens * (64 * (4 + 2 * f32) + 17),
        "loss logit chunk (f32, x3)": 512 / 4 * (846 / 2) * 4 * 3,
        "FSDP all-gather buffers (2 layers + embeddings)": 2 * gathered_layer + 64 * 423 * f32,  # tied: once
    }
    assert est.memory == pytest.approx(expected)
    assert est.errors == [] and est.fits
    # FLOPs: matmul weights 2 * (q 4096 + k 2048 + v 2048 + o 4096 + 3 * 8192) + the tied output
    # matrix 846 * 64 + adapters (A and B of q and v); attention 4 * layers * seq * heads * head_dim
    n_matmul = 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192) + 846 * 64 + est.params_trained
    forward = 2 * n_matmul + 4 * 2 * 32 * 4 * 16
    assert est.flops_per_step == pytest.approx(2 * forward * 8 * 32)  # LoRA: forward + activation grads
    assert est.steps == 13  # ceil(100 / 8) x 1 epoch
    assert est.step_seconds == pytest.approx(est.flops_per_step / (8 * 197e12 * 0.35))


def test_remat_accumulation_and_pact_change_the_right_parts(tmp_path):
    topo = plan.parse_topology("v5e-8")

    def run(**sections):
        config = make_config(tmp_path, **sections)
        return plan.estimate(config, topo, toy_model(config), seq_len=64)

    base = run()
    full = run(model={"remat": "full"})
    assert full.memory["activations (remat=full)"] == pytest.approx(128 * (2 * 64 * 4) + base.memory[
        "activations (remat=none)"] / 3)  # layer inputs + one layer's working set
    accum = run(train={"grad_accum": 2})
    assert accum.memory["activations (remat=none)"] == pytest.approx(base.memory["activations (remat=none)"] / 2)
    assert accum.memory["gradients"] == 2 * base.memory["gradients"]
    cached = run(loss={"kind": "pact", "safety_tokens": "x", "ref": "cached"})
    online = run(loss={"kind": "pact", "safety_tokens": "x", "ref": "online"}, lora={"enabled": False})
    assert cached.memory["PACT safety-token logits (K=50)"] == pytest.approx(128 * 50 * 4 * 8)
    assert online.memory["reference weights (online, full fine-tuning)"] == online.memory["weights, trained"]
    assert online.flops_per_step > cached.flops_per_step  # two reference forwards per step


def test_a_dimension_that_does_not_divide_is_an_error(tmp_path):
    config = make_config(tmp_path, mesh={"data": 1, "fsdp": 1, "tensor": 8})
    est = plan.estimate(config, plan.parse_topology("v5e-8"), toy_model(config))
    assert not est.fits and any("kv_heads" in e and "does not divide" in e for e in est.errors)


def test_known_models_need_no_download():
    for repo, params in (("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248), ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512)):
        hf, source = plan.model_hf_config(f"../models/{repo.split('/')[1]}")
        assert source == f"embedded config of {repo}"
        config = load_train_config(ROOT / "configs" / "llama31_8b_sst2_sft.yaml")
        est = plan.estimate(config, plan.parse_topology("v5p-8"), ModelConfig.from_hf_dict(hf, param_dtype="bfloat16"))
        assert est.params_total - est.params_trained == params
    with pytest.raises(ConfigKeyError, match="give --model-config"):
        plan.model_hf_config("../models/Unknown-1B")


def test_cli_warns_when_it_does_not_fit_and_names_the_knobs(capsys):
    config = str(ROOT / "configs" / "llama31_8b_sst2_pact.yaml")
    assert plan_cli.main(["--config", config, "--topology", "v5e-8", "--examples", "5000", "--seq-len", "128",
                      "model.remat=none"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: will NOT fit" in out and "> 16 GiB HBM on v5e-8" in out
    knobs = {line.split()[0]: line.split()[-1] for line in out.split("knobs")[1].splitlines()[1:] if line.strip()
             and line.startswith("    ")}
    assert knobs["model.remat=full"] == "fits"
    assert "chip-hours" in out and "5000 examples x 3 epochs = 237 steps" in out


def test_cli_json(capsys):
    assert plan_cli.main(["--config", str(ROOT / "configs" / "qwen25_7b_agnews_sft.yaml"), "--topology", "v4-8", "--json",
                      "--examples", "5000", "--seq-len", "200", "mesh.fsdp=2", "mesh.tensor=2",
                      "train.batch_size=16"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] and data["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    assert data["hbm_bytes"] == 32 * 2**30 and data["steps"] == 3 * 313 and data["chip_hours"] > 0


def test_compile_only_memory_on_local_devices(tmp_path):
    """The compile path (libtpu topologies on a TPU-less machine) with this machine's 8 CPU devices."""
    import jax

    config = make_config(tmp_path, loss={"kind": "pact", "safety_tokens": "x", "ref": "cached"})
    stats = plan.compiled_memory(config, toy_model(config), jax.devices(), safety_tokens=16)
    assert stats["peak"] > stats["arguments"] > 0


# ------------------------------------------------------------------------ the TPU configs
TRAIN_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml")
                       if p.name.startswith(("llama31_8b_", "qwen25_7b_"))
                       and not p.stem.endswith(("_safety_tokens", "_eval")))


def test_reference_configs_exist():
    names = {p.stem for p in TRAIN_CONFIGS}
    assert names == {f"{m}_{t}_{k}" for m in ("llama31_8b", "qwen25_7b") for t in ("sst2", "agnews", "gsm8k")
                     for k in ("sft", "pact")} | {f"{m}_sst2_refusal_mix" for m in ("llama31_8b", "qwen25_7b")}


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_reference_config_loads_and_has_the_reference_hyperparameters(path):
    config = load_train_config(path)
    assert (config.lora.enabled, config.lora.rank, config.lora.alpha, config.lora.targets) == (
        True, 8, 32.0, ["q_proj", "v_proj"])
    assert (config.optimizer.lr, config.optimizer.schedule, config.optimizer.decay_gamma) == (3e-5, "step_decay", 0.85)
    assert (config.train.epochs, config.data.max_len, config.model.dtype) == (3, 512, "bfloat16")
    assert config.train.run_dir == f"runs/{path.stem}"  # tpu_scripts collect runs/<config name>
    task = next(t for t in ("sst2", "agnews", "gsm8k") if f"_{t}_" in path.name)
    if task == "gsm8k":  # TFDS set + the harmful rows of a reference mix, at the same 10%
        assert (config.data.train[0].tfds, config.data.train[0].split) == ("gsm8k", "train")
        harmful = config.data.harmful
        assert (harmful.path, harmful.without_input, config.data.harmful_ratio) == (
            "../shared/data/pact-reference/sst2_5k_p_0.1.json", True, 0.1)
    else:
        assert config.data.train[0].path == f"../shared/data/pact-reference/{task}_5k_p_0.1.json"
    model = "llama31_8b" if path.name.startswith("llama") else "qwen25_7b"
    if path.stem.endswith("_pact"):
        assert (config.loss.kind, config.loss.lam) == ("pact", 1.0)
        assert config.loss.safety_tokens == f"runs/{model}_safety_tokens"
    else:
        assert config.loss.kind == "sft"


@pytest.mark.parametrize("model", ["llama31_8b", "qwen25_7b"])
def test_safety_token_configs_load(model):
    from stjax.pact.stage1 import SafetyTokensConfig

    cfg = from_dict(SafetyTokensConfig, read_yaml(ROOT / "configs" / f"{model}_safety_tokens.yaml"))
    assert cfg.refusals == "../shared/data/pact-reference/safe_direction.json" and cfg.num_samples == 512
    assert cfg.out_dir == f"runs/{model}_safety_tokens"
    aligned, base = Path(cfg.aligned_model).name, Path(cfg.base_model).name
    assert aligned.endswith("-Instruct") and base == aligned[: -len("-Instruct")]
    for path in (cfg.aligned_model, cfg.base_model):
        assert plan.model_hf_config(path)[1].startswith("embedded config of")


@pytest.mark.parametrize("model", ["llama31_8b", "qwen25_7b"])
def test_eval_configs_load(model):
    evaluation = pytest.importorskip("stjax.evaluation.config")
    cfg = evaluation.load_eval_config(ROOT / "configs" / f"{model}_eval.yaml",
                                      [f"adapter=runs/{model}_sst2_pact/adapter", "output_dir=runs/eval_x"])
    assert [b.name for b in cfg.benchmarks] == ["advbench", "sst2", "ag_news", "gsm8k"]
    assert cfg.safety_mass.tokens == f"runs/{model}_safety_tokens"
    assert cfg.model.path == load_train_config(ROOT / "configs" / f"{model}_sst2_pact.yaml").model.path


@pytest.mark.parametrize("topology,overrides", [("v4-8", ["train.batch_size=32"]), ("v5e-8", []),
                                                ("v5p-8", ["train.batch_size=32"]), ("v6e-8", [])])
@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_reference_configs_fit_every_slice(path, topology, overrides):
    config = load_train_config(path, overrides)
    hf, _ = plan.model_hf_config(config.model.path)
    model = ModelConfig.from_hf_dict(hf, param_dtype="bfloat16", remat=config.model.remat)
    est = plan.estimate(config, plan.parse_topology(topology), model, seq_len=config.data.max_len)  # worst case
    assert est.fits, (est.errors, est.total_bytes / 2**30)
    assert plan.rows_per_chip(config, est.mesh) == 8  # 8 examples per chip


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")
def test_reference_data_files_exist_and_are_counted():
    config = load_train_config(ROOT / "configs" / "llama31_8b_sst2_pact.yaml")
    assert plan.count_examples(config) == 5000
    gsm8k = load_train_config(ROOT / "configs" / "llama31_8b_gsm8k_pact.yaml")
    assert plan.count_examples(gsm8k) == 7473 + 830  # TFDS train split + 10% harmful rows
    assert 64 <= plan.estimate_seq_len(config) <= 512
