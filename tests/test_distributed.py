"""Two processes through accelerate (DDP over gloo on CPU): the same loop trains, checkpoints and
resumes; each process draws its own shard of the data."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fewstep.distill.runlog import read_logs
from tests.conftest import run_dict


def torchrun(*args, cwd, module="fewstep.pipelines.cli"):
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun_bin) if torchrun_bin.exists() else shutil.which("torchrun"), "--nproc_per_node", "2",
           "--master_port", "29517", "-m", module, *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_two_process_lora_training_checkpoints_and_resumes(tmp_path):
    raw = run_dict(tmp_path, method="lcm", steps=2, checkpoint_every=2)
    raw["student"] = {"kind": "lora", "lora_rank": 4, "lora_alpha": 4}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    repo = Path(__file__).resolve().parents[1]
    proc = torchrun("train", str(cfg), "--no-export", cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "runs" / "t" / "checkpoints" / "checkpoint-2"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    weights = sorted(p.name for p in ckpt.glob("*.safetensors"))
    assert weights == ["unet.safetensors"]  # the adapters only, written once

    proc = torchrun("train", str(cfg), "--set", "train.steps=4", "--resume", "latest", cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "at step 2" in proc.stderr
    steps = [r["step"] for r in read_logs(tmp_path / "runs" / "t")]
    assert steps == [1, 2, 3, 4]  # written once (main process only), continuing at the right step
    assert (tmp_path / "runs" / "t" / "export" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_two_phases_train_in_sync_across_processes(tmp_path):
    """The toy two-phase method (tests/phase_toy.py) under DDP: adapters of one UNet per phase (with
    find_unused_parameters; refused without it), and a full student beside an adapter. Both ranks
    must end with identical weights although each drew its own data and noise."""
    import torch

    repo = Path(__file__).resolve().parents[1]
    proc = torchrun(str(tmp_path), cwd=repo, module="tests.phase_ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert "train.ddp_find_unused_parameters" in result["refused"]
    for kind in ("lora", "full"):
        assert result[kind] == {"generator": 2, "critic": 6}
        ranks = [torch.load(tmp_path / f"{kind}-rank{r}.pt") for r in (0, 1)]
        for phase in ("generator", "critic"):
            assert all(torch.equal(a, b) for a, b in zip(ranks[0][phase], ranks[1][phase])), (kind, phase)
