"""The phase contract, on a two-phase toy method (tests/phase_toy.py) over a tiny random UNet with two
LoRA adapters: which optimizer steps at which iteration (update ratio 2 and 5), what each phase
receives (data need, hand-over), gradients exactly where they belong, the frozen teacher untouched,
and a killed run resuming on the same phase, bitwise."""
from __future__ import annotations


import pytest
import torch

from fewstep.distill.config import ConfigError, MethodSpec, PhaseConfig, TrainConfig
from fewstep.distill.loop import Trainer, list_checkpoints
from fewstep.distill.phases import Phase, plan_phases, select_data
from fewstep.distill.run_config import parse_config
from fewstep.distill.runlog import read_logs
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict
from tests.phase_toy import ToyConfig, ToyTwoPhase

EVERY, REPEATS = 2, 5


def make_trainer(tmp_path, steps, kind="lora", **train):
    raw = run_dict(tmp_path, steps=steps, **train)
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    cfg = parse_config(raw)
    cfg.method = MethodSpec("toy", ToyConfig(EVERY, REPEATS))
    method = ToyTwoPhase(cfg.method.config, cfg.student)
    return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0), method=method)


def networks(trainer):
    models = trainer.models
    return list(models.modules.values()) + [models.pipe.unet, models.pipe.vae, models.pipe.text_encoder]


def record_steps(trainer) -> list[tuple[int, str]]:
    """(iteration, phase) of every optimizer step, checking at each that gradients exist on exactly
    that phase's parameters (and nowhere else in any network of the run)."""
    events = []
    named = {id(p): (n, p) for m in networks(trainer) for n, p in m.named_parameters()}
    for phase, opt in trainer.opts.items():
        own = {id(p) for p in trainer.params[phase]}

        def hook(optimizer, args, kwargs, phase=phase, own=own):
            with_grad = {i for i, (_, p) in named.items() if p.grad is not None}
            stray = sorted(named[i][0] for i in with_grad - own)
            assert with_grad == own, (phase, stray[:3], len(own - with_grad))
            events.append((trainer.step, phase))

        opt.optimizer.register_step_pre_hook(hook)
    return events


def expected_steps(first: int, last: int) -> list[tuple[int, str]]:
    out = []
    for i in range(first, last):
        out += [(i, "generator")] * (i % EVERY == 0) + [(i, "critic")] * REPEATS
    return out


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_phases_step_at_their_rates_with_gradients_only_in_their_roles(tmp_path, kind):
    trainer = make_trainer(tmp_path, steps=4, kind=kind, checkpoint_every=0)
    models = trainer.models
    frozen = {n: p.detach().clone() for n, p in models.pipe.unet.named_parameters() if ".lora_" not in n}
    frozen.update({f"vae.{n}": p.detach().clone() for n, p in models.pipe.vae.named_parameters()})
    adapters = {r: [p.detach().clone() for p in trainer.params[ph]] for r, ph in
                (("student", "generator"), ("fake_score", "critic"))}
    events = record_steps(trainer)
    trainer.train()

    assert events == expected_steps(0, 4)
    assert trainer.phase_steps == {"generator": 2, "critic": 20} and trainer.drawn == 2
    # the critic draws no data and sees the generator's samples exactly on the generator's iterations
    critic = [c for c in trainer.method.calls if c[1] == "critic"]
    assert all(keys == ("handover",) for _, _, keys, _ in critic)
    assert [h for i, _, _, h in critic] == [("cond", "x0") if i % EVERY == 0 else () for i, *_ in critic]
    gen = [c for c in trainer.method.calls if c[1] == "generator"]
    assert [c[0] for c in gen] == [0, 2] and all("pixels" in c[2] and c[3] == () for c in gen)
    # each phase moved its own parameters; the frozen teacher base is bit-for-bit unchanged
    for role, ph in (("student", "generator"), ("fake_score", "critic")):
        assert any(not torch.equal(a, b) for a, b in zip(adapters[role], trainer.params[ph])), role
    for n, p in list(models.pipe.unet.named_parameters()) + [(f"vae.{n}", p) for n, p in
                                                              models.pipe.vae.named_parameters()]:
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    # the critic's own optimizer settings reached its optimizer (method default beta1 = 0, lr)
    group = trainer.opts["critic"].optimizer.param_groups[0]
    assert group["betas"][0] == 0.0 and group["lr"] == pytest.approx(2e-3)
    logs = read_logs(trainer.run_dir)
    assert all("generator/loss" in r and "critic/loss" in r for r in logs)


def test_adapter_roles_share_one_frozen_unet(tmp_path):
    trainer = make_trainer(tmp_path, steps=2, checkpoint_every=0)
    trainer.train()
    models = trainer.models
    unets = {id(m.unet) for m in models.modules.values() if hasattr(m, "unet")}
    assert list(models.modules) == ["unet"] and len(unets) == 1  # no second UNet copy
    assert models["student"].unet is models["fake_score"].unet is models["teacher"].unet
    fresh = build_tiny_pipeline(trainer.cfg.model.tiny, seed=0).unet.eval()
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 32, generator=g)
    t = torch.tensor([100, 700])
    models.modules["unet"].eval()
    with torch.no_grad():
        out = {r: models[r](x, t, cond).output for r in ("student", "fake_score", "teacher")}
        base = fresh(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(out["teacher"], base, rtol=0, atol=1e-6)  # adapters off = the teacher
    assert (out["student"] - base).abs().max() > 1e-4 and (out["fake_score"] - base).abs().max() > 1e-4
    assert (out["student"] - out["fake_score"]).abs().max() > 1e-4
    assert models.pipe.unet.active_adapters() == ["default"]  # calls put back the student's adapter


def test_teacher_view_leaves_flags_and_sees_adapters_added_later(tmp_path):
    """The base view flips only peft's per-layer switch (distill.modelset.tuner_layers): requires_grad of
    every adapter weight is as before, and an adapter added after the first call, on a layer that had none
    (a new peft layer), is switched off too."""
    from peft import LoraConfig

    trainer = make_trainer(tmp_path, steps=1, checkpoint_every=0)
    models, unet = trainer.models, trainer.models.pipe.unet
    g = torch.Generator().manual_seed(0)
    x, cond, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 32, generator=g), torch.tensor([100, 700])
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    assert any(flags.values())
    with torch.no_grad():
        before = models["teacher"](x, t, cond).output
        assert {n: p.requires_grad for n, p in unet.named_parameters()} == flags
        unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["conv_in"], init_lora_weights=False), "extra")
        unet.set_adapter(["default", "extra"])
        torch.testing.assert_close(models["teacher"](x, t, cond).output, before, rtol=0, atol=0)
        assert unet.active_adapters() == ["default", "extra"]
        with_extra = models.modules["unet"].unet(x, t, encoder_hidden_states=cond).sample
    unet.set_adapter("default")
    with torch.no_grad():
        assert (with_extra - models.modules["unet"].unet(x, t, encoder_hidden_states=cond).sample).abs().max() > 1e-4


def test_kill_and_resume_lands_on_the_same_phase_bitwise(tmp_path):
    full = make_trainer(tmp_path / "a", steps=5, checkpoint_every=0)
    full_events = record_steps(full)
    full.train()

    first = make_trainer(tmp_path / "b", steps=3, checkpoint_every=0)
    first.train()  # "killed" after iteration 3: its final checkpoint is what resume finds
    (step, path), = list_checkpoints(first.run_dir)
    second = make_trainer(tmp_path / "b", steps=5, checkpoint_every=0)
    second.load_checkpoint(path)
    assert (second.step, second.phase_steps, second.drawn) == (3, {"generator": 2, "critic": 15}, 2)
    events = record_steps(second)
    second.train()
    assert events == full_events[-len(events):] == expected_steps(3, 5)  # iteration 3: critic only
    assert second.phase_steps == full.phase_steps
    for ph in ("generator", "critic"):
        for a, b in zip(second.params[ph], full.params[ph]):
            assert torch.equal(a, b), ph
        sa, sb = second.opts[ph].optimizer.state_dict()["state"], full.opts[ph].optimizer.state_dict()["state"]
        assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sb), ph


def test_phase_settings_resolve_user_over_method_over_train():
    phases = [Phase("generator", ("student",), defaults=PhaseConfig(every=2, lr=1e-5)),
              Phase("critic", ("fake_score",), data="none", defaults=PhaseConfig(repeats=5, adam_beta1=0.0))]
    train = TrainConfig(lr=1e-4, adam_beta2=0.99, phases={"critic": PhaseConfig(repeats=10, lr=3e-4)})
    gen, critic = plan_phases(phases, train)
    assert (gen.every, gen.repeats, gen.lr, gen.betas) == (2, 1, 1e-5, (0.9, 0.99))
    assert (critic.every, critic.repeats, critic.lr, critic.betas) == (1, 10, 3e-4, (0.0, 0.99))
    assert [gen.due(i) for i in range(4)] == [True, False, True, False]
    assert gen.steps_until(5) == 3 and critic.steps_until(5) == 50
    assert plan_phases(phases, TrainConfig(phase_lr={"generator": 7e-4}))[0].lr == 7e-4


@pytest.mark.parametrize("train,match", [
    (TrainConfig(phases={"disc": PhaseConfig(lr=1.0)}), "train.phases.disc: this method has no phase 'disc'"),
    (TrainConfig(phase_lr={"disc": 1.0}), "train.phase_lr.disc"),
    (TrainConfig(phases={"critic": PhaseConfig(every=0)}), r"train.phases.critic.every: must be >= 1"),
    (TrainConfig(adam_beta1=1.0), r"train.adam_beta1: must be in \[0.0, 1.0\)"),
    (TrainConfig(phase_lr={"critic": 1e-4}, phases={"critic": PhaseConfig(lr=2e-4)}), "both set"),
])
def test_bad_phase_settings_name_their_key(train, match):
    phases = [Phase("generator", ("student",)), Phase("critic", ("fake_score",))]
    with pytest.raises(ConfigError, match=match):
        plan_phases(phases, train)


def test_data_needs_draw_a_batch_its_captions_or_nothing():
    drawn = []

    def draw():
        drawn.append(1)
        return {"pixels": torch.zeros(2, 3, 4, 4), "captions": ["a", "b"], "labels": torch.zeros(2, 5)}

    assert set(select_data("batch", draw)) == {"pixels", "captions", "labels"}
    assert select_data("prompts", draw) == {"captions": ["a", "b"]}
    assert select_data("none", draw) == {} and len(drawn) == 2
