"""``train.gradient_checkpointing``: it reaches every trained network, checkpoints only grad-enabled
forwards (the frozen teacher's no_grad calls are untouched), and changes no number of a step."""
import pytest
import torch
from torch import nn

from fewstep.distill.config import ConfigError
from fewstep.distill.loop import Trainer, checkpoint_activations
from fewstep.distill.methods.gan import GAN_HEAD, GanHead
from fewstep.distill.methods.generator import FAKE
from fewstep.distill.modelset import ModelSet
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import lcm_step, run_dict


def make_trainer(tmp_path, method="lcm", kind="lora", checkpointing=True, **settings):
    raw = run_dict(tmp_path, method=method, steps=1, checkpoint_every=0, gradient_checkpointing=checkpointing)
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    raw["method"].update(settings)
    cfg = parse_config(raw)
    return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))


@pytest.fixture
def checkpoint_calls(monkeypatch):
    """Counts torch.utils.checkpoint.checkpoint calls (diffusers' checkpointed blocks go through it)."""
    calls = []
    inner = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return inner(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    return calls


def test_off_by_default_and_on_for_the_lora_students_shared_unet(tmp_path):
    assert parse_config(run_dict(tmp_path)).train.gradient_checkpointing is False
    unet = make_trainer(tmp_path / "off", checkpointing=False).models.modules["unet"].unet
    assert not unet.is_gradient_checkpointing
    unet = make_trainer(tmp_path / "on").models.modules["unet"].unet
    assert unet.is_gradient_checkpointing


def test_lcm_lora_step_is_unchanged_and_only_the_student_forward_checkpoints(tmp_path, checkpoint_calls):
    trainer = make_trainer(tmp_path)
    unet = trainer.models.modules["unet"].unet
    with torch.no_grad():  # a live adapter (peft starts B at zero), so the A factors get gradients too
        g = torch.Generator().manual_seed(0)
        for n, p in unet.named_parameters():
            if ".lora_B." in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    # what one grad-enabled forward of this UNet checkpoints
    x, cond = torch.randn(1, 4, 8, 8), trainer.models.encode_text(["a red circle"])
    unet(x, torch.tensor([500]), encoder_hidden_states=cond).sample.sum().backward()
    per_forward = len(checkpoint_calls)
    assert per_forward > 0 and set(checkpoint_calls) == {False}  # non-reentrant: LoRA weights get gradients
    checkpoint_calls.clear()

    loss_on, grads_on = lcm_step(trainer)
    # the student's forward only: the teacher (CFG) and target forwards run under no_grad
    assert len(checkpoint_calls) == per_forward
    unet.disable_gradient_checkpointing()
    checkpoint_calls.clear()
    loss_off, grads_off = lcm_step(trainer)
    assert not checkpoint_calls
    assert loss_on == pytest.approx(loss_off, rel=1e-5, abs=1e-7)
    assert all(g.abs().sum() > 0 for g in grads_off)  # every LoRA factor (A and B) is trained
    for a, b in zip(grads_on, grads_off):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_full_dmd_student_fake_score_and_gan_head_train_a_step(tmp_path):
    trainer = make_trainer(tmp_path, method="dmd", kind="full", gan_weight=0.1, fake_steps_per_generator=1)
    models = trainer.models
    assert models.modules["student"].unet.is_gradient_checkpointing
    assert models.modules[FAKE].unet.is_gradient_checkpointing
    assert not models.pipe.unet.is_gradient_checkpointing  # the frozen teacher is not a trained module
    before = {ph: [p.detach().clone() for p in ps] for ph, ps in trainer.params.items()}
    trainer.train()
    assert trainer.phase_steps == {"generator": 1, FAKE: 1}
    for ph, ps in trainer.params.items():
        assert all(torch.isfinite(p).all() for p in ps), ph
        assert any(not torch.equal(a, b) for a, b in zip(before[ph], ps)), ph
    assert GAN_HEAD in trainer.trained  # trained, and exempt by its own declared reason


def test_every_trained_module_checkpoints_or_the_key_is_named(tmp_path):
    pipe = build_tiny_pipeline(parse_config(run_dict(tmp_path)).model.tiny, seed=0)
    models = ModelSet(pipe)
    models["text_encoder"] = pipe.text_encoder  # transformers' own checkpointing
    models["vae"] = pipe.vae
    models[GAN_HEAD] = GanHead(16)
    assert checkpoint_activations(models, ["text_encoder", "vae", GAN_HEAD]) == ["text_encoder", "vae"]
    assert any(getattr(m, "gradient_checkpointing", False) for m in pipe.text_encoder.modules())
    assert pipe.vae.is_gradient_checkpointing
    models["head"] = nn.Linear(4, 4)
    with pytest.raises(ConfigError, match=r"^train.gradient_checkpointing: the trained module 'head' \(Linear\)"):
        checkpoint_activations(models, ["head"])
