"""DMD (distribution matching distillation, DMD2 core): the gradient against a hand computation, the
shared method contract for LoRA and full students, the two time-scale update ratio in the loop,
the fake score learning the generator's samples, settings checked at config time, the tiny config,
and the 1-step export reproduced by plain diffusers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fewstep.distill.config import ConfigError
from fewstep.distill.loop import Trainer
from fewstep.distill.methods.dmd import FAKE, DMDMethod, generate, generator_timesteps
from fewstep.distill.methods.settings import DMDConfig
from fewstep.distill.methods.score import denoising_loss, dmd_gradient, stop_gradient_loss
from fewstep.distill.phases import plan_phases
from fewstep.distill.run_config import load_config, parse_config
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import SMALL_ARCH, run_dict
from tests.test_methods import MethodContract

ROOT = Path(__file__).resolve().parents[1]


# ---- the math ----------------------------------------------------------------------------------
def test_dmd_gradient_against_a_hand_computed_case():
    x0 = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    real = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0]]).reshape(2, 1, 2, 2)
    fake = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, -1.0]]).reshape(2, 1, 2, 2)
    # sample 0: mean|x0 - real| = 2.5, fake - real = 1  -> 0.4 everywhere
    # sample 1: mean|x0 - real| = 1,   fake - real = (1, 1, 0, 0)
    want = torch.tensor([[0.4, 0.4, 0.4, 0.4], [1.0, 1.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    grad = dmd_gradient(x0, real, fake)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, want)
    assert torch.equal(dmd_gradient(x0, real, real), torch.zeros_like(x0))  # fake == real: nothing to move
    half = dmd_gradient(x0.bfloat16(), real.bfloat16(), fake.bfloat16())
    assert half.dtype == torch.float32  # computed in float32 whatever the networks ran in
    # the stop-gradient loss carries exactly `grad` (over the element count) into x0
    x = x0.clone().requires_grad_(True)
    stop_gradient_loss(x, grad).backward()
    torch.testing.assert_close(x.grad, grad / x0.numel())


def test_denoising_loss_is_the_plain_loss_in_each_parameterisation():
    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    alpha = torch.tensor([0.9, 0.5, 0.1]).reshape(3, 1, 1, 1)
    sigma = (1 - alpha**2).sqrt()
    torch.testing.assert_close(denoising_loss(out, x0, noise, alpha, sigma, "epsilon"), ((out - noise) ** 2).mean())
    v = alpha * noise - sigma * x0
    torch.testing.assert_close(denoising_loss(out, x0, noise, alpha, sigma, "v_prediction"), ((out - v) ** 2).mean())
    w = torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1)
    torch.testing.assert_close(denoising_loss(out, x0, noise, alpha, sigma, "sample", w),
                               (w * (out - x0) ** 2).mean())


def test_generator_runs_where_the_exported_scheduler_evaluates():
    import diffusers

    sched = diffusers.LCMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   **DMDMethod(DMDConfig()).recipe().scheduler_kwargs)
    sched.set_timesteps(1)
    assert sched.timesteps.tolist() == generator_timesteps(1000).tolist() == [999]


# ---- the shared method contract ------------------------------------------------------------------
class TestDmdLora(MethodContract):
    method = "dmd"
    student = {"kind": "lora"}


class TestDmdFull(MethodContract):
    method = "dmd"


# ---- in the loop ---------------------------------------------------------------------------------
def make_trainer(tmp_path, steps, kind="lora", fake_steps=5, **train):
    raw = run_dict(tmp_path, method="dmd", steps=steps, checkpoint_every=0, **train)
    raw["method"]["fake_steps_per_generator"] = fake_steps
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    cfg = parse_config(raw)
    return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))


def record(trainer) -> tuple[list, list]:
    """(iteration, phase) of every optimizer step, asserting at each that exactly that phase's
    parameters hold gradients; and (phase, batch keys, handover keys) of every loss call."""
    models, steps, calls = trainer.models, [], []
    nets = list(models.modules.values()) + [models.pipe.unet, models.pipe.vae, models.pipe.text_encoder]
    named = {id(p): (n, p) for m in nets for n, p in m.named_parameters()}
    for phase, opt in trainer.opts.items():
        own = {id(p) for p in trainer.params[phase]}

        def hook(optimizer, args, kwargs, phase=phase, own=own):
            with_grad = {i for i, (_, p) in named.items() if p.grad is not None}
            assert with_grad == own, (phase, sorted(named[i][0] for i in with_grad - own)[:3])
            steps.append((trainer.step, phase))

        opt.optimizer.register_step_pre_hook(hook)
    loss = trainer.method.loss

    def spy(models, batch, phase, step):
        calls.append((phase, tuple(sorted(k for k in batch if k != "handover")), tuple(sorted(batch["handover"]))))
        return loss(models, batch, phase, step)

    trainer.method.loss = spy
    return steps, calls


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_ttur_ratio_handover_and_frozen_teacher(tmp_path, kind):
    trainer = make_trainer(tmp_path, steps=3, kind=kind, fake_steps=3)
    models = trainer.models
    teacher = {n: p.detach().clone() for n, p in models.pipe.unet.named_parameters() if ".lora_" not in n}
    before = {ph: [p.detach().clone() for p in ps] for ph, ps in trainer.params.items()}
    steps, calls = record(trainer)
    trainer.train()
    assert steps == [(i, ph) for i in range(3) for ph in ["generator"] + [FAKE] * 3]
    assert trainer.phase_steps == {"generator": 3, FAKE: 9} and trainer.drawn == 3
    # the generator gets captions only; the fake score draws nothing and trains on the hand-over
    assert set(calls) == {("generator", ("captions",), ()), (FAKE, (), ("cond", "x0"))}
    for ph, ps in trainer.params.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[ph], ps)), ph
    for n, p in models.pipe.unet.named_parameters():
        if n in teacher:
            assert torch.equal(p, teacher[n]), n
    if kind == "lora":  # student and fake score share the one teacher UNet
        assert list(models.modules) == ["unet"] and models["student"].unet is models[FAKE].unet
    logs = [json.loads(line) for line in (trainer.run_dir / "logs.jsonl").read_text().splitlines()]
    assert all(f"{FAKE}/loss" in r and "generator/grad_abs" in r for r in logs)


@torch.no_grad()
def fake_vs_teacher_loss(models, seed=0, n=16) -> tuple[float, float]:
    """Denoising loss of the fake score and of the teacher on the generator's current samples
    (fixed prompts, noise and timesteps)."""
    from fewstep.distill.methods.common import encode_prompts
    torch.manual_seed(seed)
    cond, _ = encode_prompts(models, ["a large red circle on the left, gray background"] * n)
    x0 = generate(models, cond)
    t = torch.linspace(20, 980, n).long()
    out = []
    for role in (FAKE, "teacher"):
        net = models[role]
        alpha, sigma = net.alpha_sigma(t)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        pred = net(alpha * x0 + sigma * noise, t, cond)
        out.append(denoising_loss(pred.output, x0, noise, alpha, sigma, net.prediction_type).item())
    return out[0], out[1]


@pytest.mark.slow
def test_short_run_lowers_the_fake_score_loss(tmp_path):
    """A LoRA fake score starts as the teacher (zero-initialised adapter); after a short run it denoises
    the generator's samples clearly better than the teacher does."""
    trainer = make_trainer(tmp_path, steps=8, fake_steps=5, phases={FAKE: {"lr": 1e-2}})
    for m in trainer.models.modules.values():
        m.eval()
    start_fake, start_teacher = fake_vs_teacher_loss(trainer.models)
    assert start_fake == start_teacher
    trainer.train()
    end_fake, end_teacher = fake_vs_teacher_loss(trainer.models)
    assert end_fake < 0.9 * end_teacher, (end_fake, end_teacher)  # measured 0.82x


# ---- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,match", [
    ("fake_steps_per_generator", 0, r"^method.fake_steps_per_generator: must be >= 1"),
    ("t_min", -1, r"^method.t_min: must be a timestep in \[0, 1000\)"),
    ("t_max", 1000, r"^method.t_max: must be a timestep in \[0, 1000\)"),
    ("t_min", 980, r"^method.t_min \(980\) must be below method.t_max \(980\)"),
])
def test_bad_settings_fail_at_config_time_naming_the_key(tmp_path, key, value, match):
    raw = run_dict(tmp_path, method="dmd")
    raw["method"][key] = value
    with pytest.raises(ConfigError, match=match) as err:
        parse_config(raw)
    assert "\n" not in str(err.value)


def test_tiny_config_parses_with_per_phase_rates():
    cfg = load_config(ROOT / "configs" / "tiny" / "dmd.yaml")
    method = DMDMethod(cfg.method.config, cfg.student)
    gen, fake = plan_phases(method.phases(), cfg.train)
    assert cfg.method.name == "dmd" and cfg.student.kind == "lora" and cfg.data.source == "procedural"
    assert (gen.name, gen.every, gen.repeats, gen.lr) == ("generator", 1, 1, 1e-4)
    assert (fake.name, fake.every, fake.repeats, fake.lr) == (FAKE, 1, 5, 1e-3)
    assert gen.phase.data == "prompts" and fake.phase.data == "none"


# ---- export ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from fewstep.distill.config import TinyArch

    path = tmp_path_factory.mktemp("base") / "tiny"
    build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=3).save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_export_matches_the_one_step_generator_in_plain_diffusers(tmp_path, base_dir, kind):
    from diffusers.utils.torch_utils import randn_tensor

    from fewstep.pipelines.export import export_run
    from fewstep.pipelines.teacher import load_pipeline
    from tests.test_export import PROMPTS, plain_diffusers_latents

    raw = run_dict(tmp_path, method="dmd", steps=2, checkpoint_every=0, lr=1e-2)
    raw["model"] = {"pretrained": str(base_dir)}
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    raw["method"]["fake_steps_per_generator"] = 2
    cfg = parse_config(raw)
    trainer = Trainer(cfg, load_pipeline(str(base_dir)))
    trainer.train()
    out = export_run(trainer.method, trainer.models, cfg, tmp_path / "export")
    recipe = json.loads((out / "fewstep_recipe.json").read_text())
    assert recipe["trained_steps"] == [1] and recipe["scheduler"] == "LCMScheduler"
    plain = plain_diffusers_latents(tmp_path, base_dir, out, [1])
    # fewstep's own one-step sample: the student's x0 at t = 999 from the pipeline's initial noise
    models = trainer.models
    models.modules[models.module_of("student")].eval()
    student = models["student"]
    c = student.unet.config
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    z = randn_tensor((len(PROMPTS), c.in_channels, c.sample_size, c.sample_size), generator=gens)
    with torch.no_grad():
        cond = models.encode_text(PROMPTS)
        ours = student(z, generator_timesteps(1000).expand(len(PROMPTS)), cond).x0
        teacher = models["teacher"](z, generator_timesteps(1000).expand(len(PROMPTS)), cond).x0
    diff = (ours - plain[1]).abs().max().item()
    assert diff <= 1e-4, (kind, diff)
    assert (teacher - plain[1]).abs().max().item() > 1e-2  # the student really moved off its teacher
