"""Peak memory of an LCM-LoRA training step against the teacher's own forward + backward, and a check
that the LoRA student holds no second copy of the UNet (issue 13, target 4).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/lcm_memory.py --out bench/results/lcm-memory
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/lcm_memory.py --setups sd15 --gradient-checkpointing both \
        --out bench/results/lcm-memory-gc

Writes <out>/memory.json and <out>/memory.md and prints the table. Setups (``--setups``):

* ``tiny-sd``: the embedded teacher (``assets/tiny-sd``: its UNet, VAE and text encoder, 32 px, 8x8
  latents) with configs/tiny/lcm_lora.yaml's method and student (rank 16);
* ``sd15``: Stable Diffusion 1.5's UNet (bench/sd15_arch.py, random weights) at ``--latent`` (32:
  256 px) with a frozen tiny CLIP text encoder (768 wide, one layer, 77 tokens) and a one-block VAE
  (bench/score_cost.py's ``frozen_parts``), with configs/sd15/lcm_lora.yaml's method and student
  (rank 64 / alpha 64 on its 14 target kinds).

Both at ``--batches`` (1, 2), fp32 on the CPU, one thread, one subprocess per measurement. A
measurement is score_cost.py's memory worker made for LCM-LoRA: after imports and the frozen parts
are built, the baseline RSS is taken and the UNet is built (``tiny-sd``: loaded from its folder);
then either the teacher's forward + backward (gradient w.r.t. the input latents, frozen weights,
same shapes as the step's student call) or ``--warmup`` + ``--iterations`` iterations of the real
``Trainer.train`` (validation and checkpoints stubbed out; the real method, data, VAE encode, text
encode, AdamW and grad clipping). Before every step freed heap is returned to the OS and the
kernel's peak mark is reset (score_cost.py's ``reset_peak``); after it VmHWM is read: the step's true
peak resident memory. Reported: the last step's peak minus the baseline (steady state: AdamW's
states exist from the first step on), and the ratio LCM-LoRA step / teacher forward + backward.

``--gradient-checkpointing`` ``off`` (default), ``on`` or ``both``: the LCM-LoRA step runs with
``train.gradient_checkpointing`` false / true / each in its own subprocess (one table line each, against
the same teacher measurement). The teacher's forward + backward, the target's reference, never
checkpoints: it is the teacher's own cost. ``--retain`` runs every measurement as ``fewstep train``
does (fewstep's malloc thresholds, only the peak mark reset, as bench/growth.py): step times without
the heap trimming's page faults; its peaks include retained heap, so the memory verdict uses the
default (trimmed) runs.

The copy check runs in the LCM-LoRA worker after its iterations: the UNet2DConditionModel objects
alive in the process (``gc``), the bytes of distinct tensor storages behind their parameters
(the LoRA factors separately), the ModelSet's modules and views, and the bytes of AdamW's states.

The same worker (``step_worker``) times steps for bench/growth.py: per step wall and CPU seconds;
``retain`` runs with fewstep's malloc thresholds (``distill/memory.py``, as ``fewstep train`` does)
and resets only the peak mark, not the heap.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
# bench/ is on sys.path when a script here runs; the measuring pieces are score_cost.py's, shared
from score_cost import (GIB, around_phase_steps, frozen_parts, mem_available, param_bytes, worker_options,  # noqa: E402
                        proc_status, quiet_trainer, reset_peak, watchdog)
import score_cost  # noqa: E402
from sd15_arch import sd15_unet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"tiny-sd": ROOT / "configs" / "tiny" / "lcm_lora.yaml", "sd15": ROOT / "configs" / "sd15" / "lcm_lora.yaml"}
TINY_LATENT = 8  # the embedded teacher: 32 px through a VAE of factor 4
NATIVE = 32  # the frozen stand-in VAE's largest latent: procedural images are 32 px (score_cost.frozen_parts)


# ---- the run -------------------------------------------------------------------------------------
def lcm_config(setup: str, out_dir, steps: int, batch: int, tiny: dict | None, checkpointing: bool = False):
    """A run with the method and student of ``setup``'s shipped LCM-LoRA config, on procedural data,
    fp32, no warm-up, nothing periodic; ``checkpointing``: ``train.gradient_checkpointing``."""
    from fewstep.distill.config import read_yaml
    from fewstep.distill.run_config import parse_config

    raw = read_yaml(CONFIGS[setup])
    train = {"steps": steps, "batch_size": batch, "lr": raw["train"]["lr"], "lr_warmup_steps": 0,
             "mixed_precision": "no", "log_every": 10 ** 6, "checkpoint_every": 0, "validation_every": 0, "seed": 0,
             "gradient_checkpointing": checkpointing}
    model = {"pretrained": raw["model"]["pretrained"]} if tiny is None else {"tiny": tiny}
    return parse_config({"name": f"{setup}-lcm-lora", "output_dir": str(out_dir), "method": raw["method"],
                         "student": raw["student"], "model": model, "data": {"source": "procedural", "seed": 0},
                         "train": train, "validation": {"num_images": 1, "metrics": False},
                         "eval": {"enabled": False}})


def frozen_pipeline(setup: str, latent: int):
    """(pipeline without its UNet, tiny arch dict or None, a function that builds the UNet)."""
    if setup == "tiny-sd":
        from diffusers import UNet2DConditionModel

        from fewstep.pipelines.teacher import load_pipeline, locate

        pipe = load_pipeline("tiny-sd")
        folder = Path(locate("tiny-sd")) / "unet"
        pipe.unet = None  # loaded again after the baseline, as the SD1.5 UNet is built after it
        return pipe, None, lambda: UNet2DConditionModel.from_pretrained(folder)
    pipe, tiny = frozen_parts(min(latent, NATIVE))
    return pipe, tiny, lambda: sd15_unet(1, latent)


def resize_latents(models, latent: int) -> None:
    """Above 32x32 latents the stand-in VAE's latents are resized (bilinear) to ``latent``: the frozen
    encoder is not what is measured, the UNet's work at that size is."""
    encode = models.encode_images

    def encode_resized(pixels, generator=None):
        z = encode(pixels, generator)
        return torch.nn.functional.interpolate(z, size=(latent, latent), mode="bilinear", align_corners=False)

    models.encode_images = encode_resized


def unet_census(models, bare_bytes: int) -> dict:
    """How many UNets the process holds and what storage their parameters occupy."""
    from diffusers import UNet2DConditionModel

    gc.collect()
    unets = [o for o in gc.get_objects() if isinstance(o, UNet2DConditionModel)]
    storages, lora = {}, {}
    for u in unets:
        for name, p in u.named_parameters():
            s = p.untyped_storage()
            (lora if ".lora_" in name else storages)[s.data_ptr()] = s.nbytes()
    base = sum(storages.values())
    return {"unet_instances": len(unets), "base_param_bytes": base, "lora_param_bytes": sum(lora.values()),
            "bare_unet_param_bytes": bare_bytes, "base_copies": round(base / bare_bytes, 3),
            "modelset_modules": sorted(models.modules),
            "modelset_views": {r: {"module": v.module, "adapter": v.adapter, "base": v.base}
                               for r, v in models.views.items()}}


def optimizer_bytes(trainer) -> int:
    return sum(t.nbytes for o in trainer.opts.values() for st in o.state.values() for t in st.values()
               if torch.is_tensor(t))


def step_worker(spec: dict) -> dict:
    """One measurement (module docstring); ``spec``: setup, variant (teacher | lcm), batch, latent,
    warmup, iterations, retain, min_free_gb, checkpointing (optional, default false)."""
    import peft  # noqa: F401 (imported before the baseline, as the loop below is)

    from fewstep.distill import loop  # noqa: F401

    if spec["retain"]:
        from fewstep.distill.memory import retain_freed_memory

        retain_freed_memory()
    watchdog(spec["min_free_gb"])
    B, latent, n = spec["batch"], spec["latent"], spec["warmup"] + spec["iterations"]
    pipe, tiny, make_unet = frozen_pipeline(spec["setup"], latent)

    def mark() -> int:  # the RSS now, with the kernel's peak mark reset (and the heap trimmed unless retained)
        if not spec["retain"]:
            return reset_peak()
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return proc_status("VmRSS")

    base = mark()
    pipe.register_modules(unet=make_unet())
    bare = sum(p.nbytes for p in pipe.unet.parameters())
    steps, extra = [], {}
    if spec["variant"] == "teacher":  # forward + backward w.r.t. the input, frozen weights
        from fewstep.distill.modelset import ModelSet

        unet = pipe.unet.requires_grad_(False)
        with torch.no_grad():
            cond = ModelSet(pipe).encode_text(["a small red circle"] * B)
        for i in range(n):
            x = torch.randn(B, 4, latent, latent, requires_grad=True)
            t = torch.full((B,), 500)
            start, wall, cpu = mark(), time.perf_counter(), time.process_time()
            unet(x, t, encoder_hidden_states=cond).sample.square().mean().backward()
            steps.append({"phase": "teacher", "iteration": i, "rss_start": start, "peak": proc_status("VmHWM"),
                          "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
            del x
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = lcm_config(spec["setup"], tmp, n, B, tiny, spec.get("checkpointing", False))
            trainer = quiet_trainer(cfg, pipe)
            if latent > NATIVE and spec["setup"] == "sd15":
                resize_latents(trainer.models, latent)

            def before(plan):
                return mark(), time.perf_counter(), time.process_time()

            def after(plan, token):
                steps.append({"phase": plan.name, "iteration": trainer.step, "rss_start": token[0],
                              "peak": proc_status("VmHWM"), "wall_s": time.perf_counter() - token[1],
                              "cpu_s": time.process_time() - token[2]})

            around_phase_steps(trainer, before, after)
            trainer.train()
            extra = {"census": unet_census(trainer.models, bare), "adam_state_bytes": optimizer_bytes(trainer),
                     "trained_params": sum(p.numel() for ps in trainer.params.values() for p in ps),
                     "checkpointing_on": bool(trainer.models["unet"].unet.is_gradient_checkpointing),
                     "phases": [p.name for p in trainer.plans]}
    timed = steps[spec["warmup"]:]
    return {**spec, **extra, "base_rss": base, "bare_unet_bytes": bare, "steps": steps,
            "net_peak": steps[-1]["peak"] - base, "max_net_peak": max(s["peak"] for s in timed) - base,
            "wall_s": sum(s["wall_s"] for s in timed) / len(timed),
            "cpu_s": sum(s["cpu_s"] for s in timed) / len(timed)}


def spawn(spec: dict, timeout: float) -> dict:
    """``step_worker(spec)`` in a fresh process (score_cost's spawner, this script as the worker)."""
    return score_cost.spawn(spec, timeout, script=__file__)


def need_bytes(setup: str, variant: str, batch: int, latent: int) -> int:
    """A generous estimate of a measurement's need above the baseline: the UNet, and for the step its
    LoRA (with gradients and AdamW states) and activations of ~1.2 GiB per 256 px sample (the teacher's
    forward + backward needs ~0.6, score_cost.py), scaling with the latent area."""
    if setup == "tiny-sd":
        return GIB // 2
    p = param_bytes("sd15")
    act = int(1.2 * GIB * batch * (latent / 32) ** 2)
    return p + act + (GIB if variant == "lcm" else 0)


def measure(setup: str, variant: str, batch: int, latent: int, args, checkpointing: bool = False) -> dict:
    spec = {"setup": setup, "variant": variant, "batch": batch, "latent": latent, "warmup": args.warmup,
            "iterations": args.iterations, "retain": args.retain, "min_free_gb": args.min_free_gb,
            "checkpointing": checkpointing}
    need, free = need_bytes(setup, variant, batch, latent), mem_available()
    if need + args.min_free_gb * GIB > free:
        return {**spec, "skipped": f"needs about {need / GIB:.1f} GiB, {free / GIB:.1f} GiB free"}
    return spawn(spec, args.worker_timeout)


# ---- report --------------------------------------------------------------------------------------
def held(r: dict) -> int:
    """RSS above the baseline at the start of the last step: weights, LoRA, AdamW states, code pages
    and allocator state that stay between steps (the rest of the peak is the step's transient)."""
    return r["steps"][-1]["rss_start"] - r["base_rss"]


STEP_VARIANTS = {"lcm": "off", "lcm_gc": "on"}  # a row's LCM-LoRA measurements: key -> gradient checkpointing


def table(rows: list[dict]) -> str:
    head = ["setup", "latent (px)", "batch", "gradient checkpointing", "teacher fwd+bwd (GiB)", "LCM-LoRA step (GiB)",
            "step / teacher", "target <= 1.2x", "held between steps: teacher / step (GiB)", "UNets in process",
            "base-weight copies", "LoRA + AdamW states (MiB)", "step s (CPU s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r, key in ((r, k) for r in rows for k in STEP_VARIANTS if k in r):
        t, s = r["teacher"], r[key]
        px = r["latent"] * (4 if r["setup"] == "tiny-sd" else 8)
        if "skipped" in t or "skipped" in s:
            why = t.get("skipped") or s.get("skipped")
            lines.append(f"| {r['setup']} | {r['latent']} ({px}) | {r['batch']} | {STEP_VARIANTS[key]} | "
                         f"not measured: {why} |" + " |" * (len(head) - 5))
            continue
        c = s["census"]
        ratio = s["net_peak"] / t["net_peak"]
        lines.append(f"| {r['setup']} | {r['latent']} ({px}) | {r['batch']} | {STEP_VARIANTS[key]} | "
                     f"{t['net_peak'] / GIB:.3f} | "
                     f"{s['net_peak'] / GIB:.3f} | {ratio:.2f}x | {'holds' if ratio <= 1.2 else 'missed'} | "
                     f"{held(t) / GIB:.3f} / {held(s) / GIB:.3f} | "
                     f"{c['unet_instances']} | {c['base_copies']:g} | "
                     f"{(c['lora_param_bytes'] + s['adam_state_bytes']) / 2 ** 20:.1f} | "
                     f"{s['wall_s']:.2f} ({s['cpu_s']:.2f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lcm-memory")
    ap.add_argument("--setups", default="tiny-sd,sd15")
    ap.add_argument("--batches", default="1,2", help="SD1.5 batches")
    ap.add_argument("--tiny-batches", default="1,2,32", help="embedded-teacher batches (32: its config's own)")
    ap.add_argument("--latent", type=int, default=32, help="SD1.5's latent side (32: 256 px)")
    ap.add_argument("--warmup", type=int, default=1, help="steps before the one measured")
    ap.add_argument("--iterations", type=int, default=1, help="steps measured (the last one's peak is reported)")
    ap.add_argument("--gradient-checkpointing", choices=("off", "on", "both"), default="off",
                    help="the LCM-LoRA step with train.gradient_checkpointing false, true, or one line each")
    ap.add_argument("--retain", action="store_true", help="fewstep train's malloc retention, no heap trimming "
                    "(step times as a real run; peaks then include retained heap)")
    args = worker_options(ap, argv, min_free_gb=2.0)
    if args.worker:
        print(json.dumps(step_worker(json.loads(args.worker))))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t0, rows = time.time(), []
    for setup in args.setups.split(","):
        latent = TINY_LATENT if setup == "tiny-sd" else args.latent
        for batch in (int(b) for b in (args.tiny_batches if setup == "tiny-sd" else args.batches).split(",")):
            row = {"setup": setup, "latent": latent, "batch": batch}
            gc_modes = {"off": ("lcm",), "on": ("lcm_gc",), "both": ("lcm", "lcm_gc")}[args.gradient_checkpointing]
            for key in ("teacher", *gc_modes):
                row[key] = measure(setup, "teacher" if key == "teacher" else "lcm", batch, latent, args,
                                   checkpointing=key == "lcm_gc")
                r = row[key]
                print(f"{setup} b{batch} {key}: " + (r["skipped"] if "skipped" in r else
                      f"{r['net_peak'] / GIB:.3f} GiB above baseline, {r['wall_s']:.2f} s/step"), flush=True)
            rows.append(row)
    command = "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/lcm_memory.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    results = {"command": command, "seconds": round(time.time() - t0), "torch": torch.__version__, "rows": rows}
    (args.out / "memory.json").write_text(json.dumps(results, indent=1) + "\n")
    md = f"# LCM-LoRA step memory vs the teacher's forward + backward\n\n`{command}`\n\n{table(rows)}\n"
    (args.out / "memory.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
