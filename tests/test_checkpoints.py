"""Checkpoints hold what resume needs and nothing else: trainable weights and EMA copies as
safetensors, optimizer / LR scheduler / RNG state, counters and a verified manifest; never a frozen
network (a full student's teacher, a LoRA's base UNet, VAE, text encoder)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fewstep.distill.checkpoints import STATE_FILE, CheckpointError
from fewstep.distill.loop import Trainer, list_checkpoints
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict

ACCELERATE_FILES = {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"}  # non-weight state


def trained_run(tmp_path, kind, **method):
    raw = run_dict(tmp_path, method="lcm", steps=2, checkpoint_every=0)
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    raw["method"].update({"num_ddim_timesteps": 10, **method})
    cfg = parse_config(raw)
    trainer = Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))
    trainer.train()
    (_, path), = list_checkpoints(trainer.run_dir)
    return trainer, path


def listing(path) -> dict[str, int]:
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir())}
    print(f"\n{path.name}: " + ", ".join(f"{n} {b / 1e6:.2f} MB" for n, b in files.items()))
    return files


def nbytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def tensor_bytes(path) -> int:
    """Bytes of tensor data in a safetensors file (its size less the 8-byte length and JSON header)."""
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return path.stat().st_size - 8 - header


def test_full_student_checkpoint_holds_student_and_ema_but_not_the_teacher(tmp_path):
    trainer, path = trained_run(tmp_path, "full", target_ema=0.5)
    files = listing(path)
    assert set(files) == ACCELERATE_FILES | {STATE_FILE, "student.safetensors", "target.safetensors"}
    student = nbytes(trainer.models["student"].parameters())
    teacher = nbytes(trainer.models["teacher"].parameters())
    weights = tensor_bytes(path / "student.safetensors") + tensor_bytes(path / "target.safetensors")
    assert weights == 2 * student  # student + EMA copy, and no byte of the teacher
    assert sum(files.values()) - files["optimizer.bin"] < 2 * student + teacher / 2
    saved = load_file(str(path / "target.safetensors"))
    for k, v in trainer.models["target"].state_dict().items():
        assert torch.equal(saved[k], v), k
    state = json.loads((path / STATE_FILE).read_text())
    assert state["step"] == 2 and state["phase_steps"] == {"student": 2} and state["batches_drawn"] == 2
    assert set(state["weights"]) == {"student.safetensors", "target.safetensors"}


def test_lora_checkpoint_holds_only_adapter_weights(tmp_path):
    trainer, path = trained_run(tmp_path, "lora")
    files = listing(path)
    assert set(files) == ACCELERATE_FILES | {STATE_FILE, "unet.safetensors"}
    saved = load_file(str(path / "unet.safetensors"))
    lora = {n: p for n, p in trainer.models.modules["unet"].named_parameters() if ".lora_" in n}
    assert set(saved) == set(lora)  # no base weight of the frozen UNet
    base = nbytes(p for n, p in trainer.models.modules["unet"].named_parameters() if ".lora_" not in n)
    assert tensor_bytes(path / "unet.safetensors") == nbytes(lora.values()) < base


def test_resume_reloads_the_frozen_teacher_from_the_teacher_and_the_rest_from_the_checkpoint(tmp_path):
    trainer, path = trained_run(tmp_path, "full", target_ema=0.5)
    raw = run_dict(tmp_path, method="lcm", steps=2, checkpoint_every=0)
    raw["method"].update({"num_ddim_timesteps": 10, "target_ema": 0.5})
    fresh = Trainer(parse_config(raw), build_tiny_pipeline(parse_config(raw).model.tiny, seed=0))
    fresh.load_checkpoint(path)
    for role in ("student", "target", "teacher"):
        got, want = fresh.models[role].state_dict(), trainer.models[role].state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), role


def test_changed_or_old_checkpoints_are_refused_with_the_file_named(tmp_path):
    trainer, path = trained_run(tmp_path, "lora")
    weights = path / "unet.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="unet.safetensors: missing or changed"):
        trainer.load_checkpoint(path)
    (path / STATE_FILE).write_text(json.dumps({"step": 2}))  # what fewstep wrote before lean checkpoints
    with pytest.raises(CheckpointError, match="older fewstep"):
        trainer.load_checkpoint(path)
