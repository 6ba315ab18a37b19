"""Exports load with plain diffusers (a subprocess that never imports fewstep) and reproduce
fewstep's own sampler number for number, at 1, 2 and 4 steps."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from fewstep.distill import schedules
from fewstep.distill.run_config import parse_config
from fewstep.distill.loop import Trainer
from fewstep.distill.schedules import guidance_embedding
from fewstep.pipelines.export import export_run
from fewstep.pipelines.teacher import load_pipeline
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import SMALL_ARCH, run_dict

PROMPTS = ["a large red circle on the left, gray background", "a small blue cross on the right, white background"]

PLAIN = textwrap.dedent("""
    import json, sys, torch, diffusers
    base, export, out, steps_list = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    recipe = json.load(open(export + "/fewstep_recipe.json"))
    if __import__("os").path.exists(export + "/pytorch_lora_weights.safetensors"):
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(base)
        pipe.load_lora_weights(export)  # and the stock scheduler saved next to it
        pipe.scheduler = getattr(diffusers, recipe["scheduler"]).from_pretrained(export, subfolder="scheduler")
    else:  # a full pipeline already carries its scheduler
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(export)
    assert type(pipe.scheduler).__name__ == recipe["scheduler"], type(pipe.scheduler)
    assert all(pipe.scheduler.config[k] == v for k, v in recipe["scheduler_kwargs"].items())
    pipe.set_progress_bar_config(disable=True)
    prompts = json.loads(sys.argv[5])
    res = {}
    for steps in steps_list:
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        lat = pipe(prompts, num_inference_steps=steps, guidance_scale=recipe["guidance"], generator=gens,
                   output_type="latent").images
        res[steps] = lat
    if pipe.unet.config.time_cond_proj_dim:  # guidance embedded in the UNet: still a knob at inference
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        res["other_guidance"] = pipe(prompts, num_inference_steps=1, guidance_scale=recipe["guidance"] + 4,
                                     generator=gens, output_type="latent").images
    res["fewstep_loaded"] = any(m.split(".")[0] in ("fewstep", "distill", "pipelines", "eval") for m in sys.modules)
    torch.save(res, out)
""")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from fewstep.distill.config import TinyArch

    path = tmp_path_factory.mktemp("base") / "tiny"
    build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=3).save_pretrained(path)
    return path


def train(tmp_path, base_dir, method, kind, alpha=4, **method_cfg):
    raw = run_dict(tmp_path, method=method, steps=4, checkpoint_every=0, lr=1e-2)
    raw["model"] = {"pretrained": str(base_dir)}
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": alpha}
    raw["method"].update(method_cfg)
    cfg = parse_config(raw)
    trainer = Trainer(cfg, load_pipeline(str(base_dir)))
    trainer.train()
    return cfg, trainer


@torch.no_grad()
def consistency_sample(denoiser, cond: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor, *,
                       rule: str, generator=None, timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
    """fewstep's own few-step sampler, written from the schedule math (not from diffusers' schedulers):
    the oracle the exported stock schedulers are compared with.

    rule="lcm" (multistep consistency sampling, Song et al. 2023 Alg. 1 with LCM's scalings): the
        consistency function at each timestep, re-noised to the next one with fresh noise.
    rule="tcd" (eta 0): DDIM jumps between the segment edges, the last one to timestep 0.
    Fresh noise comes from diffusers' ``randn_tensor`` with ``generator``, so for the same seeds the
    result compares with a stock pipeline number for number. Returns the final latents.
    """
    from diffusers.utils.torch_utils import randn_tensor

    abar = denoiser.alphas_cumprod
    x = latents
    for i, t in enumerate(timesteps.tolist()):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        pred = denoiser(x, tt, cond, timestep_cond=timestep_cond)
        nxt = torch.full_like(tt, int(timesteps[i + 1]) if i + 1 < len(timesteps) else 0)
        if rule == "lcm":
            denoised = schedules.consistency_function(x, pred.x0, tt)
            if i + 1 == len(timesteps):
                return denoised
            a, s = schedules.alpha_sigma(abar, nxt)
            x = a * denoised + s * randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        else:
            x = schedules.ddim_jump(pred.x0, pred.eps, abar, nxt)
    return x


def plain_diffusers_latents(tmp_path, base_dir, export, steps_list: list[int]) -> dict:
    """Latents of ``export`` sampled by the PLAIN script in a subprocess that never imports fewstep (asserted)."""
    script, res_file = tmp_path / "plain.py", tmp_path / "plain.pt"
    script.write_text(PLAIN)
    proc = subprocess.run([sys.executable, str(script), str(base_dir), str(export), str(res_file),
                           json.dumps(steps_list), json.dumps(PROMPTS)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                             "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = torch.load(res_file)
    assert plain["fewstep_loaded"] is False
    return plain


def fewstep_latents(trainer, recipe, steps, guidance):
    """fewstep's own sampler on the trained student, with the pipeline's initial noise and seeds."""
    from diffusers.utils.torch_utils import randn_tensor

    models = trainer.models
    models.modules[models.module_of("target")].eval()
    net = models["target"]  # the exported role
    cond = models.encode_text(PROMPTS)
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    unet = net.unet
    shape = (len(PROMPTS), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = randn_tensor(shape, generator=gens, dtype=torch.float32)
    rule = "lcm" if recipe.scheduler == "LCMScheduler" else "tcd"
    timesteps = schedules.consistency_timesteps(steps, recipe.scheduler_kwargs["original_inference_steps"])
    w_emb = None
    if unet.config.time_cond_proj_dim:
        w_emb = guidance_embedding(torch.full((len(PROMPTS),), guidance - 1.0), unet.config.time_cond_proj_dim)
    return consistency_sample(net, cond, timesteps, latents, rule=rule, generator=gens, timestep_cond=w_emb)


@pytest.mark.parametrize("method,kind,extra", [
    ("lcm", "lora", {"num_ddim_timesteps": 10}),  # the embedded configs' grid
    ("lcm", "full", {"target_ema": 0.5}),  # LCM's default grid of 50
    ("tscd", "lora", {"alpha": 8, "stages": [{"segments": 4, "steps": 2}, {"segments": 2, "steps": 1},
                                 {"segments": 1, "steps": 1}]}),
])
def test_export_matches_fewstep_sampler_in_plain_diffusers(tmp_path, base_dir, method, kind, extra):
    cfg, trainer = train(tmp_path, base_dir, method, kind, **extra)
    out = export_run(trainer.method, trainer.models, cfg, tmp_path / "export")
    files = {p.name for p in out.iterdir()}
    assert {"README.md", "fewstep_recipe.json", "fewstep_config.yaml"} <= files
    assert ("pytorch_lora_weights.safetensors" in files) == (kind == "lora")
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: diffusers" in card and "base_model:" in card
    recipe = trainer.method.recipe()
    steps_list = [1, 2, 4]
    plain = plain_diffusers_latents(tmp_path, base_dir, out, steps_list)
    for steps in steps_list:
        ours = fewstep_latents(trainer, recipe, steps, recipe.guidance)
        diff = (ours - plain[steps]).abs().max().item()
        assert diff <= 1e-4, (method, kind, steps, diff)
    # The student really differs from its base: the comparison above is not trivially true.
    base = load_pipeline(str(base_dir))
    base.scheduler = type(base.scheduler).from_config(base.scheduler.config)
    base_unet_out = base.unet(plain[1], torch.tensor([999]), encoder_hidden_states=trainer.models.encode_text(PROMPTS)).sample
    net = trainer.models["target"]
    student_out = net.unet(plain[1], torch.tensor([999]), encoder_hidden_states=trainer.models.encode_text(PROMPTS),
                           timestep_cond=None if not net.unet.config.time_cond_proj_dim else
                           guidance_embedding(torch.full((2,), recipe.guidance - 1.0),
                                              net.unet.config.time_cond_proj_dim)).sample
    assert (base_unet_out - student_out).abs().max().item() > 1e-2
    if kind == "full":  # the embedded guidance scale changes the images (and fewstep agrees on how)
        assert (plain["other_guidance"] - plain[1]).abs().max().item() > 1e-3
        ours = fewstep_latents(trainer, recipe, 1, recipe.guidance + 4)
        assert (ours - plain["other_guidance"]).abs().max().item() <= 1e-4


@pytest.fixture
def fresh_accelerate_state():
    """Mixed precision is process-wide accelerate state: reset it around the test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_mixed_precision_export_carries_full_precision_networks(tmp_path, base_dir, kind, fresh_accelerate_state):
    """A bf16 run stores its frozen networks in bf16; its export must not: a LoRA's fingerprint is
    that of the real (float32) base it loads onto, and a full pipeline's VAE and text encoder are the
    teacher's own float32 weights."""
    from fewstep.pipelines.export import check_lora_base

    raw = run_dict(tmp_path, method="lcm", steps=2, checkpoint_every=0, mixed_precision="bf16")
    raw["model"] = {"pretrained": str(base_dir)}
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    raw["method"].update({"num_ddim_timesteps": 10})
    cfg = parse_config(raw)
    trainer = Trainer(cfg, load_pipeline(str(base_dir)))
    trainer.train()
    assert trainer.models.pipe.vae.dtype == torch.bfloat16  # what the export has to undo
    out = export_run(trainer.method, trainer.models, cfg, tmp_path / "export", grid_prompts=PROMPTS)
    assert (out / "samples.png").is_file()
    base = load_pipeline(str(base_dir))
    if kind == "lora":
        check_lora_base(out, base.unet)  # raises if the fingerprint came from the bf16 copy
        base.load_lora_weights(str(out))
        assert base.unet.dtype == torch.float32
        return
    exported = load_pipeline(str(out))
    for name in ("vae", "text_encoder"):
        got, want = getattr(exported, name).state_dict(), getattr(base, name).state_dict()
        assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want), name
    assert exported.unet.dtype == torch.float32
