"""Exact --resume after a kill mid-run, and 2-process gloo DDP ending with equal weights on both ranks."""

import os
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests.conftest import REPO


def _config(tiny_data, tmp_path, epochs: int) -> str:
    # mosaic + scale until the closing epoch, task-aligned assignment, varifocal loss: the resumed run must
    # replay their random state (mosaic partners, affine draws) and the switch as well
    sched = {"epochs": epochs, "batch_size": 2, "lr": 0.002, "warmup_iters": 2, "augment": "flip+mosaic+scale",
             "close_epochs": 1, "deterministic": True}
    cfg = {"name": "t", "data": str(tiny_data),
           "detector": {"input_size": [128, 160], "model": {"channels": 16, "head_convs": 1}, "train": sched,
                        "loss": {"assigner": "tal", "cls_loss": "vfl"}}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _train(cfg: str, out, *extra: str, **kw):
    cmd = [sys.executable, "-m", "train", "--config", cfg, "--out", str(out), "--task", "detector", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_resume_after_kill_mid_run_gives_the_same_final_weights(tiny_data, tmp_path):
    cfg = _config(tiny_data, tmp_path, epochs=4)
    assert _train(cfg, tmp_path / "a").wait() == 0
    p = _train(cfg, tmp_path / "b")
    last = tmp_path / "b" / "detector" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.kill()  # SIGKILL right after the first epoch's checkpoint: somewhere inside epoch 2
    p.wait()
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert killed_at < 4, "the run finished before it could be killed"
    r = _train(cfg, tmp_path / "b", "--resume")
    out, err = r.communicate()
    assert r.returncode == 0, err[-400:]
    assert f"resumed from {last} after epoch {killed_at}" in out
    a = torch.load(tmp_path / "a" / "detector" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key in ("state_dict",):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), name
    for name, t in a["train_state"]["model"].items():
        assert torch.equal(t, b["train_state"]["model"][name]), name


def test_resume_refuses_a_checkpoint_of_another_architecture(tiny_data, tmp_path):
    cfg = _config(tiny_data, tmp_path, epochs=1)
    assert _train(cfg, tmp_path / "run").wait() == 0
    other = tmp_path / "other.yaml"
    other.write_text(open(cfg).read().replace("channels: 16", "channels: 24"))
    r = _train(str(other), tmp_path / "run", "--resume")
    _, err = r.communicate()
    assert r.returncode == 2 and "Traceback" not in err
    assert "holds a detector" in err and "use a new --out or the matching config" in err


@pytest.mark.skipif(sys.platform != "linux", reason="gloo test runs on Linux CI")
def test_ddp_two_gloo_processes_end_with_equal_weights(tiny_data, tmp_path):
    cfg = _config(tiny_data, tmp_path, epochs=1)
    # unbuffered, so each rank's digest line is one small write to the shared pipe whatever CI sets
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train",
           "--config", cfg, "--out", str(tmp_path / "ddp"), "--task", "detector"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-800:]
    digests = dict(re.findall(r"rank (\d): final weights digest ([0-9a-f]{16})\n", r.stdout))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    assert "2 processes" in r.stdout and (tmp_path / "ddp" / "detector" / "best.pt").is_file()
