"""Multi-process training: 2 processes x 4 CPU devices (gloo) == 1 process x 8 devices.

One pair of worker processes (this file run as a script) joins a local coordinator through
`python -m stjax.train --coordinator ... --num-processes 2 --process-id I` and runs, in one
session: a config that differs between the processes (must fail on both, with one line),
`python -m stjax.safety_tokens` with its mesh spread over both processes, SFT, PACT with a cached reference (LoRA) and PACT with an online reference (full
fine-tuning), and a SIGTERM sent to process 1 only.
Each process runs in its own working directory with the same relative run_dir, so
anything process 1 writes would show up in its directory; checkpoints go to one shared
absolute directory. The same configs run in this (8-device) pytest process as the reference.

Losses agree to rtol 1e-5 (measured: about 1e-7; the only difference is the order of the
cross-process reductions).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

START = time.monotonic()
TIMEOUT_S = 240  # the whole worker session; each process is killed past it
RTOL = 1e-5
STEPS = 4


# ------------------------------------------------------------------------ worker side
def _worker(plan_file: str) -> int:
    """Runs every job of the plan through the CLI, as process STJAX_TEST_PROCESS of 2."""
    plan = json.loads(Path(plan_file).read_text())
    pid = int(os.environ["STJAX_TEST_PROCESS"])
    os.chdir(plan["cwd"][pid])
    from stjax.cli import safety_tokens, train
    from stjax.cli.common import run_cli
    from stjax.data.batching import BatchIterator

    flags = ["--coordinator", plan["coordinator"], "--num-processes", "2", "--process-id", str(pid)]
    codes = {}
    for job in plan["jobs"]:
        overrides = job.get("overrides", []) + job.get("overrides_by_process", {}).get(str(pid), [])
        original_next = BatchIterator.__next__
        sigterm = job.get("sigterm")
        if sigterm and sigterm["process"] == pid:  # SIGTERM to this process only, at batch n
            def next_with_signal(self, n=sigterm["batch"], drawn=[0], original=original_next):  # noqa: B006
                drawn[0] += 1
                if drawn[0] == n:
                    os.kill(os.getpid(), signal.SIGTERM)
                return original(self)

            BatchIterator.__next__ = next_with_signal
        print(f"=== job {job['name']}\nstarted at {time.monotonic() - START:.1f} s", file=sys.stderr, flush=True)
        try:
            name, program = (("stjax safety-tokens", safety_tokens) if job.get("program") == "safety_tokens"
                             else ("stjax train", train))
            codes[job["name"]] = run_cli(name, program.main, [*flags, "--config", job["config"], *overrides])
        finally:
            BatchIterator.__next__ = original_next
        sys.stdout.flush()
        sys.stderr.flush()
        Path(plan["results"][pid]).write_text(json.dumps(codes))
    print(f"=== done at {time.monotonic() - START:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    sys.exit(_worker(sys.argv[2]))


# ------------------------------------------------------------------------ test side
from trainer_fixtures import BASE, make_config, make_safety_tokens

import stjax.toy  # noqa: F401  registers toy://
from stjax.locations import resolve
from stjax.training.metrics_log import read_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _sections(**sections) -> dict:
    data = copy.deepcopy(BASE)
    data["data"]["buckets"] = [64]  # one batch width: one compile per program
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def _jobs(root: Path, safety: Path) -> list[dict]:
    """(name, config sections); SFT on the brief's mesh, PACT with the fsdp axis across the
    processes (so parameters, adapters and exports are sharded over both)."""
    spread = {"data": 1, "fsdp": 4, "tensor": 2}
    jobs = [
        ("sft", _sections(train={"max_steps": STEPS})),
        ("pact_cached", _sections(mesh=spread, train={"max_steps": STEPS},
                                  loss={"kind": "pact", "safety_tokens": str(safety), "ref": "cached", "lam": 5.0})),
        ("pact_online_full", _sections(mesh=spread, lora={"enabled": False}, train={"max_steps": STEPS},
                                       loss={"kind": "pact", "safety_tokens": str(safety), "ref": "online",
                                             "lam": 5.0})),
    ]
    jobs.append(("sigterm", _sections(train={"max_steps": 40, "epochs": 10}, checkpoint={"every_steps": 100})))
    out = []
    for name, sections in jobs:
        sections["train"]["run_dir"] = f"runs/{name}"  # relative: each process has its own cwd
        sections["checkpoint"]["dir"] = str(root / "checkpoints" / name)  # shared
        out.append({"name": name, "sections": sections})
    return out


@pytest.fixture(scope="module")
def safety_dir(tmp_path_factory):
    return make_safety_tokens(tmp_path_factory.mktemp("safety") / "st")


def _safety_tokens_config(root: Path) -> Path:
    """stjax safety-tokens on the toy random model vs a reseeded copy, its mesh
    spread over both processes; out_dir is relative (only process 0 may write it)."""
    from stjax.models import from_pretrained, init_model, save_pretrained
    from stjax.toy import corpus

    aligned = resolve("toy://random-model")
    save_pretrained(init_model(from_pretrained(aligned).config, seed=5), root / "base")
    rows = [{"input": p, "output": r} for p, r in zip(corpus.harmful_prompts(12, 0), corpus.REFUSALS * 4)]
    (root / "refusals.json").write_text(json.dumps(rows))
    config = {"aligned_model": str(aligned), "base_model": str(root / "base"), "tokenizer": str(aligned),
              "refusals": str(root / "refusals.json"), "out_dir": "runs/safety_tokens", "top_k": 16,
              "batch_size": 4, "dtype": "float32", "mesh": {"data": 1, "fsdp": 4, "tensor": 2}}
    (root / "safety_tokens.yaml").write_text(yaml.safe_dump(config))
    return root / "safety_tokens.yaml"


def _reference_safety_tokens(config_file: Path, out_dir: Path) -> Path:
    from stjax.configlib import from_dict
    from stjax.pact import stage1

    config = yaml.safe_load(config_file.read_text())
    stage1.run(from_dict(stage1.SafetyTokensConfig, {**config, "out_dir": str(out_dir)}),
                      progress=False)
    return out_dir


@pytest.fixture(scope="module")
def session(tmp_path_factory, safety_dir):
    """Starts the 2-process worker session, runs the 1-process references meanwhile, waits."""
    from stjax.training.build import build_trainer

    for asset in ("toy://random-model", BASE["data"]["train"][0]["path"], BASE["data"]["harmful"]["path"]):
        resolve(asset)  # built once here, not raced by the workers (STJAX_CACHE is inherited)
    root = tmp_path_factory.mktemp("multihost")
    jobs = _jobs(root, safety_dir)
    for job in jobs:
        job["config"] = str(root / f"{job['name']}.yaml")
        Path(job["config"]).write_text(yaml.safe_dump(job["sections"]))
    safety_config = _safety_tokens_config(root)
    mismatch = {"name": "mismatch", "config": jobs[0]["config"], "overrides_by_process": {"1": ["train.seed=1"]}}
    plan = {
        "coordinator": f"localhost:{_free_port()}",
        "cwd": [str(root / "p0"), str(root / "p1")],
        "results": [str(root / "codes0.json"), str(root / "codes1.json")],
        "jobs": [mismatch, {"name": "safety_tokens", "program": "safety_tokens", "config": str(safety_config)}]
        + [{k: v for k, v in j.items() if k != "sections"} for j in jobs],
    }
    for job in plan["jobs"]:
        if job["name"] == "sigterm":
            job["sigterm"] = {"process": 1, "batch": 3}
    (root / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONUNBUFFERED": "1",
           # jobs with the same shapes (sft, sigterm) compile once
           "JAX_COMPILATION_CACHE_DIR": str(root / "jax-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    procs, logs = [], []
    for pid in (0, 1):
        Path(plan["cwd"][pid]).mkdir()
        logs.append((root / f"log{pid}.txt").open("w"))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", str(root / "plan.json")], cwd=plan["cwd"][pid],
            env={**env, "STJAX_TEST_PROCESS": str(pid)}, stdout=logs[-1], stderr=subprocess.STDOUT,
            start_new_session=True))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        references = {"safety_tokens": _reference_safety_tokens(safety_config, root / "reference" / "safety_tokens")}
        for job in jobs:  # 1 process x 8 devices, meanwhile
            if job["name"] == "sigterm":
                continue
            sections = copy.deepcopy(job["sections"])
            sections["checkpoint"]["dir"] = str(root / "reference" / job["name"] / "checkpoints")
            config = make_config(root / "reference" / job["name"], **sections)
            trainer = build_trainer(config)
            trainer.run()
            references[job["name"]] = (read_metrics(config.train.run_dir), trainer, config)
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in logs:
            log.close()
    outputs = [(root / f"log{pid}.txt").read_text() for pid in (0, 1)]
    codes = [json.loads(Path(f).read_text()) if Path(f).is_file() else {} for f in plan["results"]]
    return {"root": root, "codes": codes, "outputs": outputs, "references": references, "jobs": jobs,
            "returncodes": [p.returncode for p in procs]}


def _job_output(output: str, name: str) -> str:
    """The part of a worker's log that belongs to one job."""
    parts = output.split("=== job ")
    return next((p for p in parts if p.startswith(name + "\n")), "")


def _check_finished(session, name, code=0):
    codes = session["codes"]
    detail = "\n".join(f"--- process {p} (exit {session['returncodes'][p]}):\n{session['outputs'][p][-3000:]}"
                       for p in (0, 1))
    assert all(c.get(name) == code for c in codes), f"job {name}: exit codes {[c.get(name) for c in codes]}\n{detail}"


def check_config_mismatch_fails_clearly_on_every_process(session):
    assert [c.get("mismatch") for c in session["codes"]] == [2, 2], session["outputs"]
    for output in session["outputs"]:
        errors = [line for line in _job_output(output, "mismatch").splitlines() if line.startswith("stjax train:")]
        assert len(errors) == 1, errors
        assert "the resolved config differs between processes" in errors[0]
        assert "train.seed: 0 on process 0, 1 on process 1" in errors[0]


def check_two_processes_match_one_process(session, name):
    _check_finished(session, name)
    multi = read_metrics(session["root"] / "p0" / "runs" / name)
    single = session["references"][name][0]
    assert [m["step"] for m in multi] == [m["step"] for m in single] == list(range(1, STEPS + 1))
    keys = ["loss", "grad_norm", "tokens"] + (["kl", "gate"] if name.startswith("pact") else [])
    for m, s in zip(multi, single):
        np.testing.assert_allclose([m[k] for k in keys], [s[k] for k in keys], rtol=RTOL, atol=1e-7,
                                   err_msg=f"{name} step {m['step']}")


def check_safety_tokens_match_one_process(session):
    from safetensors.numpy import load_file

    _check_finished(session, "safety_tokens")
    multi = load_file(session["root"] / "p0" / "runs" / "safety_tokens" / "safety_tokens.safetensors")
    single = load_file(session["references"]["safety_tokens"] / "safety_tokens.safetensors")
    np.testing.assert_array_equal(multi["ids"], single["ids"])
    np.testing.assert_allclose(multi["v"], single["v"], rtol=RTOL, atol=1e-6)


def check_only_process_0_writes_logs_metrics_and_exports(session):
    for name in ("sft", "pact_cached", "pact_online_full"):
        _check_finished(session, name)
        run = session["root"] / "p0" / "runs" / name
        assert (run / "metrics.jsonl").is_file() and (run / "config.yaml").is_file()
        export = run / ("model" if name == "pact_online_full" else "adapter")
        want = {"config.json", "model.safetensors"} if name == "pact_online_full" else {
            "adapter_config.json", "adapter_model.safetensors"}
        assert want <= set(os.listdir(export))
    assert list((session["root"] / "p1").rglob("*")) == [], "process 1 wrote files"
    assert "distributed: process 0 of 2" in session["outputs"][0]
    assert "distributed:" not in session["outputs"][1]


def check_exports_equal_one_process_exports(session):
    from safetensors.numpy import load_file

    for name, file in (("pact_cached", "adapter/adapter_model.safetensors"),
                       ("pact_online_full", "model/model.safetensors")):
        _check_finished(session, name)
        multi = load_file(session["root"] / "p0" / "runs" / name / file)
        single = load_file(session["references"][name][2].train.run_dir + "/" + file)
        assert sorted(multi) == sorted(single)
        for key in single:
            np.testing.assert_allclose(multi[key], single[key], rtol=1e-4, atol=5e-5, err_msg=key)


def check_checkpoint_is_complete_and_restores_on_one_process(session):
    from stjax.training.build import build_trainer

    _check_finished(session, "sft")
    directory = session["root"] / "checkpoints" / "sft"
    assert sorted(int(s) for s in os.listdir(directory)) == [3, 4]  # every 3 steps, keep 2, final
    for step in ("3", "4"):
        state = directory / step / "state"
        assert (directory / step / "commit_success.txt").is_file() and (state / "_METADATA").is_file()
        assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()
    _, reference, config = session["references"]["sft"]
    restored = build_trainer(make_config(config.train.run_dir + "-restored", checkpoint={"dir": str(directory)},
                                         data={"buckets": [64]}))  # the checkpoint's recorded config
    assert restored.maybe_resume() == STEPS and restored.batches.get_state() == {"epoch": 0, "index": STEPS}
    import jax

    for a, b in zip(jax.tree.leaves(restored.state.params), jax.tree.leaves(reference.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)


def check_sigterm_on_one_process_stops_every_process_at_the_same_step(session):
    _check_finished(session, "sigterm", code=75)  # stopped with a checkpoint: exit 75
    steps = []
    for output in session["outputs"]:
        lines = [line for line in _job_output(output, "sigterm").splitlines() if "received" in line]
        assert len(lines) == 1 and "SIGTERM received: checkpoint saved at step" in lines[0], lines
        steps.append(int(lines[0].split("at step ")[1].split(";")[0]))
    # process 1 got SIGTERM while drawing batch 3; the agreement is read one step later
    assert steps == [4, 4]
    assert sorted(os.listdir(session["root"] / "checkpoints" / "sigterm")) == ["4"]


def test_two_processes_x_4_devices(session):
    """One test over the whole worker session (so pytest-xdist runs the session once): the
    config mismatch, the three trainings against their 1-process references, who wrote what,
    the safety tokens, the exports, the shared checkpoint, and SIGTERM on one process."""
    check_config_mismatch_fails_clearly_on_every_process(session)
    check_safety_tokens_match_one_process(session)
    for name in ("sft", "pact_cached", "pact_online_full"):
        check_two_processes_match_one_process(session, name)
    check_only_process_0_writes_logs_metrics_and_exports(session)
    check_exports_equal_one_process_exports(session)
    check_checkpoint_is_complete_and_restores_on_one_process(session)
    check_sigterm_on_one_process_stops_every_process_at_the_same_step(session)


# ------------------------------------------------------------------------ unit level
def test_setup_from_flags_environment_and_detection():
    from stjax.distributed import DistributedError, Setup, resolve_setup

    assert resolve_setup(environ={}, tpu_vm=False) == Setup("single")
    assert resolve_setup("h:1", 2, 1, environ={}, tpu_vm=False) == Setup("explicit", "h:1", 2, 1)
    env = {"STJAX_COORDINATOR": "10.0.0.2:8476", "STJAX_NUM_PROCESSES": "4", "STJAX_PROCESS_ID": "3"}
    assert resolve_setup(environ=env, tpu_vm=False) == Setup("explicit", "10.0.0.2:8476", 4, 3)
    assert resolve_setup(process_id=0, environ=env, tpu_vm=False).process_id == 0  # flags win
    assert resolve_setup(num_processes=1, environ={}, tpu_vm=True) == Setup("single")
    assert resolve_setup(environ={}, tpu_vm=True) == Setup("tpu")
    assert resolve_setup(environ={"STJAX_DISTRIBUTED": "0"}, tpu_vm=True) == Setup("single")
    assert resolve_setup(environ={"SLURM_NTASKS": "2"}, tpu_vm=False) == Setup("cluster")
    with pytest.raises(DistributedError, match="--process-id missing"):
        resolve_setup("h:1", 2, environ={}, tpu_vm=False)
    with pytest.raises(DistributedError, match="--process-id 2 is not in 0..1"):
        resolve_setup("h:1", 2, 2, environ={}, tpu_vm=False)
    with pytest.raises(DistributedError, match="expected HOST:PORT"):
        resolve_setup("h", 2, 0, environ={}, tpu_vm=False)
    with pytest.raises(DistributedError, match="STJAX_NUM_PROCESSES: expected an integer"):
        resolve_setup(environ={"STJAX_NUM_PROCESSES": "two"}, tpu_vm=False)


def test_config_hash_and_differences(tmp_path):
    from stjax.training.agreement import (
        check_same_config,
        config_differences,
        config_hash,
        config_json,
    )

    a, b = make_config(tmp_path), make_config(tmp_path, train={"seed": 1}, data={"max_len": 32})
    assert config_hash(a) == config_hash(make_config(tmp_path)) != config_hash(b)
    assert check_same_config(a) == config_hash(a)  # one process: nothing to compare
    assert config_differences(json.loads(config_json(a)), json.loads(config_json(b))) == [
        "data.max_len", "train.seed"]
    c = make_config(tmp_path, data={"train": [{"path": "x.json"}, {"path": "y.json"}]})
    assert "data.train.length" in config_differences(json.loads(config_json(a)), json.loads(config_json(c)))


def test_batch_split_over_processes():
    from types import SimpleNamespace

    from stjax.training.agreement import DistributedError, check_batch_split

    def mesh(data, fsdp, tensor, processes=2):
        devices = np.array([SimpleNamespace(process_index=i * processes // (data * fsdp * tensor))
                            for i in range(data * fsdp * tensor)]).reshape(data, fsdp, tensor)
        return SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": tensor}, devices=devices)

    check_batch_split(mesh(2, 2, 2), 8, process_count=2)
    check_batch_split(mesh(1, 4, 2), 8, process_count=2)
    with pytest.raises(DistributedError, match="batch shards cannot be split over 2 processes"):
        check_batch_split(mesh(1, 1, 8), 8, process_count=2)
    with pytest.raises(DistributedError, match="not divisible by data\\*fsdp\\*grad_accum = 8"):
        check_batch_split(mesh(2, 2, 2), 12, grad_accum=2, process_count=2)
    # tensor axis across hosts: a batch shard on both processes
    bad = mesh(2, 1, 4)
    bad.devices = bad.devices.transpose(0, 2, 1).reshape(4, 2).T.reshape(2, 1, 4)
    with pytest.raises(DistributedError, match="every process must hold 1 of the 2 batch shards"):
        check_batch_split(bad, 8, process_count=2)
