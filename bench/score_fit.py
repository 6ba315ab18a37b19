"""Does a score-distillation run's fake score track its generator? Per-timestep denoising losses and
the DMD gradient, measured on a checkpoint (a diagnostic for the ~0.75 plateau, bench/SCORE_DISTILLATION.md).

    OMP_NUM_THREADS=1 python bench/score_fit.py --run runs/tiny-dmd [--checkpoint checkpoint-300] \
        [--n 256] [--generator student] [--teacher-guidance G] [--out fit.json]

N procedural captions (validation split, seed 888) give three sample sets, all latents in the UNet's space:
  gen      the generator's 1-step samples (``--generator``: raw ``student``, which the fake score trains on,
           or the EMA ``target``, which ships), from noise z;
  teacher  25-step DDIM (the teacher's recipe) from the *same* z at ``--teacher-guidance`` (default: the
           run's method.real_guidance, i.e. the distribution DMD's real score points at);
  data     the procedural images of those captions, VAE-encoded.
For each t on the grid and each set (one noise draw per t, shared by the sets), with x_t = a x + s eps:
  fake / teach   eps-MSE of the fake score and of the teacher (no guidance) at x_t;
and on the gen set only, with x0_r the teacher's x0 at the run's real_guidance and x0_f the fake's:
  |f-r|          mean |x0_f - x0_r| (the raw DMD gradient), and |x-r| = mean |x - x0_r| (DMD's normaliser);
  cos_pair       mean over samples of cos(x0_r - x0_f, x_teacher(z) - x_gen(z)): does the update direction
                 (the generator moves along x0_r - x0_f) point at the teacher's sample from the same noise;
  cos_den        cos(x0_r - x0_f, x0_r - x): how much of the update is plain "towards the teacher's denoising".
Attribute accuracy ("all") of each set is printed first as a sanity check against the run's validation.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from fewstep.distill.data.procedural import ProceduralDataset, caption, sample_scene
from fewstep.distill.denoiser import Denoiser
from fewstep.distill.methods.generator import generator_step
from fewstep.distill.modelset import ModelSet
from fewstep.eval.classifier import attribute_accuracy, load_classifier
from fewstep.pipelines.eval_inputs import VALIDATION_SEED, prompt_labels
from fewstep.pipelines.teacher import ASSETS, load_pipeline


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a score-distillation run folder (config.yaml, checkpoints/)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder name (default: the newest)")
    p.add_argument("--generator", choices=("student", "target"), default="student")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--teacher-guidance", type=float, default=None)
    p.add_argument("--teacher-steps", type=int, default=25)
    p.add_argument("--ts", default="50,150,250,350,450,550,650,750,850,950")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON of the table")
    p.add_argument("--refit", type=int, default=0, help="> 0: replace the checkpoint's fake score by a copy of the "
                   "teacher trained this many steps (batch 16) on the frozen generator's fresh samples")
    p.add_argument("--refit-lr", type=float, default=1e-4)
    p.add_argument("--refit-clip", type=float, default=1.0, help="max grad norm (0: none)")
    p.add_argument("--refit-weight", choices=("eps", "v"), default="eps", help="eps-MSE, or x 1/abar_t (= v-MSE)")
    return p.parse_args()


def load_role(unet, sched, path: Path) -> Denoiser:
    den = Denoiser(copy.deepcopy(unet), sched)
    den.load_state_dict(load_file(str(path)), strict=True)
    return den.eval().requires_grad_(False)


@torch.enable_grad()
def refit(models, teacher, gen, args) -> Denoiser:
    """A fake score trained from the teacher on the frozen generator (the run's fake phase, in isolation)."""
    fk = Denoiser(copy.deepcopy(teacher.unet), models.scheduler_config)
    fk = fk.train().requires_grad_(True)
    opt = torch.optim.AdamW(fk.parameters(), lr=args.refit_lr, weight_decay=0.0)
    c, norms = fk.unet.config, []
    for i in range(args.refit):
        cond = models.encode_text([caption(sample_scene(0, int(j))) for j in torch.randint(0, 10**7, (16,))]).detach()
        with torch.no_grad():
            x0 = generator_step(gen, torch.randn(16, c.in_channels, c.sample_size, c.sample_size), args.t0, cond)
        t = torch.randint(0, 1000, (16,))
        a, s = fk.alpha_sigma(t)
        eps = torch.randn_like(x0)
        w = 1.0 if args.refit_weight == "eps" else 1.0 / a ** 2
        loss = (w * (fk(a * x0 + s * eps, t, cond).eps - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(fk.parameters(), args.refit_clip or float("inf")).item())
        opt.step()
        if (i + 1) % 100 == 0:
            print(f"refit {i + 1}: loss {loss.item():.4f}, grad norm (median of the last 100) {np.median(norms[-100:]):.3f}")
    return fk.eval().requires_grad_(False)


def mse(a, b):  # per-sample mean squared error
    return ((a - b) ** 2).flatten(1).mean(1)


def cos(a, b):  # per-sample cosine
    a, b = a.flatten(1), b.flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


@torch.no_grad()
def main():
    args = parse_args()
    run = Path(args.run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    m = cfg["method"]
    g_real = float(m.get("real_guidance", 1.0))
    args.t0 = int(m.get("generator_timestep", 999))  # where the run's 1-step generator runs
    g_teacher = g_real if args.teacher_guidance is None else args.teacher_guidance
    ckpts = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    ckpt = run / "checkpoints" / args.checkpoint if args.checkpoint else ckpts[-1]
    torch.manual_seed(args.seed)

    pipe = load_pipeline(cfg["model"]["pretrained"])
    sched = dict(pipe.scheduler.config)
    models = ModelSet(pipe)
    teacher = Denoiser(pipe.unet, sched).eval().requires_grad_(False)
    gen = load_role(pipe.unet, sched, ckpt / f"{args.generator}.safetensors")
    fake = load_role(pipe.unet, sched, ckpt / "fake_score.safetensors")
    if args.refit:
        print(f"refitting the fake score: {args.refit} steps, lr {args.refit_lr}, clip {args.refit_clip}, "
              f"{args.refit_weight} loss")
        fake = refit(models, teacher, gen, args)
    print(f"run {run.name} {ckpt.name}: real_guidance {g_real}, fake_guidance {m.get('fake_guidance', 1.0)}, "
          f"generator {args.generator} at t = {args.t0}, teacher samples at CFG {g_teacher}, {args.teacher_steps} DDIM steps")

    data = ProceduralDataset(VALIDATION_SEED)
    items = [data[i] for i in range(args.n)]
    captions = [it["caption"] for it in items]
    cond = models.encode_text(captions)
    uncond = models.encode_text([""]).expand(args.n, -1, -1)
    c = pipe.unet.config
    z = torch.randn(args.n, c.in_channels, c.sample_size, c.sample_size)

    x_gen = torch.cat([generator_step(gen, z[i:i + 64], args.t0, cond[i:i + 64]) for i in range(0, args.n, 64)])
    x_tea = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=z.clone(),
                 num_inference_steps=args.teacher_steps, guidance_scale=g_teacher, output_type="latent").images
    pixels = torch.stack([it["image"] for it in items]).float() / 127.5 - 1
    x_dat = models.encode_images(pixels)
    sets = {"gen": x_gen, "teacher": x_tea, "data": x_dat}

    clf = load_classifier(ASSETS / "classifier")
    labels = prompt_labels(captions)
    acc = {}
    for name, x in sets.items():
        img = ((models.decode(x) + 1) * 127.5).round().clamp(0, 255)
        acc[name] = attribute_accuracy(clf, img, labels)
    print("attribute accuracy:\n" + "\n".join(f"  {k}: " + ", ".join(f"{a} {v:.3f}" for a, v in r.items())
                                            for k, r in acc.items()))
    print(f"latent std: " + ", ".join(f"{k} {v.std():.3f}" for k, v in sets.items()) +
          f"; mean |x_gen - x_teacher(z)| {(x_gen - x_tea).abs().mean():.3f}")

    rows = []
    for t in [int(s) for s in args.ts.split(",")]:
        tt = torch.full((args.n,), t, dtype=torch.long)
        a, s = teacher.alpha_sigma(tt)
        eps = torch.randn_like(x_gen)
        row = {"t": t}
        for name, x in sets.items():
            x_t = a * x + s * eps
            row[f"{name}/fake"] = mse(fake(x_t, tt, cond).eps, eps).mean().item()
            row[f"{name}/teach"] = mse(teacher(x_t, tt, cond).eps, eps).mean().item()
        x_t = a * x_gen + s * eps
        real = teacher(x_t, tt, cond, uncond=uncond, guidance=g_real).x0 if g_real != 1 else teacher(x_t, tt, cond).x0
        g_fake = float(m.get("fake_guidance", 1.0))
        fk = fake(x_t, tt, cond).x0 if g_fake == 1 else fake(x_t, tt, cond, uncond=uncond, guidance=g_fake).x0
        diff, norm = (fk - real).abs().flatten(1).mean(1), (x_gen - real).abs().flatten(1).mean(1)
        row.update({"|f-r|": diff.mean().item(), "|x-r|": norm.mean().item(), "grad": (diff / norm).mean().item(),
                    "cos_pair": cos(real - fk, x_tea - x_gen).mean().item(),
                    "cos_den": cos(real - fk, real - x_gen).mean().item()})
        rows.append(row)

    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) if k == "t" else f"{r[k]:.4f}" for k in keys) + " |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys if k != "t"}
    print("| mean | " + " | ".join(f"{mean[k]:.4f}" for k in keys if k != "t") + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"run": str(run), "checkpoint": ckpt.name, "generator": args.generator,
                                              "real_guidance": g_real, "teacher_guidance": g_teacher,
                                              "accuracy": acc, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
