"""Training cost of the score-distillation methods (DMD2, VSD, SiD): passes, memory and time per
generator update (issue 10).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/score_cost.py --out bench/results/score-cost

Writes <out>/cost.json and <out>/cost.md and prints the table. ``--parts`` reruns some parts only
(the others are kept from an existing cost.json). What is measured, and how:

1. **Passes per generator update** (``counts``), counted on real Trainers: each method x student
   kind runs ``--count-iterations`` iterations of ``Trainer.train`` (validation and checkpoint
   writing stubbed out) on a very small fresh tiny pipeline (the tests' architecture, batch
   ``--count-batch``), with each tiny config's settings (TTUR: dmd 5, vsd and sid 1). Forward hooks
   on every UNet2DConditionModel of the run (the shared LoRA UNet, or the teacher and each full copy)
   record each call made inside a phase step: which role ran (from the active peft adapter, or the
   copy's name), its rows (a CFG call is one call on 2B rows), whether its output carries a gradient
   graph (the mid-block output for DMD2's GAN bottleneck calls, which stop there) and whether the
   input did (gradient flowing through the net into the generator, as SiD and the GAN term mean). A
   tensor hook on each graph-carrying output records whether backward reached it, and a wrapper on
   ``torch.autograd.backward`` counts backward passes. Reported per generator update: UNet calls,
   sample-evaluations (rows / B), those with gradient, and UNet evaluations backward went through.
2. **Peak memory** (``memory``), one subprocess per configuration: the Stable Diffusion 1.5 UNet
   architecture (its published config, random weights, fp32) with a frozen tiny CLIP text encoder
   (width 768, one layer, 77 tokens) and a one-block VAE, at ``--latent`` x ``--latent`` latents
   (32: SD's 256 px) and batch ``--mem-batch``; students of ``--lora-rank`` on the default targets.
   Two iterations of each method run (TTUR 1: a step's peak does not depend on the ratio), so the
   second measures steady state (both phases' Adam states exist). Per phase step: freed heap is
   returned to the OS (glibc ``malloc_trim``), the kernel's peak-RSS mark is reset (``5`` to
   /proc/self/clear_refs) and VmHWM is read after the optimizer step: the true peak resident memory of
   the step. Reported: that peak minus the process's RSS before the UNet is built (after imports and
   the tiny text encoder / VAE, whose first build also loads diffusers' and transformers' lazily
   imported modules, ~0.3 GiB that is not model memory), and its ratio to the same quantity for
   the teacher's own forward + backward (w.r.t. the input, same shape, same process set-up). A
   configuration whose estimated need (parameter count, teacher's activations) does not fit in
   MemAvailable is skipped with the reason; a watchdog ends a worker below ``--min-free-gb``. Full
   students that do not fit at SD1.5 size are measured on ``sd15-half`` (SD1.5's exact block layout
   at half width, every count and the 768-wide cross-attention kept; ~1/4 of the parameters), where
   LoRA is measured too.
3. **Wall time** (``walltime``), in this process on one thread: each tiny config (embedded
   teacher, batch 16) runs ``--warmup`` + ``--iterations`` iterations; seconds per iteration
   (= generator update) after the warm-up, mean and sd, wall clock and process CPU time (the latter
   is robust to other jobs on the machine), next to LCM-LoRA's step (configs/tiny/lcm_lora.yaml,
   batch 32) measured first and last in the same process.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from sd15_arch import sd15_unet  # noqa: E402 (bench/ is on sys.path when a script here runs)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
GIB = 1024 ** 3

# label -> (tiny config it takes its settings from, method overrides); dmd-gan, sid-gan: the shipped configs
VARIANTS = {"dmd": ("dmd.yaml", {"gan_weight": 0.0}), "dmd-handover": ("dmd.yaml", {"fake_samples": "handover",
            "gan_weight": 0.0}), "dmd-4step": ("dmd_4step.yaml", {}), "dmd-gan": ("dmd.yaml", {}),
            "vsd": ("vsd.yaml", {}), "sid": ("sid.yaml", {"gan_weight": 0.0}), "sid-gan": ("sid.yaml", {})}
KINDS = ("lora", "full")
MEMORY_VARIANTS = ("dmd", "dmd-gan", "vsd", "sid")
WALL_CONFIGS = {"dmd.yaml": ("dmd-gan", "full"), "dmd_4step.yaml": ("dmd-4step", "full"),
                "vsd.yaml": ("vsd", "full"), "sid.yaml": ("sid-gan", "full")}
REFERENCE = "lcm_lora.yaml"
# the tests' very small pipeline (tests/conftest.py SMALL_ARCH)
COUNT_ARCH = {"text_hidden": 32, "text_layers": 1, "text_heads": 2, "vae_channels": [8, 16, 16],
              "unet_channels": [16, 32], "unet_attention_head_dim": 8}
# Stable Diffusion 1.5's UNet (bench/sd15_arch.py, shared with sd15_smoke.py); its widths are divided by ARCHS[arch]
ARCHS = {"sd15": 1, "sd15-half": 2}


# ---- building runs -------------------------------------------------------------------------------
def run_config(variant: str, kind: str, out_dir, steps: int, batch: int, tiny: dict, student: dict,
               fake_steps: int | None = None):
    """A run of ``variant`` (its tiny config's method and phase settings) on a fresh tiny arch."""
    from fewstep.distill.config import read_yaml
    from fewstep.distill.run_config import parse_config

    file, extra = VARIANTS[variant]
    raw = read_yaml(TINY / file)
    method = {**raw["method"], **extra}
    if kind == "lora":
        method["ema_decay"] = 0.0  # an EMA needs a full student
    if fake_steps is not None:
        method["fake_steps_per_generator"] = fake_steps
    train = {"steps": steps, "batch_size": batch, "lr_warmup_steps": 0, "phases": raw["train"].get("phases", {}),
             "log_every": 10 ** 6, "checkpoint_every": 0, "validation_every": 0, "seed": 0}
    return parse_config({"name": f"{variant}-{kind}", "output_dir": str(out_dir), "method": method,
                         "student": {"kind": kind, **student}, "model": {"tiny": tiny},
                         "data": {"source": "procedural", "seed": 0}, "train": train,
                         "validation": {"num_images": 1, "metrics": False}, "eval": {"enabled": False}})


def quiet_trainer(cfg, pipe):
    """A real Trainer whose ``train()`` runs only the iterations (no sample grid, no checkpoint)."""
    from tqdm.auto import tqdm

    from fewstep.distill import loop

    # the loop's progress bar would interleave with this script's report
    loop.tqdm = lambda *args, **kwargs: tqdm(*args, **{**kwargs, "disable": True})
    trainer = loop.Trainer(cfg, pipe)
    trainer.validate = lambda: False
    trainer.save_checkpoint = lambda: None
    return trainer


def around_phase_steps(trainer, before, after) -> None:
    """Call ``before(plan) -> token`` and ``after(plan, token)`` around each phase step of the loop."""
    inner = trainer._phase_step

    def wrapped(plan, batches, handover):
        token = before(plan)
        out = inner(plan, batches, handover)
        after(plan, token)
        return out

    trainer._phase_step = wrapped


# ---- 1. passes ------------------------------------------------------------------------------------
class PassCounter:
    """Records every UNet call made inside a phase step, and every backward pass (module docstring)."""

    def __init__(self, trainer):
        from diffusers import UNet2DConditionModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        from fewstep.distill.modelset import unwrap

        models = trainer.models
        self.phase: str | None = None
        self.calls: list[dict] = []
        self.backwards: list[str] = []
        self.open: dict[int, dict] = {}
        self.adapter_roles: dict[str, str] = {}
        for role, view in models.views.items():
            if view.adapter:
                self.adapter_roles.setdefault(view.adapter, role)
        owners = {}
        for name, m in [*models.modules.items(), ("teacher", models.pipe.unet)]:
            for sub in unwrap(m).modules():
                if isinstance(sub, UNet2DConditionModel):
                    owners.setdefault(id(sub), (sub, name))
        self.handles = []
        for unet, name in owners.values():
            lora = next((m for m in unet.modules() if isinstance(m, BaseTunerLayer)), None)
            self.handles += [unet.register_forward_pre_hook(partial(self._pre, unet, name, lora), with_kwargs=True),
                             unet.register_forward_hook(partial(self._post, unet)),
                             unet.mid_block.register_forward_hook(partial(self._mid, unet))]
        self.unets = sorted(name for _, name in owners.values())
        self._backward = torch.autograd.backward
        torch.autograd.backward = self._count_backward

    def close(self) -> None:
        torch.autograd.backward = self._backward
        for h in self.handles:
            h.remove()

    def _count_backward(self, *args, **kwargs):
        if self.phase is not None:
            self.backwards.append(self.phase)
        return self._backward(*args, **kwargs)

    def _pre(self, unet, name, lora, module, args, kwargs):
        if self.phase is None:
            return
        sample = args[0] if args else kwargs["sample"]
        role = name
        if lora is not None:  # the shared UNet: the role is the active adapter, or the teacher (none)
            role = "teacher" if lora.disable_adapters else self.adapter_roles.get(lora.active_adapters[0], name)
        entry = {"phase": self.phase, "role": role, "rows": sample.shape[0], "input_grad": sample.requires_grad,
                 "grad": False, "backward": False, "partial": True}
        self.calls.append(entry)
        self.open[id(unet)] = entry

    def _watch(self, entry, tensor) -> None:
        if torch.is_tensor(tensor) and tensor.requires_grad:
            entry["grad"] = True
            tensor.register_hook(lambda g: entry.__setitem__("backward", True))

    def _mid(self, unet, module, args, output):
        entry = self.open.get(id(unet))
        if entry is not None:
            self._watch(entry, output)

    def _post(self, unet, module, args, output):
        entry = self.open.pop(id(unet), None)
        if entry is not None:
            entry["partial"] = False
            self._watch(entry, output.sample if hasattr(output, "sample") else output[0])


def tally(calls: list[dict], batch: int, updates: int) -> dict:
    """Per generator update: calls, sample-evaluations (rows / B) and their gradient flags."""
    def per(x):
        return round(x / updates, 3)

    return {"calls": per(len(calls)), "grad_calls": per(sum(c["grad"] for c in calls)),
            "evals": per(sum(c["rows"] for c in calls) / batch),
            "grad_evals": per(sum(c["rows"] for c in calls if c["grad"]) / batch),
            "input_grad_evals": per(sum(c["rows"] for c in calls if c["grad"] and c["input_grad"]) / batch),
            "backward_evals": per(sum(c["rows"] for c in calls if c["backward"]) / batch),
            "partial_calls": per(sum(c["partial"] for c in calls))}


def count_passes(variant: str, kind: str, iterations: int, batch: int) -> dict:
    from fewstep.pipelines.tiny import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        cfg = run_config(variant, kind, tmp, iterations, batch, COUNT_ARCH, {"lora_rank": 4, "lora_alpha": 4})
        trainer = quiet_trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))
        counter = PassCounter(trainer)
        around_phase_steps(trainer, lambda plan: setattr(counter, "phase", plan.name),
                           lambda plan, token: setattr(counter, "phase", None))
        try:
            trainer.train()
        finally:
            counter.close()
    updates = trainer.phase_steps["generator"]
    m = cfg.method.config
    out = {"variant": variant, "kind": kind, "iterations": iterations, "batch": batch, "unets": counter.unets,
           "fake_steps_per_generator": m.fake_steps_per_generator, "fake_samples": m.fake_samples,
           "generator_steps": m.generator_steps, "ema": m.ema_decay > 0,
           **tally(counter.calls, batch, updates), "backward_calls": round(len(counter.backwards) / updates, 3)}
    groups = defaultdict(list)
    for c in counter.calls:
        groups[f"{c['phase']}/{c['role']}"].append(c)
    out["by_phase_role"] = {k: tally(v, batch, updates) for k, v in sorted(groups.items())}
    # graphs recorded but never backpropagated: memory and time spent for nothing
    unused = sorted({f"{c['phase']}/{c['role']}" for c in counter.calls if c["grad"] and not c["backward"]})
    out["grad_without_backward"] = unused
    if unused:
        print(f"  note: {variant}/{kind}: forward with gradient never reached by backward: {unused}")
    return out


# ---- 2. memory (workers) --------------------------------------------------------------------------
def read_kb(path: str, key: str) -> int:
    """A ``key: N kB`` field of a /proc file, in bytes (VmRSS, VmHWM of /proc/self/status; MemAvailable)."""
    for line in open(path):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def proc_status(key: str) -> int:
    return read_kb("/proc/self/status", key)


def mem_available() -> int:
    return read_kb("/proc/meminfo", "MemAvailable")


def reset_peak() -> int:
    """Return freed heap to the OS, reset the kernel's peak-RSS mark; the RSS now."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return proc_status("VmRSS")


def watchdog(min_free: float) -> None:
    def watch():
        while True:
            if mem_available() < min_free * GIB:
                sys.stderr.write(f"watchdog: MemAvailable below {min_free} GiB, worker stopped\n")
                os._exit(75)
            time.sleep(0.2)
    threading.Thread(target=watch, daemon=True).start()


def param_bytes(arch: str) -> int:
    from accelerate import init_empty_weights

    with init_empty_weights():
        unet = sd15_unet(ARCHS[arch], 32)
    return sum(p.numel() for p in unet.parameters()) * 4


def frozen_parts(latent: int):
    """A tiny pipeline whose frozen text encoder (768 wide, one layer, 77 tokens) and VAE stay; its
    UNet is replaced by the real architecture."""
    from fewstep.distill.config import TinyArch
    from fewstep.pipelines.tiny import build_tiny_pipeline

    # procedural images are 32 px: a VAE of n blocks downsamples by 2^(n-1)
    tiny = {"resolution": 32, "text_hidden": 768, "text_layers": 1, "text_heads": 12, "max_length": 77,
            "vae_channels": [8] * (int(math.log2(32 // latent)) + 1), "unet_channels": [32, 32]}
    return build_tiny_pipeline(TinyArch(**tiny), seed=0), tiny


def memory_worker(spec: dict) -> dict:
    import peft  # noqa: F401 (imported before the baseline, as the loop below is)

    from fewstep.distill import loop  # noqa: F401

    watchdog(spec["min_free_gb"])
    pipe, tiny = frozen_parts(spec["latent"])  # also loads diffusers' and transformers' lazy modules
    base = reset_peak()
    pipe.register_modules(unet=sd15_unet(ARCHS[spec["arch"]], spec["latent"]))
    B = spec["batch"]
    if spec["variant"] == "teacher":  # one forward + backward w.r.t. the input, frozen weights
        from fewstep.distill.modelset import ModelSet

        unet = pipe.unet.requires_grad_(False)
        with torch.no_grad():
            cond = ModelSet(pipe).encode_text(["a small red circle"] * B)
        x = torch.randn(B, 4, spec["latent"], spec["latent"], requires_grad=True)
        t = torch.full((B,), 500)
        start, cpu = reset_peak(), time.process_time()
        unet(x, t, encoder_hidden_states=cond).sample.square().mean().backward()
        steps = [{"phase": "teacher", "iteration": 0, "rss_start": start, "peak": proc_status("VmHWM"),
                  "cpu_s": time.process_time() - cpu}]
    else:
        steps = []
        with tempfile.TemporaryDirectory() as tmp:
            cfg = run_config(spec["variant"], spec["kind"], tmp, 2, B, tiny,
                             {"lora_rank": spec["lora_rank"], "lora_alpha": spec["lora_rank"]}, fake_steps=1)
            trainer = quiet_trainer(cfg, pipe)

            def before(plan):
                return reset_peak(), time.process_time()

            def after(plan, token):
                steps.append({"phase": plan.name, "iteration": trainer.step, "rss_start": token[0],
                              "peak": proc_status("VmHWM"), "cpu_s": time.process_time() - token[1]})

            around_phase_steps(trainer, before, after)
            trainer.train()
    last = {s["phase"]: s for s in steps}  # steady state: the last step of each phase
    return {**spec, "base_rss": base, "steps": steps,
            "net_peak": {p: s["peak"] - base for p, s in last.items()}}


def spawn(spec: dict, timeout: float, script: str = __file__) -> dict:
    """``script --worker SPEC`` in a fresh process (one thread): its last stdout line as JSON, with the
    process's wall seconds; a failure or time-out is returned as ``skipped``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "skipped": f"worker ran past {timeout:.0f} s"}
    if proc.returncode != 0:
        return {**spec, "skipped": f"worker failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": round(time.time() - t0, 1)}


def estimate(kind: str, variant: str, p: int, act: int) -> int:
    """Bytes a configuration should need: weights, gradients and Adam states by the student kind, plus
    up to 6 teacher-activations (SiD's generator step backpropagates through 5 evaluations)."""
    if kind == "lora":  # one UNet; two adapters with gradients and Adam states (generously 0.6 P)
        return int(1.6 * p + 6 * act + GIB // 2)
    ema = VARIANTS[variant][0] in ("dmd.yaml", "dmd_4step.yaml", "sid.yaml")
    # teacher 1 + student (weights, grads, 2 Adam) 4 + fake (weights, 2 Adam) 3 + EMA
    return int((8 + ema) * p + 6 * act + GIB // 2)


def measure_memory(args) -> dict:
    results = {"latent": args.latent, "batch": args.mem_batch, "lora_rank": args.lora_rank, "archs": {}}
    for arch in args.archs:
        p = param_bytes(arch)
        spec = {"arch": arch, "latent": args.latent, "batch": args.mem_batch, "lora_rank": args.lora_rank,
                "min_free_gb": args.min_free_gb}
        entry = {"unet_params_m": round(p / 4 / 1e6, 1), "unet_fp32_gib": round(p / GIB, 2), "configs": {}}
        results["archs"][arch] = entry
        print(f"memory {arch}: UNet {entry['unet_params_m']} M parameters, {entry['unet_fp32_gib']} GiB fp32")
        if 1.5 * p + GIB + args.min_free_gb * GIB > mem_available():
            entry["teacher"] = {"skipped": "the UNet alone does not fit in free memory"}
            continue
        ref = spawn({**spec, "variant": "teacher", "kind": "-"}, args.worker_timeout)
        entry["teacher"] = ref
        if "skipped" in ref:
            print(f"  teacher: {ref['skipped']}")
            continue
        ref_net = ref["net_peak"]["teacher"]
        print(f"  teacher fwd+bwd: {ref_net / GIB:.2f} GiB above the baseline")
        act = max(ref_net - p, GIB // 4)
        for kind in ("lora", "full") if arch in args.full_archs else ("lora",):
            for variant in args.memory_variants:
                need, free = estimate(kind, variant, p, act), mem_available()
                key = f"{variant}/{kind}"
                if need + args.min_free_gb * GIB > free:
                    entry["configs"][key] = {"skipped": f"needs about {need / GIB:.1f} GiB (weights, gradients, Adam "
                                                        f"states and activations), {free / GIB:.1f} GiB free"}
                    print(f"  {key}: skipped, {entry['configs'][key]['skipped']}")
                    continue
                t0 = time.time()
                res = spawn({**spec, "variant": variant, "kind": kind}, args.worker_timeout)
                entry["configs"][key] = res
                if "skipped" in res:
                    print(f"  {key}: {res['skipped']}")
                    continue
                res["ratio"] = {ph: round(v / ref_net, 2) for ph, v in res["net_peak"].items()}
                print(f"  {key}: " + ", ".join(f"{ph} {v / GIB:.2f} GiB ({res['ratio'][ph]}x)"
                                               for ph, v in res["net_peak"].items()) + f"  [{time.time() - t0:.0f} s]")
    return results


# ---- 3. wall time ---------------------------------------------------------------------------------
def wall_time(config: str, warmup: int, iterations: int) -> dict:
    from fewstep.distill.run_config import load_config
    from fewstep.pipelines.teacher import load_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(TINY / config, [f"output_dir={tmp}", f"train.steps={warmup + iterations}",
                                          "train.validation_every=0", "train.checkpoint_every=0",
                                          "train.log_every=1000000", "eval.enabled=false"])
        trainer = quiet_trainer(cfg, load_pipeline("tiny-sd"))
        starts = {}

        def before(plan):
            starts.setdefault(trainer.step, (time.perf_counter(), time.process_time()))

        around_phase_steps(trainer, before, lambda plan, token: None)
        trainer.train()
        starts[trainer.step] = (time.perf_counter(), time.process_time())
    wall = [starts[i + 1][0] - starts[i][0] for i in range(warmup, warmup + iterations)]
    cpu = [starts[i + 1][1] - starts[i][1] for i in range(warmup, warmup + iterations)]
    return {"config": config, "batch": cfg.train.batch_size, "iterations": iterations, "warmup": warmup,
            "wall_s": round(statistics.mean(wall), 4), "wall_sd": round(statistics.stdev(wall), 4),
            "cpu_s": round(statistics.mean(cpu), 4), "cpu_sd": round(statistics.stdev(cpu), 4)}


def measure_wall(args) -> dict:
    torch.set_num_threads(1)
    order = [REFERENCE, *WALL_CONFIGS, REFERENCE]
    runs = []
    for config in order:
        r = wall_time(config, args.warmup, args.iterations)
        runs.append(r)
        print(f"wall {config}: {r['wall_s']:.3f} +- {r['wall_sd']:.3f} s wall, {r['cpu_s']:.3f} s CPU per iteration")
    ref = {k: statistics.mean([runs[0][k], runs[-1][k]]) for k in ("wall_s", "cpu_s")}
    out = {"reference": {"config": REFERENCE, "first": runs[0], "last": runs[-1], **ref}, "configs": {}}
    for r in runs[1:-1]:
        r["wall_ratio"] = round(r["wall_s"] / ref["wall_s"], 2)
        r["cpu_ratio"] = round(r["cpu_s"] / ref["cpu_s"], 2)
        out["configs"][r["config"]] = r
    return out


# ---- report ---------------------------------------------------------------------------------------
def fmt_mem(mem: dict, arch: str, key: str, phase: str) -> str:
    entry = mem.get("archs", {}).get(arch, {}).get("configs", {}).get(key)
    if entry is None:
        return "-"
    if "skipped" in entry:
        need = re.search(r"needs about ([\d.]+) GiB", entry["skipped"])
        return f"does not fit (est. {need.group(1)} GiB)" if need else "failed"
    return f"{entry['ratio'][phase]:.2f}x ({entry['net_peak'][phase] / GIB:.1f} GiB)"


def table(results: dict) -> str:
    counts, mem, wall = results.get("counts", {}), results.get("memory", {}), results.get("walltime", {})
    archs = list(mem.get("archs", {}))
    by_row = {row: cfg for cfg, row in WALL_CONFIGS.items()}
    head = ["method", "student", "UNet calls (with grad)", "sample-evals (with grad / backward through)",
            "backward()"]
    for arch in archs:
        head += [f"gen step peak, {arch}", f"fake step peak, {arch}"]
    head += ["s / gen update (CPU s)", "x LCM-LoRA step (CPU)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, c in counts.items():
        variant, kind = key.split("/")
        n = {k: f"{round(v, 1):g}" for k, v in c.items() if isinstance(v, float)}
        row = [variant, kind, f"{n['calls']} ({n['grad_calls']})",
               f"{n['evals']} ({n['grad_evals']} / {n['backward_evals']})", n["backward_calls"]]
        for arch in archs:
            mk = f"{variant}/{kind}"
            row += [fmt_mem(mem, arch, mk, "generator"), fmt_mem(mem, arch, mk, "fake_score")]
        w = wall.get("configs", {}).get(by_row.get((variant, kind)))
        row += ([f"{w['wall_s']:.3f} +- {w['wall_sd']:.3f} ({w['cpu_s']:.3f})",
                 f"{w['wall_ratio']:.1f} ({w['cpu_ratio']:.1f})"] if w else ["-", "-"])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def notes(results: dict) -> str:
    out = []
    c = results.get("counts")
    if c:
        any_c = next(iter(c.values()))
        out.append(f"Counts: {any_c['iterations']} iterations of `Trainer.train` per row on the tests' small tiny "
                   f"pipeline (batch {any_c['batch']}), averaged per generator update (dmd-4step draws its "
                   "backward-simulation step per sample call, so its no-grad counts are a sample mean). A CFG call "
                   "is 1 call and 2 sample-evals; DMD2's GAN bottleneck calls stop at the mid-block and count as "
                   "calls and evals too (down path only). 'backward through': evals whose output backward reached.")
        odd = {k: v["grad_without_backward"] for k, v in c.items() if v["grad_without_backward"]}
        odd = json.dumps(odd) if odd else "none"
        out.append(f"Forwards that recorded a gradient graph backward never used: {odd}.")
    m = results.get("memory")
    if m:
        parts = []
        for arch, e in m["archs"].items():
            ref = e.get("teacher", {})
            ref_s = (f"{ref['net_peak']['teacher'] / GIB:.2f} GiB" if "net_peak" in ref else ref.get("skipped", "-"))
            skipped = sorted(k for k, v in e["configs"].items() if "skipped" in v)
            parts.append(f"{arch} ({e['unet_params_m']} M parameters, {e['unet_fp32_gib']} GiB fp32): teacher fwd+bwd "
                         f"{ref_s}" + (f"; skipped: {', '.join(skipped)} (e.g. {skipped[0]}: "
                                       f"{e['configs'][skipped[0]]['skipped']})" if skipped else ""))
        out.append(f"Memory: peak RSS of the step above the process's RSS before the UNet was built (imports, "
                   f"tiny text encoder and VAE), fp32, latents {m['latent']}x{m['latent']}, batch {m['batch']}, "
                   f"LoRA rank {m['lora_rank']}, steady state (second iteration); ratio to the teacher's own "
                   "forward + backward. " + "; ".join(parts) + ".")
    w = results.get("walltime")
    if w:
        r = w["reference"]
        out.append(f"Time: tiny configs (embedded teacher, batch 16; LCM-LoRA batch 32), mean +- sd over "
                   f"{r['first']['iterations']} iterations after {r['first']['warmup']} warm-up, one thread, "
                   f"nice 19 on a shared 2-core machine (CPU seconds are the steadier figure). LCM-LoRA step: "
                   f"{r['first']['wall_s']:.3f} s first, {r['last']['wall_s']:.3f} s last (CPU "
                   f"{r['first']['cpu_s']:.3f} / {r['last']['cpu_s']:.3f}). Ratios are per optimizer step at each "
                   "config's own batch.")
    return "\n\n".join(out)


def worker_options(ap: argparse.ArgumentParser, argv, min_free_gb: float) -> argparse.Namespace:
    """The options every memory-measuring script here shares (the watchdog's floor, a worker's time
    limit, the hidden ``--worker`` a child is started with), parsed; one thread for the parent and its
    workers."""
    ap.add_argument("--min-free-gb", type=float, default=min_free_gb)
    ap.add_argument("--worker-timeout", type=float, default=1800)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    return args


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "score-cost")
    ap.add_argument("--parts", default="counts,walltime,memory", help="comma list of counts, walltime, memory")
    ap.add_argument("--count-iterations", type=int, default=16)
    ap.add_argument("--count-batch", type=int, default=2)
    ap.add_argument("--archs", default="sd15,sd15-half", help=f"memory architectures among {list(ARCHS)}")
    ap.add_argument("--full-archs", default="sd15,sd15-half", help="where full students are tried (if they fit)")
    ap.add_argument("--memory-variants", default=",".join(MEMORY_VARIANTS))
    ap.add_argument("--latent", type=int, default=32, choices=(8, 16, 32))
    ap.add_argument("--mem-batch", type=int, default=1)
    ap.add_argument("--lora-rank", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=10)
    args = worker_options(ap, argv, min_free_gb=3.0)
    if args.worker:
        print(json.dumps(memory_worker(json.loads(args.worker))))
        return 0
    for name in ("archs", "full_archs", "memory_variants", "parts"):
        setattr(args, name, tuple(x for x in getattr(args, name).split(",") if x))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cost.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    t0 = time.time()
    if "counts" in args.parts:
        results["counts"] = {}
        for variant in VARIANTS:
            for kind in KINDS:
                c = count_passes(variant, kind, args.count_iterations, args.count_batch)
                results["counts"][f"{variant}/{kind}"] = c
                print(f"counts {variant}/{kind}: {c['calls']:g} calls ({c['grad_calls']:g} with grad), "
                      f"{c['evals']:g} evals ({c['grad_evals']:g} with grad, {c['backward_evals']:g} backward), "
                      f"{c['backward_calls']:g} backward()")
    if "walltime" in args.parts:
        results["walltime"] = measure_wall(args)
    if "memory" in args.parts:
        results["memory"] = measure_memory(args)
    if args.parts:  # (no parts: the report is only rendered again from cost.json)
        results["command"] = "OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/score_cost.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        results["seconds"] = round(time.time() - t0)
    path.write_text(json.dumps(results, indent=1) + "\n")
    md = (f"# Training cost of the score-distillation methods\n\n`{results['command']}`\n\n{table(results)}\n\n"
          f"{notes(results)}\n")
    (args.out / "cost.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
