"""Score distillation (DMD2, VSD, SiD): the shared method contract for LoRA and full students, the
two time-scale update ratio and the hand-over in the loop, the fake score learning the generator's
samples, backward simulation, the GAN head, settings checked at config time, the tiny configs, and
the exports (1 and 4 steps) reproduced by plain diffusers. The math: tests/test_score_math.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fewstep.distill.config import ConfigError
from fewstep.distill.loop import Trainer, preflight
from fewstep.distill.methods.dmd import DMDMethod
from fewstep.distill.methods.gan import GAN_HEAD
from fewstep.distill.methods.generator import FAKE, generate, generator_step, generator_timesteps
from fewstep.distill.methods.registry import REGISTRY
from fewstep.distill.methods.score import denoising_loss
from fewstep.distill.phases import plan_phases
from fewstep.distill.run_config import load_config, parse_config
from fewstep.distill.runlog import read_logs
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import SMALL_ARCH, run_dict
from tests.test_methods import MethodContract

ROOT = Path(__file__).resolve().parents[1]


# ---- the shared method contract ------------------------------------------------------------------
class TestDmdLora(MethodContract):
    method = "dmd"
    student = {"kind": "lora"}


class TestDmdFull(MethodContract):
    method = "dmd"
    extra = {"generator_steps": 4, "ema_decay": 0.9}


class TestDmdGanLora(MethodContract):
    method = "dmd"
    student = {"kind": "lora"}
    extra = {"gan_weight": 0.01}


class TestDmdRegressionLora(MethodContract):
    method = "dmd"
    student = {"kind": "lora"}
    extra = {"regression_weight": 0.25, "regression_pairs": 6, "regression_teacher_steps": 2}


class TestVsdLora(MethodContract):
    method = "vsd"
    student = {"kind": "lora"}


class TestSidLora(MethodContract):
    method = "sid"
    student = {"kind": "lora"}


class TestSidFull(MethodContract):
    method = "sid"
    extra = {"fake_samples": "handover"}


class TestSidGanLora(MethodContract):  # SiDA: SiD's loss through both scores plus the adversarial term
    method = "sid"
    student = {"kind": "lora"}
    extra = {"gan_weight": 0.01}


# ---- in the loop ---------------------------------------------------------------------------------
def make_trainer(tmp_path, steps, kind="lora", method="dmd", train=None, **settings):
    raw = run_dict(tmp_path, method=method, steps=steps, checkpoint_every=0, **(train or {}))
    raw["method"].update(settings)
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


@pytest.mark.parametrize("method,kind,settings", [
    ("dmd", "lora", {"fake_samples": "handover"}),
    ("dmd", "full", {"fake_samples": "fresh", "generator_steps": 2}),
    ("vsd", "lora", {"fake_samples": "fresh"}),
    ("sid", "full", {"fake_samples": "handover"}),
])
def test_ttur_ratio_handover_and_frozen_teacher(tmp_path, method, kind, settings):
    trainer = make_trainer(tmp_path, steps=3, kind=kind, method=method, fake_steps_per_generator=3, **settings)
    models = trainer.models
    teacher = {n: p.detach().clone() for n, p in models.pipe.unet.named_parameters() if ".lora_" not in n}
    before = {ph: [p.detach().clone() for p in ps] for ph, ps in trainer.params.items()}
    steps, calls = record(trainer)
    trainer.train()
    assert steps == [(i, ph) for i in range(3) for ph in ["generator"] + [FAKE] * 3]
    fresh = settings["fake_samples"] == "fresh"
    assert trainer.phase_steps == {"generator": 3, FAKE: 9} and trainer.drawn == (12 if fresh else 3)
    # the generator gets captions only; the fake score draws captions for fresh samples, or nothing
    # and trains on the hand-over
    fake_keys = ("captions",) if fresh else ()
    assert set(calls) == {("generator", ("captions",), ()), (FAKE, fake_keys, ("cond", "x0"))}
    for ph, ps in trainer.params.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[ph], ps)), ph
    for n, p in models.pipe.unet.named_parameters():
        if n in teacher:
            assert torch.equal(p, teacher[n]), n
    if kind == "lora":  # student and fake score share the one teacher UNet
        assert list(models.modules) == ["unet"] and models["student"].unet is models[FAKE].unet
    logs = read_logs(trainer.run_dir)
    assert all(f"{FAKE}/loss" in r and "generator/loss" in r for r in logs)


@pytest.mark.parametrize("method", ["dmd", "sid"])
def test_gan_head_trains_with_the_fake_score_on_real_images(tmp_path, method):
    trainer = make_trainer(tmp_path, steps=2, kind="lora", method=method, gan_weight=0.1, fake_steps_per_generator=2)
    head = [p.detach().clone() for p in trainer.models[GAN_HEAD].parameters()]
    steps, calls = record(trainer)
    trainer.train()
    assert set(calls) == {("generator", ("captions",), ()), (FAKE, ("captions", "labels", "pixels"), ("cond", "x0"))}
    assert {GAN_HEAD, FAKE} <= set(trainer.plans[1].phase.modules)
    assert all(not torch.equal(a, b) for a, b in zip(head, trainer.models[GAN_HEAD].parameters()))
    logs = read_logs(trainer.run_dir)
    assert all(np_finite(r["generator/gan"]) and np_finite(r[f"{FAKE}/gan_head"]) for r in logs)


def test_handover_samples_are_used_even_when_the_gan_head_brings_a_batch(tmp_path):
    """With the GAN term the fake phase reads data batches (captions, images); ``fake_samples: handover``
    must still train on the generator phase's samples, not make fresh ones from the captions."""
    for mode in ("handover", "fresh"):
        trainer = make_trainer(tmp_path / mode, steps=1, kind="lora", method="sid", gan_weight=0.1, fake_samples=mode)
        x0 = torch.randn(2, 4, 8, 8)
        cond = trainer.models.encode_text(["a red circle", "a blue square"])
        batch = {"captions": ["a green star", "a red square"], "handover": {"x0": x0, "cond": cond}}
        got, got_cond, _ = trainer.method.fake_samples(trainer.models, batch)
        assert (got is x0 and got_cond is cond) == (mode == "handover")


def test_gan_head_scores_real_images_with_their_own_captions(tmp_path, monkeypatch):
    """Handed-over samples carry the generator phase's captions; the batch's real images are scored with
    the batch's own captions, not those."""
    import fewstep.distill.methods.generator as generator

    trainer = make_trainer(tmp_path, steps=1, kind="lora", method="sid", gan_weight=0.1, fake_samples="handover")
    models, seen = trainer.models, []
    real_logits = generator.gan_logits

    def spy(models, x_t, t, cond, *args):
        seen.append(cond)
        return real_logits(models, x_t, t, cond, *args)

    monkeypatch.setattr(generator, "gan_logits", spy)
    c = models["student"].unet.config
    x0 = torch.randn(2, c.in_channels, c.sample_size, c.sample_size)
    captions, given = ["a green star", "a red square"], ["a red circle", "a blue square"]
    cond = models.encode_text(given)
    pixels = torch.rand(2, 3, c.sample_size * models.pipe.vae_scale_factor, c.sample_size * models.pipe.vae_scale_factor)
    trainer.method.fake_score_loss(models, {"captions": captions, "pixels": pixels * 2 - 1,
                                            "handover": {"x0": x0, "cond": cond}})
    assert seen[0] is cond and torch.equal(seen[1], models.encode_text(captions))


def np_finite(x) -> bool:
    return x == x and abs(x) != float("inf")


def test_backward_simulation_draws_every_step_and_matches_the_sampler():
    """With K = 4 the generator's training input is the sampler's input at a uniformly drawn step;
    with the same noise stream, generate() without a grad step is the LCMScheduler-style sampler."""
    from fewstep.distill.config import TinyArch
    from tests.test_export import consistency_sample

    pipe = build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=0)
    cfg = parse_config(run_dict(Path("/tmp"), method="dmd"))
    cfg.method.config.generator_steps = 4
    method = DMDMethod(cfg.method.config)
    models = method.build(pipe)
    models.modules["student"].eval()
    cond = models.encode_text(["a small blue square"] * 2)
    torch.manual_seed(5)
    ours = generate(models, cond, 4)
    c = pipe.unet.config
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)
    want = consistency_sample(models["student"], cond, generator_timesteps(4), z, rule="lcm", generator=g)
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=0)
    # the step index each training sample is taken at covers 0..K-1
    seen = set()
    real = generate.__globals__["generate"]
    for seed in range(40):
        torch.manual_seed(seed)
        calls = []
        generate.__globals__["generate"] = lambda m, cd, k, grad_step=None, **kw: calls.append(grad_step) or real(m, cd, k, grad_step=grad_step, **kw)
        try:
            method.training_samples(models, cond)
        finally:
            generate.__globals__["generate"] = real
        seen.update(calls)
    assert seen == {0, 1, 2, 3}


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
@pytest.mark.parametrize("method", ["dmd", "vsd", "sid"])
def test_short_run_lowers_the_fake_score_loss(tmp_path, method):
    """A LoRA fake score starts as the teacher (zero-initialised adapter); after a short run it denoises
    the generator's samples clearly better than the teacher does."""
    trainer = make_trainer(tmp_path, steps=8, method=method, train={"phases": {FAKE: {"lr": 1e-2}}},
                           fake_steps_per_generator=5, fake_train_guidance=1.0)
    for m in trainer.models.modules.values():
        m.eval()
    start_fake, start_teacher = fake_vs_teacher_loss(trainer.models)
    assert start_fake == start_teacher
    trainer.train()
    end_fake, end_teacher = fake_vs_teacher_loss(trainer.models)
    assert end_fake < 0.9 * end_teacher, (end_fake, end_teacher)


# ---- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,key,value,match", [
    ("dmd", "fake_steps_per_generator", 0, r"^method.fake_steps_per_generator: must be >= 1"),
    ("vsd", "t_min", -1, r"^method.t_min: must be a timestep in \[0, 1000\)"),
    ("sid", "t_max", 1000, r"^method.t_max: must be a timestep in \[0, 1000\)"),
    ("dmd", "t_min", 980, r"^method.t_min \(980\) must be below method.t_max \(980\)"),
    ("dmd", "generator_steps", 0, r"^method.generator_steps: must be"),
    ("dmd", "generator_timestep", 50, r"^method.generator_timestep: must be a timestep in \[100, 1000\)"),
    ("sid", "fake_samples", "both", r"^method.fake_samples"),
    ("vsd", "real_guidance", float("nan"), r"^method.real_guidance"),
    ("sid", "fake_caption_dropout", 0.0, r"^method.fake_caption_dropout: a guided fake score"),
])
def test_bad_settings_fail_at_config_time_naming_the_key(tmp_path, method, key, value, match):
    raw = run_dict(tmp_path, method=method)
    raw["method"][key] = value
    with pytest.raises(ConfigError, match=match) as err:
        parse_config(raw)
    assert "\n" not in str(err.value)


def test_a_moved_generator_timestep_needs_a_one_step_generator(tmp_path):
    raw = run_dict(tmp_path, method="vsd")
    raw["method"].update(generator_steps=4, generator_timestep=399)
    with pytest.raises(ConfigError, match=r"^method.generator_timestep \(399\): only a 1-step generator"):
        parse_config(raw)


def test_gan_on_a_prompt_only_source_and_ema_on_a_lora_fail_before_any_model(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    raw = run_dict(tmp_path, method="dmd")
    raw["method"]["gan_weight"] = 0.01
    raw["data"] = {"source": "prompts", "path": str(prompts)}
    with pytest.raises(ConfigError, match=r"^data.source: 'prompts' has no images, but the fake_score phase"):
        preflight(parse_config(raw))
    raw = run_dict(tmp_path, method="vsd")
    raw["method"]["ema_decay"] = 0.99
    raw["student"] = {"kind": "lora"}
    with pytest.raises(ConfigError, match=r"^method.ema_decay: an EMA of the generator needs a full student"):
        preflight(parse_config(raw))


@pytest.mark.parametrize("name,method,steps", [("dmd", "dmd", [1]), ("dmd_4step", "dmd", [1, 4]),
                                               ("vsd_lora", "vsd", [1]), ("vsd", "vsd", [1]), ("sid", "sid", [1])])
def test_tiny_configs_parse_and_pass_preflight(name, method, steps):
    cfg = load_config(ROOT / "configs" / "tiny" / f"{name}.yaml")
    checked = preflight(cfg)
    assert cfg.method.name == method and cfg.data.source == "procedural"
    assert checked.method.trained_steps() == steps
    gen, fake = plan_phases(checked.method.phases(), cfg.train)
    assert gen.name == "generator" and gen.phase.data == "prompts" and fake.name == FAKE


@pytest.mark.parametrize("name", ["swiftbrush", "dmd2", "sid"])
def test_sd15_configs_parse_with_the_published_settings(name):
    cfg = load_config(ROOT / "configs" / "sd15" / f"{name}.yaml")
    method = REGISTRY[cfg.method.name](cfg.method.config, cfg.student)
    plan_phases(method.phases(), cfg.train)
    assert cfg.model.pretrained and cfg.data.source in ("prompts", "jsonl", "imagefolder")


# ---- export ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from fewstep.distill.config import TinyArch

    path = tmp_path_factory.mktemp("base") / "tiny"
    build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=3).save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method,kind,settings", [
    ("dmd", "lora", {}),
    ("dmd", "full", {"generator_steps": 4, "ema_decay": 0.5}),
    ("vsd", "lora", {}),
    ("sid", "full", {}),
])
def test_export_matches_the_generator_in_plain_diffusers(tmp_path, base_dir, method, kind, settings):
    from fewstep.pipelines.export import export_run
    from fewstep.pipelines.teacher import load_pipeline
    from fewstep.distill.sampling import Recipe
    from tests.test_export import fewstep_latents, plain_diffusers_latents

    raw = run_dict(tmp_path, method=method, steps=2, checkpoint_every=0, lr=1e-2)
    raw["model"] = {"pretrained": str(base_dir)}
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    raw["method"].update(fake_steps_per_generator=2, **settings)
    cfg = parse_config(raw)
    trainer = Trainer(cfg, load_pipeline(str(base_dir)))
    trainer.train()
    out = export_run(trainer.method, trainer.models, cfg, tmp_path / "export")
    recipe = json.loads((out / "fewstep_recipe.json").read_text())
    trained = recipe["trained_steps"]
    assert trained == sorted({1, settings.get("generator_steps", 1)}) and recipe["scheduler"] == "LCMScheduler"
    plain = plain_diffusers_latents(tmp_path, base_dir, out, trained)
    for steps in trained:
        ours = fewstep_latents(trainer, Recipe(**recipe), steps, 1.0)
        diff = (ours - plain[steps]).abs().max().item()
        assert diff <= 1e-4, (method, kind, steps, diff)
    # the exported generator really moved off its teacher
    teacher = fewstep_latents_of_teacher(trainer, Recipe(**recipe))
    assert (teacher - plain[1]).abs().max().item() > 1e-2


def fewstep_latents_of_teacher(trainer, recipe, role="teacher", t0=None):
    """The teacher UNet (or ``role``) run as a 1-step generator at 999 or ``t0``, the pipeline's noise."""
    from tests.test_export import PROMPTS

    from diffusers.utils.torch_utils import randn_tensor

    models = trainer.models
    net = models[role]
    c = net.unet.config
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    z = randn_tensor((len(PROMPTS), c.in_channels, c.sample_size, c.sample_size), generator=gens)
    with torch.no_grad():
        return generator_step(net, z, int(generator_timesteps(1, first=t0)[0]), models.encode_text(PROMPTS))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_generator_at_its_own_timestep_exports_as_one_stock_ddim_step(tmp_path, base_dir, kind):
    """DMD2's SDXL-style 1-step generator told its noise sits at t = 399: the export's stock DDIMScheduler
    reproduces it in plain diffusers (default call, no timesteps passed), and it differs from a 999 one."""
    from fewstep.pipelines.export import export_run
    from fewstep.pipelines.teacher import load_pipeline
    from tests.test_export import plain_diffusers_latents

    raw = run_dict(tmp_path, method="dmd", steps=2, checkpoint_every=0, lr=1e-2)
    raw["model"] = {"pretrained": str(base_dir)}
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    raw["method"].update(fake_steps_per_generator=2, generator_timestep=399, ema_decay=0.5 if kind == "full" else 0.0)
    cfg = parse_config(raw)
    trainer = Trainer(cfg, load_pipeline(str(base_dir)))
    trainer.train()
    out = export_run(trainer.method, trainer.models, cfg, tmp_path / "export")
    recipe = json.loads((out / "fewstep_recipe.json").read_text())
    assert recipe["scheduler"] == "DDIMScheduler" and recipe["trained_steps"] == [1]
    assert recipe["scheduler_kwargs"]["num_train_timesteps"] == 400
    card = (out / "README.md").read_text()  # the 400 betas are named, not printed, in the card
    assert "trained_betas=[" in card and "(400 values, in scheduler/scheduler_config.json)" in card
    assert len(card) < 8000, len(card)
    plain = plain_diffusers_latents(tmp_path, base_dir, out, [1])[1]
    trainer.models.modules[trainer.models.module_of("target")].eval()
    ours = fewstep_latents_of_teacher(trainer, None, role="target", t0=399)
    assert (ours - plain).abs().max().item() <= 1e-4
    assert (fewstep_latents_of_teacher(trainer, None, role="target") - plain).abs().max().item() > 1e-2


@pytest.mark.slow
def test_resume_restores_the_ttur_position_ema_and_gan_head_bitwise(tmp_path):
    """A 2-step DMD2 generator with fresh fake samples, the GAN head, the regression term and an EMA, stopped after 2 of 4
    iterations and resumed from its checkpoint, ends bitwise equal to an uninterrupted run."""
    from fewstep.distill.loop import list_checkpoints

    settings = dict(kind="full", generator_steps=2, ema_decay=0.5, gan_weight=0.1, fake_steps_per_generator=3,
                    regression_weight=0.25, regression_pairs=6, regression_teacher_steps=2)
    full = make_trainer(tmp_path / "a", steps=4, **settings)
    full.train()
    first = make_trainer(tmp_path / "b", steps=2, **settings)
    first.train()
    (_, path), = list_checkpoints(first.run_dir)
    second = make_trainer(tmp_path / "b", steps=4, **settings)
    second.load_checkpoint(path)
    assert (second.step, second.phase_steps) == (2, {"generator": 2, FAKE: 6})
    second.train()
    assert second.phase_steps == full.phase_steps == {"generator": 4, FAKE: 12} and second.drawn == full.drawn
    for name in ("student", "target", FAKE, GAN_HEAD):
        a, b = second.models.modules[name], full.models.modules[name]
        for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), (name, n)


def test_regression_pairs_are_the_teachers_own_ddim_samples():
    """The pairs equal a plain diffusers pipeline (DDIM, trailing, CFG) run from the pairs' noise,
    and making them draws nothing from the global RNG."""
    import diffusers

    from fewstep.distill.config import TinyArch
    from fewstep.distill.methods.regression import teacher_pairs

    pipe = build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=0)
    cfg = parse_config(run_dict(Path("/tmp"), method="dmd"))
    models = DMDMethod(cfg.method.config).build(pipe)
    captions = ["a large red circle on the left, gray background", "a small blue square"]
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    pairs = teacher_pairs(models, captions, steps=3, guidance=3.0)
    assert torch.equal(torch.random.get_rng_state(), state)
    plain = diffusers.StableDiffusionPipeline(**{k: v for k, v in pipe.components.items() if k != "scheduler"},
                                              scheduler=diffusers.DDIMScheduler.from_config(
                                                  pipe.scheduler.config, timestep_spacing="trailing"),
                                              requires_safety_checker=False)
    want = plain(captions, num_inference_steps=3, guidance_scale=3.0, latents=pairs.noise.clone(),
                 output_type="latent").images
    torch.testing.assert_close(pairs.latents, want, atol=1e-5, rtol=1e-5)


def test_gan_term_refuses_real_images_at_another_size_than_the_generators(tmp_path):
    """The GAN head compares real and generated latents; the generator makes the UNet's native size,
    so an image folder at another resolution is one ConfigError naming data.resolution (at native
    size the same run builds)."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (40 * i, 90, 200)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": "a red circle"}) + "\n"
                                                   for i in range(2)))
    for resolution, ok in ((16, False), (32, True)):
        raw = run_dict(tmp_path / str(resolution), method="dmd", steps=1, checkpoint_every=0)
        raw["method"]["gan_weight"] = 0.01
        raw["data"] = {"source": "imagefolder", "path": str(folder), "resolution": resolution}
        cfg = parse_config(raw)
        if ok:
            Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))
            continue
        with pytest.raises(ConfigError, match=r"^data.resolution: the GAN term .* size 32 px .* gives 16 px$"):
            Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_fake_weighting_snr_plus_1_weights_an_eps_fake_by_one_over_alpha_squared(tmp_path, kind):
    """method.fake_weighting: "snr+1" on an eps fake score is the v loss, i.e. the eps error times
    (SNR + 1) / SNR = 1 / alpha_bar (alpha^2 + sigma^2 = 1), computed here by hand from the same draws;
    "native" is the plain eps loss."""
    trainer = make_trainer(tmp_path, steps=1, kind=kind, fake_weighting="snr+1")
    method, models = trainer.method, trainer.models
    fake = models[FAKE]
    assert fake.prediction_type == "epsilon"
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8)
    cond = models.encode_text(["a red circle", "a blue square", ""])
    uncond = models.encode_text([""]).expand(3, -1, -1)
    losses = {}
    for weighting in ("native", "snr+1"):
        method.config.fake_weighting = weighting
        torch.manual_seed(1)
        with torch.no_grad():
            losses[weighting] = method.fake_denoising_loss(models, x0, cond, uncond)
    torch.manual_seed(1)  # the draws of fake_denoising_loss, in its order: t, then the noise
    t = torch.randint(0, fake.alphas_cumprod.shape[0], (3,))
    noise = torch.randn_like(x0)
    abar = fake.alphas_cumprod[t].float()
    x_t = abar.sqrt()[:, None, None, None] * x0 + (1 - abar).sqrt()[:, None, None, None] * noise
    with torch.no_grad():
        err = (fake(x_t, t, cond).output - noise).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["native"], err.mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses["snr+1"], (err / abar).mean(), rtol=1e-5, atol=1e-7)
    assert losses["snr+1"] > losses["native"]
