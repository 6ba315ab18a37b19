"""GPU benchmark (issue 13): fewstep's training steps and sampling latency on Stable Diffusion 1.5's
architecture at 512 px in bf16. Run through ``bench/gpu.sh`` on a machine with a CUDA GPU; never by tests.

    bash bench/gpu.sh [OUT_DIR]        # default bench/results/gpu; writes gpu.json and gpu.md there

Parts, in this order, each written to the results as soon as it ends; ``--budget`` seconds bound the whole
run (a part that would not fit in what is left is skipped and says so):

1. **chip**: the GPU's name, torch / CUDA versions, the chip's dense bf16 peak from its data sheet where
   known, and a measured 8192^3 bf16 matrix product (TFLOP/s, median of 10 after 3 warm-ups).
2. **teacher**: ``bench/sd15_smoke.py --build-only`` saves SD1.5's architecture with random weights
   (``bench/sd15_arch.py``; the UNet's sample_size 64) and 64 procedural captioned images (upscaled to
   512 px by the data loader: the tensors have the real sizes).
3. **passes** (the step's bound, target 2 of the issue): for each student kind (LoRA rank 64 on
   ``configs/sd15/lcm_lora.yaml``'s targets on the frozen bf16 UNet; full: an fp32 UNet with an fp32 EMA
   target) and batch, each pass an LCM step must do, timed alone on the same inputs under bf16 autocast
   with CUDA events (median of 5 after 2 warm-ups): text encode (B prompts), VAE encode (B images,
   512 px), teacher forward with CFG (2B rows), target forward (B), student forward + backward (B),
   AdamW step, and for the full student the EMA update. Their FLOPs from
   ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention). Then the three UNet
   passes again with the networks NHWC (``train.channels_last``), outside the bound.
4. **sampling**: ``StableDiffusionPipeline`` in fp16 at 512 px, batch 1: the teacher at 50 and 25 DDIM
   steps with CFG 7.5 vs an LCMScheduler student at 1 / 2 / 4 / 8 steps without CFG (same random UNet:
   the cost, not the pictures), each to images and to latents (the difference is the VAE decode);
   median of 5 after 2 warm-ups. Ideal speedup by UNet evaluations: 100 / n vs 50 steps + CFG.
5. **train**: the real command line, ``python -m fewstep.pipelines.cli train configs/sd15/lcm_lora.yaml``
   (LoRA, and ``student.kind=full``; then ``configs/sd15/dmd2.yaml``) with ``train.mixed_precision=bf16``,
   ``--steps`` steps, each batch of ``--batches``, data from the folder of part 2 (8 loader workers),
   ``train.log_every=1``; seconds per step = median of the logged ``sec_per_step`` after the first
   ``--skip`` steps; images/s = batch / that; peak GPU memory = the logged ``mem/gpu_peak_gib``
   (``torch.cuda.max_memory_allocated``; the CUDA context and the allocator's cache come on top);
   achieved TFLOP/s = the passes' FLOPs / seconds per step; step / bound = seconds per step / the sum
   of the passes' times.
6. **LoRA sampling**: the LCM-LoRA export of part 5 loaded with ``load_lora_weights`` at 4 steps,
   unfused and after ``fuse_lora()``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from sd15_smoke import run_child, snapshot_dir, tail, write_data  # noqa: E402

# dense (no sparsity) bf16 tensor-core peak from NVIDIA's data sheets, TFLOP/s
PEAK_BF16 = {"H200": 989.5, "H100 80GB HBM3": 989.5, "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.05,
             "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.2}
GIB = 2 ** 30
DEV = "cuda"  # --device cpu: a dry run of every part on this machine's CPU (small sizes), for checking the script


def peak_for(name: str) -> float | None:
    hits = [v for k, v in PEAK_BF16.items() if k in name]
    return max(hits) if hits else None


def cuda_time(fn, warmup: int = 2, repeats: int = 5) -> dict:
    """Median / min / max seconds of ``fn()`` by CUDA events (wall clock on a CPU dry run)."""
    if DEV != "cuda":
        warmup, repeats = 0, 1
    for _ in range(warmup):
        fn()
    secs = []
    for _ in range(repeats):
        if DEV != "cuda":
            t = time.perf_counter()
            fn()
            secs.append(time.perf_counter() - t)
            continue
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        secs.append(a.elapsed_time(b) / 1e3)
    return {"s": statistics.median(secs), "min": min(secs), "max": max(secs)}


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class Results:
    def __init__(self, out: Path, budget: float):
        self.out, self.t0, self.budget = out, time.perf_counter(), budget
        self.data: dict = {"date": time.strftime("%Y-%m-%d"), "parts": {}, "skipped": []}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def fits(self, part: str, need: float) -> bool:
        if self.left() >= need:
            return True
        self.data["skipped"].append(f"{part}: needs ~{need:.0f} s, {self.left():.0f} s left of --budget")
        self.save()
        return False

    def guard(self, part: str, fn, *a, **k):
        """``fn(*a, **k)``; an exception is recorded under ``part`` and the run goes on to the next part."""
        try:
            return fn(*a, **k)
        except Exception as e:  # one shot on a lent machine: keep the other parts' numbers
            import traceback

            self.data.setdefault("errors", {})[part] = traceback.format_exc(limit=6)
            print(f"{part} failed: {e!r}", flush=True)
            empty_cache()
            self.save()
            return None

    def put(self, part: str, value) -> None:
        self.data["parts"][part] = value
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.save()

    def save(self) -> None:
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=1) + "\n")
        (self.out / "gpu.md").write_text(report(self.data))


# ---- 1. the chip --------------------------------------------------------------------------------------
def chip() -> dict:
    cuda = DEV == "cuda"
    name = torch.cuda.get_device_name() if cuda else "cpu (dry run)"
    n = 8192 if cuda else 512
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    t = cuda_time(lambda: a @ b, warmup=3, repeats=10)
    import accelerate
    import diffusers
    import peft
    import transformers

    return {"gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "packages": {m.__name__: m.__version__ for m in (diffusers, peft, transformers, accelerate)},
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if cuda else None,
            "peak_bf16_tflops_datasheet": peak_for(name), "matmul_8192_bf16_tflops": round(2 * n ** 3 / t["s"] / 1e12, 1)}


# ---- 3. the passes of one LCM step --------------------------------------------------------------------
def passes(kind: str, batch: int, student_cfg, latent: int) -> dict:
    """Each pass of an LCM step timed alone (see the module doc); the networks are built here with random
    weights (the architecture is what costs), in the dtypes the loop keeps them in."""
    import copy

    from diffusers import AutoencoderKL
    from sd15_arch import SD15_TEXT, SD15_VAE, sd15_unet
    from transformers import CLIPTextConfig, CLIPTextModel

    from fewstep.distill.modelset import View, adapters_as, ema_update  # the loop's teacher view of a LoRA UNet
    from fewstep.distill.students import add_lora

    dev, bf16 = torch.device(DEV), torch.bfloat16
    torch.manual_seed(0)
    with dev:  # built on the device: a CPU initialisation of ~1 B parameters costs more than the timing
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).to(dev, bf16).eval()
        vae = AutoencoderKL(**SD15_VAE).to(dev, bf16).eval()
        base = sd15_unet(latent=latent).to(dev)
    if kind == "lora":  # as the loop keeps it: an fp32 adapter over the base stored in bf16
        student = teacher = target = add_lora(base, student_cfg)
        trainable = [p for n, p in student.named_parameters() if "lora_" in n]
        for n, p in student.named_parameters():
            p.requires_grad_("lora_" in n)
            if "lora_" not in n:
                p.data = p.data.to(bf16)
    else:
        student = base.train()
        target = copy.deepcopy(base).requires_grad_(False)
        teacher = copy.deepcopy(base).to(bf16).requires_grad_(False)
        trainable = list(student.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-6)
    x = torch.randn(batch, 4, latent, latent, device=dev)
    t = torch.randint(0, 1000, (batch,), device=dev)
    enc = torch.randn(batch, 77, 768, device=dev)
    ids = torch.randint(0, 49408, (batch, 77), device=dev)
    img = torch.randn(batch, 3, 8 * latent, 8 * latent, device=dev, dtype=bf16)
    auto = lambda: torch.autocast(DEV, dtype=bf16)  # noqa: E731

    def teacher_cfg():
        base_view = adapters_as(student, View("unet", base=True)) if kind == "lora" else nullcontext()
        with torch.no_grad(), auto(), base_view:
            teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([enc, enc])).sample

    def target_fwd():
        with torch.no_grad(), auto():
            target(x, t, enc).sample

    def student_fb():
        with auto():
            out = student(x, t, enc).sample
        out.float().square().mean().backward()

    def text_enc():
        with torch.no_grad(), auto():
            text(ids)

    def vae_enc():
        with torch.no_grad(), auto():
            vae.encode(img).latent_dist.sample()

    student_fb()  # gradients exist for the optimizer's timing
    named = {"text_encode": text_enc, "vae_encode": vae_enc, "teacher_cfg_forward": teacher_cfg,
             "target_forward": target_fwd, "student_forward_backward": student_fb,
             "adamw_step": lambda: opt.step()}
    if kind == "full":
        named["ema_update"] = lambda: ema_update(target, student, 0.95)
    rows = {}
    for name, fn in named.items():  # (the optimizer's and EMA's arithmetic is not counted: elementwise)
        rows[name] = {**cuda_time(fn), "flops": flops(fn) if name not in ("adamw_step", "ema_update") else 0}
    total_s = sum(r["s"] for r in rows.values())
    total_f = sum(r["flops"] for r in rows.values())
    # train.channels_last (bench/STEP_OPTIMISATIONS.md; 1 % of a compiled CPU step): the three UNet passes
    # again with every network NHWC, as the loop converts them; not part of the bound
    for net in {id(n): n for n in (student, teacher, target)}.values():
        net.to(memory_format=torch.channels_last)
    nhwc = {n: cuda_time(named[n]) for n in ("teacher_cfg_forward", "target_forward", "student_forward_backward")}
    del student, teacher, target, base, opt, text, vae
    empty_cache()
    return {"kind": kind, "batch": batch, "passes": rows, "bound_s": total_s, "flops": total_f,
            "bound_tflops": total_f / total_s / 1e12, "channels_last": nhwc}


def empty_cache() -> None:
    if DEV == "cuda":
        torch.cuda.empty_cache()


# ---- 4 / 6. sampling latency --------------------------------------------------------------------------
def sampling(snapshot: Path, size: int, lora: Path | None = None) -> dict:
    from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(snapshot, torch_dtype=torch.float16 if DEV == "cuda" else None,
                                                   safety_checker=None, requires_safety_checker=False).to(DEV)
    pipe.set_progress_bar_config(disable=True)
    ddim, lcm = DDIMScheduler.from_config(pipe.scheduler.config), LCMScheduler.from_config(pipe.scheduler.config)

    def time_it(steps: int, guidance: float, scheduler, output: str) -> dict:
        pipe.scheduler = scheduler
        g = torch.Generator(DEV)
        return cuda_time(lambda: pipe("a red circle above a blue square", num_inference_steps=steps,
                                      guidance_scale=guidance, height=size, width=size,
                                      generator=g.manual_seed(0), output_type=output).images)

    rows = {}
    if lora is None:
        for steps, guidance, sched, who in ((50, 7.5, ddim, "teacher"), (25, 7.5, ddim, "teacher"),
                                            (1, 1.0, lcm, "student"), (2, 1.0, lcm, "student"),
                                            (4, 1.0, lcm, "student"), (8, 1.0, lcm, "student")):
            image, latent = time_it(steps, guidance, sched, "np"), time_it(steps, guidance, sched, "latent")
            rows[f"{who}-{steps}"] = {"steps": steps, "cfg": guidance > 1, "image_s": image["s"],
                                      "latent_s": latent["s"], "decode_s": image["s"] - latent["s"],
                                      "spread": [image["min"], image["max"]]}
        base = rows["teacher-50"]["image_s"]
        for r in rows.values():
            if r["cfg"] is False:
                r["speedup"] = base / r["image_s"]
                r["ideal"] = 100 / r["steps"]
                r["of_ideal"] = r["speedup"] / r["ideal"]
    else:
        pipe.load_lora_weights(str(lora))
        rows["lora-4-unfused"] = {"image_s": time_it(4, 1.0, lcm, "np")["s"]}
        pipe.fuse_lora()
        rows["lora-4-fused"] = {"image_s": time_it(4, 1.0, lcm, "np")["s"]}
        rows["fused_speedup"] = rows["lora-4-unfused"]["image_s"] / rows["lora-4-fused"]["image_s"]
    del pipe
    empty_cache()
    return rows


# ---- 5. training through the command line -------------------------------------------------------------
def run_until(cmd: list[str], env: dict, log: Path, logs: Path, steps: int | None, timeout: float) -> dict:
    """Run ``cmd`` in its own process group; with ``steps``, end it (SIGKILL) once ``logs`` holds that many
    step records: the final checkpoint and export of a full SD1.5 student are tens of GB of writes that
    say nothing about the step."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    why = None
    while proc.poll() is None:
        time.sleep(0.5)
        done = steps is not None and logs.is_file() and \
            sum('"sec_per_step"' in line for line in logs.read_text().splitlines()) >= steps
        if done or time.perf_counter() - t0 > timeout:
            why = "ended after its steps were logged" if done else f"stopped: ran past {timeout:.0f} s"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    return {"rc": 0 if why and why.startswith("ended") else proc.returncode,
            "wall_s": round(time.perf_counter() - t0, 1), "stopped": why}


def train(name: str, config: str, extra: list[str], batch: int, steps: int, skip: int, args, env: dict,
          snapshot: Path, images: Path, prompts: Path, timeout: float, finish: bool) -> dict:
    """One training run through the command line; ``finish``: let it write its checkpoint and export."""
    from fewstep.distill.run_config import load_config

    cfg0 = load_config(ROOT / config)
    run_dir = args.work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [f"name={name}", f"model.pretrained={snapshot}", "train.mixed_precision=bf16",
            f"train.steps={steps if finish else 100 * steps}",
            f"train.batch_size={batch}", "train.grad_accum=1", f"data.resolution={args.resolution}",
            f"data.path={images if cfg0.data.source == 'imagefolder' else prompts}", "data.num_workers=8",
            f"output_dir={args.work / 'runs'}", "train.log_every=1", "train.validation_every=0",
            "train.checkpoint_every=0", "validation.metrics=false", "validation.num_images=1",
            "eval.enabled=false", *extra]
    cmd = [sys.executable, "-m", "fewstep.pipelines.cli", "train", str(ROOT / config),
           *[a for s in sets for a in ("--set", s)]]
    log = args.work / f"{name}.log"
    logs = run_dir / "logs.jsonl"
    child = run_until(cmd, env, log, logs, None if finish else steps, timeout)
    row = {"config": config, "overrides": extra, "batch": batch, **child}
    recs = [json.loads(line) for line in logs.read_text().splitlines() if line.strip()] if logs.is_file() else []
    secs = [r["sec_per_step"] for r in recs if "sec_per_step" in r]
    if len(secs) > skip:
        s = statistics.median(secs[skip:])
        row.update({"s_per_step": s, "spread": [min(secs[skip:]), max(secs[skip:])],
                    "first_steps_s": secs[:skip], "images_per_s": batch / s,
                    "phases_s": {k: statistics.median([r[k] for r in recs[skip:] if k in r])
                                 for k in recs[-1] if k.endswith("/sec_per_step")}})
    peaks = [r["mem/gpu_peak_gib"] for r in recs if "mem/gpu_peak_gib" in r]
    row["gpu_peak_gib"] = max(peaks) if peaks else None
    if child["rc"] != 0:
        row["error"] = tail(log, 12)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fewstep-gpu"))
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--skip", type=int, default=5, help="logged steps left out of the median (warm-up)")
    ap.add_argument("--budget", type=float, default=450, help="seconds for the whole run")
    ap.add_argument("--parts", default="chip,passes,sampling,train,dmd,lora-sampling")
    ap.add_argument("--kinds", default="lora,full", help="student kinds of the passes and LCM runs")
    ap.add_argument("--resolution", type=int, default=512, help="pixels (the UNet's sample_size is this / 8)")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run that checks the script (use small sizes)")
    args = ap.parse_args(argv)
    global DEV
    DEV = args.device
    if DEV == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_bench.py: no CUDA GPU here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    parts, batches = args.parts.split(","), [int(b) for b in args.batches.split(",")]
    args.work = args.work.resolve()
    res = Results(args.out.resolve(), args.budget)
    res.data.update(device=DEV, resolution=args.resolution)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    if "chip" in parts and (c := res.guard("chip", chip)):
        res.put("chip", c)
        print(json.dumps(c), flush=True)
    hub = args.work / "hub"
    snapshot = snapshot_dir(hub)
    if not (snapshot / "model_index.json").is_file():
        t = time.perf_counter()
        args.work.mkdir(parents=True, exist_ok=True)
        b = run_child([sys.executable, str(BENCH / "sd15_smoke.py"), "--build-only", "--work", str(args.work),
                       "--resolution", str(args.resolution)], env, args.work / "build.log", 2.0, 300)
        if b["rc"] != 0:
            res.put("teacher", {"error": "build failed: " + tail(args.work / "build.log"), **b})
            return 1
        res.put("teacher", {"build_s": round(time.perf_counter() - t, 1)})
    images, prompts = write_data(args.work / "data", 64)
    from fewstep.distill.run_config import load_config

    student_cfg = load_config(ROOT / "configs" / "sd15" / "lcm_lora.yaml").student
    if "passes" in parts:
        rows = []
        for kind in args.kinds.split(","):
            for batch in batches:
                if res.fits(f"passes {kind} b{batch}", 15) and \
                        (r := res.guard(f"passes {kind} b{batch}", passes, kind, batch, student_cfg, args.resolution // 8)):
                    rows.append(r)
                    res.put("passes", rows)
                    print(f"passes {kind} b{batch}: bound {r['bound_s']:.3f} s", flush=True)
    if "sampling" in parts and res.fits("sampling", 40) and \
            (r := res.guard("sampling", sampling, snapshot, args.resolution)):
        res.put("sampling", r)
        print("sampling done", flush=True)
    kinds = args.kinds.split(",")
    n, k = args.steps, args.skip
    runs = [(f"lcm-lora-b{b}", "configs/sd15/lcm_lora.yaml", [], b, n, k) for b in batches if "lora" in kinds]
    runs += [(f"lcm-full-b{b}", "configs/sd15/lcm_lora.yaml", ["student.kind=full"], b, n, k) for b in batches
             if "full" in kinds]
    if "dmd" in parts:  # one generator update is 11 phase steps (TTUR 10)
        runs.append((f"dmd2-b{batches[0]}", "configs/sd15/dmd2.yaml", [], batches[0], max(3, n // 4), max(1, k // 4)))
    trained = []
    for name, config, extra, batch, steps, skip in runs if "train" in parts else []:
        if not res.fits(f"train {name}", 60):
            continue
        r = res.guard(f"train {name}", train, name, config, extra, batch, steps, skip, args, env, snapshot, images,
                      prompts,
                      timeout=min(240, res.left() - 20), finish=name == f"lcm-lora-b{batches[0]}")
        if r is None:
            continue
        trained.append({"name": name, **r})
        res.put("train", trained)
        print(json.dumps({k: v for k, v in trained[-1].items() if k != "error"}), flush=True)
        if "error" in trained[-1]:
            print(trained[-1]["error"], flush=True)
        if not name.startswith("lcm-lora"):  # full students' checkpoints are GBs: keep the disk free
            shutil.rmtree(args.work / "runs" / name, ignore_errors=True)
    lora = args.work / "runs" / f"lcm-lora-b{batches[0]}" / "export"
    if "lora-sampling" in parts and (lora / "pytorch_lora_weights.safetensors").is_file() and \
            res.fits("lora sampling", 25) and (r := res.guard("lora sampling", sampling, snapshot, args.resolution, lora)):
        res.put("lora_sampling", r)
    res.save()
    print(report(res.data))
    return 0


# ---- the report ---------------------------------------------------------------------------------------
def report(d: dict) -> str:
    p = d["parts"]
    lines = [f"# GPU benchmark, {d['date']}", ""]
    c = p.get("chip")
    if c:
        lines += [f"{c['gpu']} ({c['memory_gib']} GiB), torch {c['torch']}, CUDA {c['cuda']}; bf16 peak "
                  f"{c['peak_bf16_tflops_datasheet']} TFLOP/s (data sheet, dense), 8192^3 bf16 matmul measured "
                  f"{c['matmul_8192_bf16_tflops']} TFLOP/s", ""]
    bounds = {(r["kind"], r["batch"]): r for r in p.get("passes", [])}
    if p.get("train"):
        lines += ["| run | batch | s/step [min, max] | images/s | peak GPU GiB | bound s | step / bound | "
                  "achieved TFLOP/s | status |", "|---|---|---|---|---|---|---|---|---|"]
        for r in p["train"]:
            kind = "full" if "full" in r["name"] else "lora" if "lora" in r["name"] else None
            b = bounds.get((kind, r["batch"]))
            s = r.get("s_per_step")
            cells = [f"{s:.3f} [{r['spread'][0]:.3f}, {r['spread'][1]:.3f}]" if s else "-",
                     f"{r['images_per_s']:.1f}" if s else "-",
                     f"{r['gpu_peak_gib']:.1f}" if r.get("gpu_peak_gib") else "-",
                     f"{b['bound_s']:.3f}" if b else "-", f"{s / b['bound_s']:.2f}" if b and s else "-",
                     f"{b['flops'] / s / 1e12:.0f}" if b and s else "-",
                     "ok" if r["rc"] == 0 else f"rc {r['rc']} {r.get('stopped') or ''}"]
            lines.append(f"| {r['name']} | {r['batch']} | " + " | ".join(cells) + " |")
        lines.append("")
    if bounds:
        names = list(next(iter(bounds.values()))["passes"])
        lines += ["Passes of one LCM step timed alone (ms; TFLOP/s of the pass in brackets):", "",
                  "| student, batch | " + " | ".join(names + ["ema_update"] * ("ema_update" not in names)) +
                  " | bound |", "|---" * (len(names) + 2 + ("ema_update" not in names)) + "|"]
        for (kind, batch), r in bounds.items():
            cells = []
            for n in names + ["ema_update"] * ("ema_update" not in names):
                q = r["passes"].get(n)
                cells.append("-" if q is None else f"{q['s'] * 1e3:.1f}" +
                             (f" ({q['flops'] / q['s'] / 1e12:.0f})" if q["flops"] else ""))
            lines.append(f"| {kind}, {batch} | " + " | ".join(cells) + f" | {r['bound_s'] * 1e3:.1f} |")
        lines.append("")
        nhwc = [f"- {kind}, {batch}, networks NHWC (`train.channels_last`), ms (default / NHWC): " + "; ".join(
                    f"{n} {r['passes'][n]['s'] * 1e3:.1f} / {q['s'] * 1e3:.1f} ({r['passes'][n]['s'] / q['s']:.2f}x)"
                    for n, q in r["channels_last"].items()) for (kind, batch), r in bounds.items() if r.get("channels_last")]
        lines += nhwc + [""] * bool(nhwc)
    s = p.get("sampling")
    if s:
        lines += [f"Sampling latency, batch 1, {d.get('resolution')} px, {'fp16' if d.get('device') == 'cuda' else 'fp32'} "
                  "(s; speedup vs 50 steps + CFG; ideal by UNet "
                  "evaluations):", "", "| pipeline | image s | of which VAE decode s | speedup | ideal | of ideal |",
                  "|---|---|---|---|---|---|"]
        for k, r in s.items():
            extra = (f"{r['speedup']:.1f}x | {r['ideal']:.0f}x | {r['of_ideal']:.2f}" if "speedup" in r else "- | - | -")
            lines.append(f"| {k}{' + CFG' if r['cfg'] else ''} | {r['image_s']:.3f} | {r['decode_s']:.3f} | {extra} |")
        lines.append("")
    ls = p.get("lora_sampling")
    if ls:
        lines += [f"LCM-LoRA export at 4 steps: unfused {ls['lora-4-unfused']['image_s']:.3f} s, fused "
                  f"{ls['lora-4-fused']['image_s']:.3f} s ({ls['fused_speedup']:.2f}x)", ""]
    if d.get("errors"):
        lines += ["Failed parts: " + "; ".join(f"{k}: {v.strip().splitlines()[-1]}" for k, v in d["errors"].items()), ""]
    if d.get("skipped"):
        lines += ["Skipped: " + "; ".join(d["skipped"]), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
