"""Two processes through accelerate (DDP over gloo on CPU): the same loop trains, checkpoints and
resumes; each process draws its own shard of the data; weights stay in sync; a 2 x B run equals a
1 x 2B run; only the main process writes logs, grids, trackers and exports.

``accelerate launch --cpu --num_processes 2`` starts one process only, so the processes are started
with torchrun (``ACCELERATE_USE_CPU=1``), which is what ``accelerate launch --multi_gpu`` runs too."""
import importlib.util
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


def torchrun(*args, cwd, module="fewstep.pipelines.cli", processes=2):
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun_bin) if torchrun_bin.exists() else shutil.which("torchrun"), "--nproc_per_node", str(processes),
           "--master_port", "29517", "-m", module, *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_two_process_lora_training_checkpoints_and_resumes(tmp_path):
    raw = run_dict(tmp_path, method="lcm", steps=2, checkpoint_every=2)
    raw["student"] = {"kind": "lora", "lora_rank": 4, "lora_alpha": 4}
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    if tensorboard:
        raw["train"]["report_to"] = "tensorboard"
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
    # one writer: a grid per validation, one event file per attempt (two processes would make two each)
    assert sorted(p.name for p in (tmp_path / "runs" / "t" / "samples").iterdir()) == ["step-000002.png",
                                                                                     "step-000004.png"]
    if tensorboard:
        folder = tmp_path / "runs" / "t" / "tensorboard" / "fewstep"  # (subfolders: each attempt's hparams)
        assert len(list(folder.glob("events.out.tfevents.*"))) == 2


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


@pytest.mark.slow
@pytest.mark.parametrize("method,kind", [("data-only", "lora"), ("data-only", "full"), ("lcm", "lora"), ("dmd", "full")])
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, method, kind):
    """2 processes x batch 2 against 1 process x batch 4. accelerate's sharded dataloader (split_batches
    off) gives process r the r-th of every 2 consecutive batches of the one index stream, so the ranks'
    batches are disjoint and together are the 1-process batch (checked on the data-only method, which
    records its captions); DDP's gradient mean over ranks is the gradient of the whole batch; and the
    registered methods draw each sample's noise, timesteps and guidance scale from distill.rng (one
    stream on every process, each keeping its slice), so LCM (LoRA) and DMD2 (full generator and full
    fake score, two phases) follow the 1-process run's training noise too."""
    import torch

    repo = Path(__file__).resolve().parents[1]
    for processes, batch in ((2, 2), (1, 4)):
        proc = torchrun(str(tmp_path), "--equal", method, kind, str(batch), cwd=repo, module="tests.phase_ddp",
                        processes=processes)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"equal-{method}-{kind}-2x2-rank{r}.pt") for r in (0, 1)]
    single = torch.load(tmp_path / f"equal-{method}-{kind}-1x4-rank0.pt")
    if method == "data-only":
        drawn = [r["captions"] for r in ranks]  # per step, the captions each rank trained on
        assert len(drawn[0]) == len(single["captions"]) == 3
        for step, whole in enumerate(single["captions"]):
            assert set(drawn[0][step]).isdisjoint(drawn[1][step]), step  # every rank sees different data
            assert drawn[0][step] + drawn[1][step] == whole, step  # together: the 1-process batch, in order
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)  # in sync across ranks
    # AdamW divides by sqrt(v): an element whose gradient is float noise (a LoRA B row that barely
    # moves) takes a +-lr step either way, so summation order can move it by up to 2 lr per step.
    two, one, init = (torch.cat([p.flatten() for p in ps]) for ps in (ranks[0]["params"], single["params"],
                                                                       single["init"]))
    diff = (two - one).abs()
    steps = 3 if method != "dmd" else 3 * 3  # DMD2: a generator step and 2 fake-score steps per iteration
    assert diff.max() <= 2 * 1e-3 * steps, diff.max()  # train.lr 1e-3
    # The runs part by float rounding only: < 1 % of what training moved (other noise: tens of %).
    assert (two - one).norm() <= 0.01 * (one - init).norm(), ((two - one).norm(), (one - init).norm())
    if method != "dmd":  # (DMD2's per-sample normalisation amplifies rounding over its 9 optimizer steps)
        assert (diff <= 1e-5 + 1e-4 * one.abs()).float().mean() >= 0.99, (diff > 1e-5).float().mean()
