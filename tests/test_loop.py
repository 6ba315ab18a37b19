"""The training loop on a very small fresh pipeline: loss goes down, checkpoints resume bitwise."""
import json

import pytest
import torch

from fewstep.distill.run_config import parse_config
from fewstep.distill.runlog import read_logs
from fewstep.distill.loop import Trainer, list_checkpoints
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict


def make_trainer(raw):
    cfg = parse_config(raw)
    return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))


def fixed_batch_loss(trainer):
    """Denoising loss on a fixed batch with fixed noise and timesteps (no RNG drift)."""
    state = torch.get_rng_state()
    torch.manual_seed(123)
    batch = trainer.val_batch
    out = trainer.method.loss(trainer.models, batch, "student", 0).loss.item()
    torch.set_rng_state(state)
    return out


def test_short_training_lowers_the_loss(tmp_path):
    raw = run_dict(tmp_path, steps=40, checkpoint_every=0)
    raw["method"]["caption_dropout"] = 0.0
    raw["validation"]["num_images"] = 16
    trainer = make_trainer(raw)
    before = fixed_batch_loss(trainer)
    trainer.train()
    after = fixed_batch_loss(trainer)
    assert after < 0.7 * before, (before, after)
    logs = read_logs(trainer.run_dir)
    assert [r["step"] for r in logs] == list(range(1, 41))
    assert (trainer.run_dir / "samples" / "step-000040.png").is_file()
    assert (trainer.run_dir / "config.yaml").is_file()


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.models["student"].state_dict().items()}


def test_resume_continues_at_the_right_step_and_matches_uninterrupted(tmp_path):
    full = make_trainer(run_dict(tmp_path / "a", steps=6, checkpoint_every=3))
    full.train()
    ref = _weights(full)

    first = make_trainer(run_dict(tmp_path / "b", steps=3, checkpoint_every=3))
    first.train()
    done = list_checkpoints(first.run_dir)
    assert [s for s, _ in done] == [3]
    # A kill during a later save leaves only a temporary folder, which resume ignores.
    (first.run_dir / "checkpoints" / ".tmp-checkpoint-5").mkdir()
    assert [s for s, _ in list_checkpoints(first.run_dir)] == [3]

    second = make_trainer(run_dict(tmp_path / "b", steps=6, checkpoint_every=3))
    with torch.no_grad():  # whatever is in memory, the checkpoint must overwrite it
        for p in second.models["student"].parameters():
            p.zero_()
    second.load_checkpoint(done[-1][1])
    assert second.step == 3
    second.train()
    assert second.step == 6
    got = _weights(second)
    for k in ref:  # bitwise: weights, optimizer state, RNG and data position all come back exactly
        assert torch.equal(got[k], ref[k]), k
    assert [r["step"] for r in read_logs(second.run_dir)] == [1, 2, 3, 4, 5, 6]
    raw = [json.loads(line) for line in (second.run_dir / "logs.jsonl").read_text().splitlines()]
    assert raw[3] == {"event": "resumed", "step": 3, "from": str(done[-1][1])}  # the marker read_logs reads


def test_checkpoints_total_limit_prunes_oldest(tmp_path):
    trainer = make_trainer(run_dict(tmp_path, steps=8, checkpoint_every=2, checkpoints_total_limit=2))
    trainer.train()
    assert [s for s, _ in list_checkpoints(trainer.run_dir)] == [6, 8]


def test_ema_tracks_the_student(tmp_path):
    raw = run_dict(tmp_path, steps=3, checkpoint_every=0)
    raw["method"]["ema_decay"] = 0.5
    trainer = make_trainer(raw)
    start = _weights(trainer)
    trainer.train()
    ema = trainer.models["student_ema"].state_dict()
    now = trainer.models["student"].state_dict()
    k = next(k for k in start if "conv_in.weight" in k)
    assert not torch.equal(ema[k], start[k]) and not torch.equal(ema[k], now[k])


@pytest.mark.parametrize("method", ["vae"])
def test_other_methods_run_through_the_same_loop(tmp_path, method):
    trainer = make_trainer(run_dict(tmp_path, method=method, steps=2, checkpoint_every=0))
    trainer.train()
    pipe, recipe = trainer.method.to_pipeline(trainer.models)
    assert pipe.vae.config.scaling_factor != 1.0


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a test with another mixed precision needs a fresh one
    (what accelerate's own test cases do) and leaves a fresh one behind."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_mixed_precision_stores_frozen_networks_in_its_dtype(tmp_path, kind, fresh_accelerate_state):
    """bf16 (CPU autocast here): teacher, VAE, text encoder and a LoRA's base weights are stored in
    bf16; what trains, and the EMA target, stay float32; training and validation run."""
    raw = run_dict(tmp_path, method="lcm", steps=2, checkpoint_every=0, mixed_precision="bf16")
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    raw["method"].update({"num_ddim_timesteps": 10, "target_ema": 0.5})
    trainer = make_trainer(raw)
    models = trainer.models
    trained = {id(p) for ps in trainer.params.values() for p in ps}
    assert trained and all(p.dtype == torch.float32 for ps in trainer.params.values() for p in ps)
    frozen = [p for m in (models.pipe.unet, models.pipe.vae, models.pipe.text_encoder) for p in m.parameters()
              if id(p) not in trained]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    if kind == "full":
        assert all(p.dtype == torch.float32 for p in models["target"].parameters())
    assert models["student"].alphas_cumprod.dtype == torch.float32  # buffers keep their precision
    trainer.train()
    logs = read_logs(trainer.run_dir)
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(r["student/loss"])) for r in logs)
    assert (trainer.run_dir / "samples" / "step-000002.png").is_file()
