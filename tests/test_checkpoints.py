"""Checkpoints hold what resume needs and nothing else: trainable weights and EMA copies as
safetensors, optimizer / LR scheduler / RNG state, counters and a verified manifest; never a frozen
network (a full student's teacher, a LoRA's base UNet, VAE, text encoder)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fewstep.distill.checkpoints import MANIFEST_FILE, STATE_FILE, CheckpointError, DamagedCheckpoint, verify
from fewstep.distill.loop import Trainer, list_checkpoints
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict

ACCELERATE_FILES = {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"}  # non-weight state
BOOKKEEPING = {STATE_FILE, MANIFEST_FILE}


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
    assert set(files) == ACCELERATE_FILES | BOOKKEEPING | {"student.safetensors", "target.safetensors"}
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
    assert set(files) == ACCELERATE_FILES | BOOKKEEPING | {"unet.safetensors"}
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
    with pytest.raises(CheckpointError, match="unet.safetensors: corrupt: its sha256 differs"):
        trainer.load_checkpoint(path)
    (path / MANIFEST_FILE).unlink()
    (path / STATE_FILE).write_text(json.dumps({"step": 2}))  # what fewstep wrote before lean checkpoints
    with pytest.raises(CheckpointError, match="older fewstep"):
        trainer.load_checkpoint(path)


def test_the_manifest_lists_every_file_of_the_folder(tmp_path):
    _, path = trained_run(tmp_path, "lora")
    manifest = json.loads((path / MANIFEST_FILE).read_text())["files"]
    assert set(manifest) == {p.name for p in path.iterdir()} - {MANIFEST_FILE}
    for name, info in manifest.items():
        assert info["bytes"] == (path / name).stat().st_size and len(info["sha256"]) == 64
    assert verify(path)["step"] == 2


@pytest.mark.parametrize("damage,needle", [
    ("truncate:random_states_0.pkl", "random_states_0.pkl: truncated"),
    ("delete:optimizer.bin", "optimizer.bin: missing"),
    ("flip:scheduler.bin", "scheduler.bin: corrupt"),
    ("truncate:fewstep_state.json", "fewstep_state.json: truncated"),
    ("garble:manifest.json", "manifest.json: not valid JSON"),
    ("delete:manifest.json", "manifest.json: missing; fewstep_state.json says it was written"),
])
def test_any_damaged_file_is_named_before_anything_is_loaded(tmp_path, damage, needle):
    trainer, path = trained_run(tmp_path, "lora")
    how, name = damage.split(":")
    file = path / name
    data = file.read_bytes()
    if how == "truncate":
        file.write_bytes(data[:len(data) // 2])
    elif how == "delete":
        file.unlink()
    elif how == "flip":
        file.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        file.write_text("{not json")
    before = {k: v.clone() for k, v in trainer.models.modules["unet"].state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(DamagedCheckpoint, match=needle):
        trainer.load_checkpoint(path)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing restored, RNG included
    after = trainer.models.modules["unet"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_checkpoint_without_the_full_manifest_still_loads_and_checks_its_rng(tmp_path):
    """Checkpoints written before the full manifest: their weights list is verified, and an RNG file
    accelerate could not read (it would skip it silently) is refused by name."""
    trainer, path = trained_run(tmp_path, "lora")
    (path / MANIFEST_FILE).unlink()
    state = json.loads((path / STATE_FILE).read_text())
    del state["manifest"]
    (path / STATE_FILE).write_text(json.dumps(state))
    trainer.load_checkpoint(path)
    assert trainer.step == 2
    rng = path / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:100])
    with pytest.raises(DamagedCheckpoint, match="random_states_0.pkl: unreadable"):
        trainer.load_checkpoint(path)
