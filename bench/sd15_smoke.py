"""Smoke run of every ``configs/sd15/*.yaml`` on Stable Diffusion 1.5's real architecture (issue 12).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/sd15_smoke.py --work /tmp/sd15-smoke \
        --out bench/results/sd15-smoke [--configs lcm_lora,tscd_lora] [--steps 3] [--resolution 64]

No SD1.5 weights can be downloaded here, so ``bench/sd15_arch.py`` builds the architecture (UNet 859.5M
parameters, VAE, CLIP ViT-L/14 text tower, PNDM scheduler) with random weights and saves it into a
Hugging Face hub cache under ``<work>/hub`` as the snapshot of the configs' own id
``stable-diffusion-v1-5/stable-diffusion-v1-5``: every run and the reload below find the teacher by that
id with ``HF_HUB_OFFLINE=1``, as a user with the weights in their cache does (``--local``: pass the
snapshot folder as ``model.pretrained`` instead). The UNet's ``sample_size`` is written as
resolution / 8: the generator methods (DMD2, SiD, VSD) draw their noise at ``unet.config.sample_size``,
which ``data.resolution`` does not change; every other value is SD1.5's.

Each config runs through the real ``fewstep train`` command line in a subprocess, the overrides
limited to: the teacher, ``train.mixed_precision`` fp16 -> no (accelerate enables fp16 autocast only off
the CPU, accelerator.py's ``native_amp``, while fewstep stores frozen networks in fp16: on a CPU the first
fp32 x fp16 matmul fails), ``train.steps``, ``train.batch_size``, ``train.grad_accum`` 1, ``data.resolution``,
``data.path`` (a folder of procedural images with ``metadata.jsonl`` captions, or their captions as a
prompts file), ``data.num_workers`` 0 (2 cores), ``output_dir``, ``train.log_every`` 1 (to read
seconds per step), ``train.validation_every`` 0, ``validation.metrics`` false, ``validation.num_images`` 1 and
``eval.enabled`` false. Then a second subprocess that imports only torch and diffusers reloads the export
as its model card says and samples one image at the recipe's steps and guidance.

Recorded per config: the kernel's peak resident set of the training process (``ru_maxrss`` from
``wait4``), seconds per step from ``logs.jsonl`` (the first step, which allocates optimizer states, apart
from the median of the rest), the wall time of the whole command, and the reload's peak RSS and time.
A config whose estimated need exceeds the memory available is not run; the estimate is written out.
A watchdog stops a child when MemAvailable falls below ``--min-free-gb`` (other jobs share this machine).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "sd15"
GIB = 1024 ** 3
HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # what configs/sd15/*.yaml name
SEED_TEXT = "fewstep bench/sd15_smoke.py random SD1.5 weights, seed 0"
COMMIT = hashlib.sha1(SEED_TEXT.encode()).hexdigest()  # the fake snapshot's commit hash
OVERHEAD = int(1.5 * GIB)  # interpreter, torch, diffusers, activations at 64-128 px, batch 1-2 (measured: see notes)

# The reload: what a user of the export runs (its model card), importing nothing from fewstep.
RELOAD = r"""
import json, os, sys, time
import numpy as np, torch, diffusers
base, export, out, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
recipe = json.load(open(os.path.join(export, "fewstep_recipe.json")))
lora = os.path.isfile(os.path.join(export, "pytorch_lora_weights.safetensors"))
pipe = diffusers.StableDiffusionPipeline.from_pretrained(base if lora else export, safety_checker=None,
                                                         requires_safety_checker=False)
if lora:
    pipe.load_lora_weights(export)
pipe.scheduler = getattr(diffusers, recipe["scheduler"]).from_pretrained(export, subfolder="scheduler")
loaded = time.perf_counter()
image = pipe("red circle", num_inference_steps=recipe["steps"], guidance_scale=recipe["guidance"], height=size,
             width=size, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
assert np.isfinite(image).all(), "non-finite pixels"
diffusers.utils.numpy_to_pil(image[None])[0].save(out)
print(json.dumps({"scheduler": recipe["scheduler"], "steps": recipe["steps"], "guidance": recipe["guidance"],
                  "lora": lora, "load_s": loaded - t0, "sample_s": time.perf_counter() - loaded,
                  "pixel_mean": float(image.mean()), "pixel_std": float(image.std())}))
"""


# ---- the teacher and the data -----------------------------------------------------------------------
def snapshot_dir(hub: Path) -> Path:
    """Where huggingface_hub keeps a model repo's files: models--{org}--{name}/snapshots/{commit}/ (its
    ``refs/main`` holds the commit the id resolves to)."""
    return hub / ("models--" + HUB_ID.replace("/", "--")) / "snapshots" / COMMIT


def build_teacher(hub: Path, latent: int) -> None:
    """Save SD1.5's architecture with random weights as the cached snapshot of ``HUB_ID`` (run in a child:
    the parent stays small)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sd15_arch import sd15_pipeline

    snap = snapshot_dir(hub)
    pipe = sd15_pipeline(seed=0)
    pipe.unet.register_to_config(sample_size=latent)
    pipe.save_pretrained(snap, safe_serialization=True)
    (snap.parents[1] / "refs").mkdir(exist_ok=True)
    (snap.parents[1] / "refs" / "main").write_text(COMMIT)


def write_data(folder: Path, n: int) -> tuple[Path, Path]:
    """``n`` procedural images with ``metadata.jsonl`` captions (imagefolder), and their captions one a line."""
    from PIL import Image

    from fewstep.distill.data.procedural import ProceduralDataset

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    ds, lines = ProceduralDataset(0), []
    for i in range(n):
        item = ds[i]
        Image.fromarray(item["image"].permute(1, 2, 0).numpy()).save(images / f"{i:03d}.png")
        lines.append(json.dumps({"file_name": f"{i:03d}.png", "text": item["caption"]}))
    (images / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(json.loads(line)["text"] for line in lines) + "\n")
    return images, prompts


# ---- the memory estimate -----------------------------------------------------------------------------
def param_counts() -> dict:
    """Parameter counts of SD1.5's UNet and of its frozen VAE + text encoder (meta device: no memory)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from sd15_arch import SD15_TEXT, SD15_VAE, sd15_unet
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = sd15_unet()
        others = sum(p.numel() for m in (AutoencoderKL(**SD15_VAE), CLIPTextModel(CLIPTextConfig(**SD15_TEXT)))
                     for p in m.parameters())
    return {"unet": sum(p.numel() for p in unet.parameters()), "frozen_others": others, "_unet": unet}


def lora_params(unet, rank: int, targets: list[str]) -> int:
    """Parameters of a rank-``rank`` LoRA on ``targets``: r (in + out) per Linear, r (in k^2 + out) per Conv2d."""
    from torch import nn

    from fewstep.distill.students import lora_target_modules

    mods = dict(unet.named_modules())
    total = 0
    for name in lora_target_modules(unet, targets):
        m = mods[name]
        fan_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        total += rank * (fan_in + (m.out_features if isinstance(m, nn.Linear) else m.out_channels))
    return total


def estimate(cfg, counts: dict) -> tuple[int, str]:
    """Bytes the run should need and how they add up: fp32 weights of what is trained, their gradients and
    Adam's two moments (4 copies x 4 bytes), EMA copies, frozen networks in the mixed-precision dtype, and
    a fresh fp32 teacher that a mixed-precision full student's export loads while the run's state lives."""
    p, others = counts["unet"], counts["frozen_others"]
    method, student = cfg.method.config, cfg.student
    frozen = 2 if cfg.train.mixed_precision in ("fp16", "bf16") else 4
    parts = {"teacher UNet + VAE + text encoder": frozen * (p + others)}
    if student.kind == "full":
        parts["student (weights, grads, Adam m+v)"] = 16 * p
        if getattr(method, "target_ema", 0) or getattr(method, "ema_decay", 0):
            parts["EMA copy"] = 4 * p
    else:
        parts["student LoRA x 4 copies"] = 16 * lora_params(counts["_unet"], student.lora_rank, student.lora_targets)
    if hasattr(method, "fake_lora_rank"):  # a score-distillation method: its fake score
        if method.fake_lora_rank:
            targets = list(method.fake_lora_targets) or list(student.lora_targets)
            parts["fake-score LoRA x 4 copies"] = 16 * lora_params(counts["_unet"], method.fake_lora_rank, targets)
        else:
            parts["fake score (weights, grads, Adam m+v)"] = 16 * p
    if student.kind == "full" and frozen == 2:
        parts["fresh fp32 teacher at export"] = 4 * (p + others)
    parts["runtime + activations"] = OVERHEAD
    total = sum(parts.values())
    return total, " + ".join(f"{k} {v / GIB:.1f}" for k, v in parts.items()) + f" = {total / GIB:.1f} GiB"


# ---- running a child ---------------------------------------------------------------------------------
def mem_available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def run_child(cmd: list[str], env: dict, log: Path, min_free: float, timeout: float) -> dict:
    """Run ``cmd`` (its own process group), output to ``log``; exit status, wall time and the kernel's
    peak RSS of the child. The watchdog ends the group below ``min_free`` GiB available or past ``timeout``."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    why: list[str] = []

    def watch():
        while proc.returncode is None:
            if mem_available() < min_free * GIB:
                why.append(f"stopped by the watchdog: MemAvailable below {min_free} GiB")
            elif time.perf_counter() - t0 > timeout:
                why.append(f"stopped: ran past {timeout:.0f} s")
            if why:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended meanwhile
                    pass
                return
            time.sleep(0.25)

    threading.Thread(target=watch, daemon=True).start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),  # robust to other jobs taking the cores
            "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2), "stopped": why[0] if why else None}


def tail(log: Path, n: int = 6) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-n:])


def step_times(run_dir: Path) -> dict:
    """The first step's seconds and the median of the others, from the run's logs.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "logs.jsonl").read_text().splitlines() if line.strip()]
    secs = [r["sec_per_step"] for r in rows if "sec_per_step" in r]
    return {"first_step_s": round(secs[0], 1) if secs else None,
            "s_per_step": round(statistics.median(secs[1:]), 1) if len(secs) > 1 else None,
            "losses": {k: v for k, v in (rows[-1] if rows else {}).items() if k.endswith("loss")}}


def smoke(name: str, args, env: dict, teacher: str, data: tuple[Path, Path], counts: dict) -> dict:
    from fewstep.distill.run_config import load_config

    config = CONFIGS / f"{name}.yaml"
    cfg0 = load_config(config)
    images, prompts = data
    sets = [f"model.pretrained={teacher}", f"train.steps={args.steps}", f"train.batch_size={args.batch}",
            "train.grad_accum=1", f"data.resolution={args.resolution}",
            f"data.path={images if cfg0.data.source == 'imagefolder' else prompts}", "data.num_workers=0",
            f"output_dir={args.work / 'runs'}", "train.log_every=1", "train.validation_every=0",
            "validation.metrics=false", "validation.num_images=1", "eval.enabled=false"]
    if cfg0.train.mixed_precision == "fp16":  # accelerate runs no fp16 autocast on a CPU (see the notes)
        sets.append('train.mixed_precision="no"')  # quoted: YAML reads a bare no as false
    cfg = load_config(config, sets)
    need, why = estimate(cfg, counts)
    row = {"config": f"configs/sd15/{name}.yaml", "method": cfg.method.name, "student": cfg.student.kind,
           "mixed_precision": cfg0.train.mixed_precision, "ran_precision": cfg.train.mixed_precision,
           "estimate_gib": round(need / GIB, 1), "estimate": why,
           "overrides": sets}
    free = mem_available()
    if need > min(24 * GIB, free - args.min_free_gb * GIB):
        row["status"] = (f"does not fit: est. {need / GIB:.1f} GiB (MemAvailable {free / GIB:.1f} GiB, "
                         "machine 24 GiB)")
        return row
    run_dir = args.work / "runs" / cfg.name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run into an old folder would append to its logs.jsonl
    cmd = [str(Path(sys.executable).parent / "fewstep"), "train", str(config), *[a for s in sets for a in ("--set", s)]]
    train = run_child(cmd, env, args.work / f"{name}.train.log", args.min_free_gb, args.timeout)
    row["train"] = train
    if (run_dir / "logs.jsonl").is_file():
        row.update(step_times(run_dir))
    if train["rc"] != 0:
        row["status"] = f"train failed: {train['stopped'] or tail(args.work / f'{name}.train.log')}"
        return row
    image = args.out / f"{name}.png"
    reload = run_child([sys.executable, "-c", RELOAD, teacher, str(run_dir / "export"), str(image),
                        str(args.resolution)], env, args.work / f"{name}.reload.log", args.min_free_gb, args.timeout)
    row["reload"] = reload
    log = (args.work / f"{name}.reload.log").read_text().strip().splitlines()
    if reload["rc"] != 0:
        row["status"] = f"reload failed: {reload['stopped'] or tail(args.work / f'{name}.reload.log')}"
        return row
    row["sample"] = json.loads(log[-1])
    row["status"] = "ok"
    return row


# ---- report ------------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    head = ("| config | method / student | precision (ran) | est. GiB | train peak RSS GiB | s/step (first) | "
            "train wall s (CPU s) | reload + 1 sample: peak GiB, s | status |\n|---|---|---|---|---|---|---|---|---|\n")
    out = []
    for r in rows:
        t, rl, s = r.get("train", {}), r.get("reload", {}), r.get("sample", {})
        step = f"{r['s_per_step']} ({r['first_step_s']})" if r.get("s_per_step") is not None else "-"
        rel = (f"{rl['peak_rss_gib']}, {s.get('load_s', 0) + s.get('sample_s', 0):.0f} "
               f"({s.get('scheduler')}, {s.get('steps')} step(s))") if s else "-"
        ran = r.get("ran_precision", r["mixed_precision"])
        prec = r["mixed_precision"] if ran == r["mixed_precision"] else f"{r['mixed_precision']} ({ran})"
        wall = f"{t['wall_s']} ({t['cpu_s']})" if "cpu_s" in t else t.get("wall_s", "-")
        out.append(f"| {r['config'].split('/')[-1]} | {r['method']} / {r['student']} | {prec} | "
                   f"{r['estimate_gib']} | {t.get('peak_rss_gib', '-')} | {step} | {wall} | {rel} | {r['status']} |")
    return head + "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sd15-smoke"), help="teacher cache, data, runs, logs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sd15-smoke")
    ap.add_argument("--configs", default=",".join(sorted(p.stem for p in CONFIGS.glob("*.yaml"))))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=64, help="pixels; the UNet's sample_size is this / 8")
    ap.add_argument("--images", type=int, default=8, help="procedural images in the data folder")
    ap.add_argument("--local", action="store_true", help="model.pretrained = the snapshot folder, not the hub id")
    ap.add_argument("--min-free-gb", type=float, default=1.5)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--_build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._build:
        build_teacher(args._build, args.resolution // 8)
        return 0
    args.work, args.out = args.work.resolve(), args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    hub = args.work / "hub"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_CACHE": str(hub),
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    build = None
    if not (snapshot_dir(hub) / "model_index.json").is_file():
        hub.mkdir(parents=True, exist_ok=True)
        build = run_child([sys.executable, __file__, "--_build", str(hub), "--resolution", str(args.resolution)],
                          env, args.work / "build.log", args.min_free_gb, args.timeout)
        print(f"built the SD1.5 architecture into {snapshot_dir(hub)}: {build}", file=sys.stderr)
        if build["rc"] != 0:
            print(tail(args.work / "build.log"), file=sys.stderr)
            return 1
    if args.build_only:
        return 0
    teacher = str(snapshot_dir(hub)) if args.local else HUB_ID
    data = write_data(args.work / "data", args.images)
    counts = param_counts()
    results_file = args.out / "smoke.json"
    old = json.loads(results_file.read_text()) if results_file.is_file() else {}
    rows = {r["config"]: r for r in old.get("rows", [])}
    for name in args.configs.split(","):
        print(f"--- {name}", file=sys.stderr)
        row = smoke(name, args, env, teacher, data, counts)
        print(json.dumps({k: v for k, v in row.items() if k != "overrides"}), file=sys.stderr)
        rows[row["config"]] = row
        results = {"teacher": HUB_ID if not args.local else "local snapshot", "commit": COMMIT,
                   "params": {k: v for k, v in counts.items() if not k.startswith("_")},
                   "steps": args.steps, "batch": args.batch, "resolution": args.resolution,
                   "build": build or old.get("build"), "rows": sorted(rows.values(), key=lambda r: r["config"])}
        results_file.write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "smoke.md").write_text(table(results["rows"]))
    print(table(results["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
