"""fewstep's LCM-LoRA against diffusers' own LCM-LoRA training script, side by side (issue 13, target 1).

Runs diffusers' ``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py`` (unedited; get it
with ``git clone https://github.com/huggingface/diffusers``) on the embedded teacher and the same
procedural training data (``bench/reference_shards.py``: fewstep's training items 0..steps x batch - 1
as WebDataset PNG shards), at the same time as ``fewstep train configs/tiny/lcm_lora.yaml`` at the
same settings, both with one thread (``OMP_NUM_THREADS=1``); then judges both students with
``fewstep eval`` on the same prompts and seeds.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python bench/reference_lcm.py \
        --script diffusers/examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py \
        --steps 600 --seed 0 --num-images 1000 --out bench/results/reference-lcm

Settings of both runs come from the fewstep config (rank, alpha, lr, batch, w range, skip grid, loss,
seed); the reference gets the matching flags (``reference_flags``). What the reference script needs
on this teacher, all without editing it (``run_reference``, done in its own process before the
script starts):

- its unconditional prompt is tokenized with a hard-coded ``max_length=77``, which the tiny text
  encoder (16 positions) rejects; the tokenizer's ``max_length`` is clamped to its
  ``model_max_length`` (what 77 is on SD1.5), so its empty-prompt embedding is fewstep's;
- webdataset 1.0 ends every shard with an empty end-of-shard sample, on which the script's own
  ``group_by_keys_nothrow`` raises ``KeyError: 'fname'`` (measured: at the end of the first shard);
  ``tar_file_expander`` is called with ``eof_value=None``, the behaviour the script was written for;
- ``--dataloader_num_workers 1``: with 0 its dataset divides by the number of workers;
- ``--reference-autocast off`` (optional) disables the ``torch.autocast(device)`` the script wraps
  the teacher and target forwards in even with ``--mixed_precision no`` (on CPU that is bfloat16).

Measured: training steps/s after warm-up from each process's progress bar, timestamped as it
arrives, over the window where both are past warm-up and neither has finished (the ratio), and over
each run's own post-warm-up steps; peak RSS of the largest process (VmHWM) and of each process tree
(sum of RSS, polled twice a second); LoRA parameters each trains; quality ("all five attributes right",
FID-infinity) at 1/2/4 steps with paired intervals against each other and against the teacher at 50
DDIM steps (``bench/student_quality.py`` when ``bench/results/teacher-sweep`` has ``--num-images``
images, else a teacher row evaluated here). Weights and shards stay in ``--work``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

RUN_REFERENCE = "--run-reference"  # internal: argv[1] of the child that runs the reference script
STEPS = (1, 2, 4)


# --------------------------------------------------------------------------- the reference's process

def run_reference(argv: list[str]) -> None:
    """In the child: the shims named in the module docstring, then the script as ``__main__``."""
    import runpy

    autocast, script, rest = argv[0], argv[1], argv[2:]
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    call = PreTrainedTokenizerBase.__call__

    def clamped(self, *args, **kwargs):
        if kwargs.get("max_length") and kwargs["max_length"] > self.model_max_length:
            kwargs["max_length"] = self.model_max_length
        return call(self, *args, **kwargs)

    PreTrainedTokenizerBase.__call__ = clamped
    import webdataset.tariterators as tariterators

    expand = tariterators.tar_file_expander  # the script imports it by name when it starts, below
    tariterators.tar_file_expander = lambda *a, **k: expand(*a, **{"eof_value": None, **k})
    if autocast == "off":
        import torch

        real = torch.autocast
        torch.autocast = lambda device_type, *a, **k: real(device_type, *a, **{**k, "enabled": False})
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")


def reference_flags(cfg, shards: str, out: Path, steps: int, seed: int, resolution: int,
                    checkpoint_every: int = 0) -> list[str]:
    """The script's flags for the fewstep config ``cfg`` (a RunConfig); ``checkpoint_every``: as fewstep's."""
    m, s, t = cfg.method.config, cfg.student, cfg.train
    lr_schedule = "constant_with_warmup" if t.lr_schedule == "constant" and t.lr_warmup_steps else t.lr_schedule
    never = str(steps + 1)  # no periodic validation inside the timed steps; checkpoints only when asked (both runs)
    return ["--pretrained_teacher_model", str(resolve_teacher(cfg)), "--output_dir", str(out),
            "--train_shards_path_or_url", shards, "--max_train_samples", str(steps * t.batch_size),
            "--max_train_steps", str(steps), "--train_batch_size", str(t.batch_size),
            "--dataloader_num_workers", "1", "--resolution", str(resolution),
            "--learning_rate", repr(t.lr), "--lr_scheduler", lr_schedule, "--lr_warmup_steps", str(t.lr_warmup_steps),
            "--adam_beta1", repr(t.adam_beta1), "--adam_beta2", repr(t.adam_beta2),
            "--adam_weight_decay", repr(t.weight_decay), "--max_grad_norm", repr(t.max_grad_norm),
            "--lora_rank", str(s.lora_rank), "--lora_alpha", str(int(s.lora_alpha)),
            "--w_min", repr(m.w_min), "--w_max", repr(m.w_max), "--num_ddim_timesteps", str(m.num_ddim_timesteps),
            "--loss_type", "huber" if m.loss == "huber" else "l2", "--huber_c", repr(m.huber_c),
            "--timestep_scaling_factor", repr(m.timestep_scaling), "--seed", str(seed),
            "--mixed_precision", t.mixed_precision, "--checkpointing_steps", str(checkpoint_every or never),
            "--validation_steps", never]


def resolve_teacher(cfg) -> Path:
    from fewstep.pipelines.teacher import resolve

    return Path(resolve(cfg.model.pretrained))


def native_resolution(teacher: Path) -> int:
    """UNet sample_size x the VAE's downsampling factor (2 ** (levels - 1))."""
    unet = json.loads((teacher / "unet" / "config.json").read_text())
    vae = json.loads((teacher / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


# --------------------------------------------------------------------------- running both at once

class Child:
    """A training process: its output goes to ``log``; each progress-bar update of the bar named
    ``desc`` with total ``total`` is recorded as (monotonic seconds, step)."""

    def __init__(self, label: str, cmd: list[str], env: dict, log: Path, desc: str, total: int):
        self.label, self.cmd, self.events = label, cmd, []
        self.bar = re.compile(re.escape(desc) + r":.*?(\d+)/" + str(total) + r" \[")
        self.log = log.open("wb")
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        pending = ""
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            now = time.monotonic()
            self.log.write(chunk)
            self.log.flush()
            parts = re.split(r"[\r\n]", pending + chunk.decode(errors="replace"))
            pending = parts.pop()
            for part in parts:
                if (m := self.bar.search(part)) and (not self.events or int(m.group(1)) > self.events[-1][1]):
                    self.events.append((now, int(m.group(1))))
        self.log.close()


def _status_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and RssAnon (resident anonymous memory now: the heap, not file-backed
    pages such as shared libraries or an mmap'd cache, which the kernel can drop) of ``pid``."""
    out = {"VmHWM": 0, "RssAnon": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


class RssWatch(threading.Thread):
    """Peak RSS of each child's process tree (sum, polled), of its largest process (VmHWM), and the peak
    anonymous memory of its largest process (RssAnon, polled)."""

    def __init__(self, children: list[Child], every: float = 0.5):
        super().__init__(daemon=True)
        self.children, self.every, self.done = children, every, threading.Event()
        self.peak = {c.label: {"tree_bytes": 0, "largest_process_bytes": 0, "largest_process_anon_bytes": 0,
                               "processes": {}} for c in children}

    def run(self) -> None:
        import psutil

        while not self.done.is_set():
            for c in self.children:
                if c.proc.poll() is not None:
                    continue
                try:
                    root = psutil.Process(c.proc.pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                total, peak = 0, self.peak[c.label]
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                        name = "main" if p.pid == root.pid else f"child {' '.join(p.cmdline()[:3])[-60:]}"
                    except psutil.Error:
                        continue
                    total += rss
                    status = _status_kib(p.pid)
                    hwm = max(status["VmHWM"] * 1024, rss)
                    peak["largest_process_bytes"] = max(peak["largest_process_bytes"], hwm)
                    peak["largest_process_anon_bytes"] = max(peak["largest_process_anon_bytes"],
                                                             status["RssAnon"] * 1024)
                    peak["processes"][name] = max(peak["processes"].get(name, 0), hwm)
                peak["tree_bytes"] = max(peak["tree_bytes"], total)
            self.done.wait(self.every)


def _interp(events: list[tuple[float, int]], t: float) -> float:
    """Step reached at time ``t`` (linear between progress updates)."""
    for (t0, n0), (t1, n1) in zip(events, events[1:]):
        if t0 <= t <= t1:
            return n0 + (n1 - n0) * (t - t0) / (t1 - t0) if t1 > t0 else n1
    return float(events[-1][1] if t > events[-1][0] else events[0][1])


def _first(events, n: int) -> float | None:
    return next((t for t, k in events if k >= n), None)


def rates(children: list[Child], steps: int, warmup: int) -> dict:
    """Steps/s after warm-up: each alone over its own steps warmup..steps, and both over the window
    where both are past warm-up and neither has finished (same machine load for both)."""
    out = {}
    for c in children:
        t0, t1 = _first(c.events, warmup), _first(c.events, steps)
        out[c.label] = {"own_window_steps_per_s": (steps - _interp(c.events, t0)) / (t1 - t0) if t0 and t1 and t1 > t0
                        else None, "updates": len(c.events),
                        "first_step_s": (c.events[0][0] - c.start) if c.events else None,
                        "train_s": (t1 - c.start) if t1 else None,
                        "progress": [[round(t - c.start, 2), n] for t, n in c.events]}  # s since launch, step
    starts = [_first(c.events, warmup) for c in children]
    ends = [_first(c.events, steps) for c in children]
    if all(starts) and all(ends) and max(starts) < min(ends):
        w0, w1 = max(starts), min(ends)
        for c in children:
            out[c.label]["common_window_steps_per_s"] = (_interp(c.events, w1) - _interp(c.events, w0)) / (w1 - w0)
        out["common_window_s"] = w1 - w0
        if len(children) == 2:
            out["ratio_blocks"] = block_ratios(children[1].events, children[0].events, w0, w1)
    return out


def block_ratios(a: list, b: list, w0: float, w1: float, blocks: int = 10) -> dict:
    """Ratio of steps done by ``a`` and ``b`` in each of ``blocks`` equal slices of the common window,
    with the mean's 95 % t-interval over the slices (the slices share the machine's load, so the
    spread is what the load did to the ratio; adjacent slices are not independent: read it as a guide)."""
    import statistics

    edges = [w0 + (w1 - w0) * k / blocks for k in range(blocks + 1)]
    ratios = [(_interp(a, t1) - _interp(a, t0)) / (_interp(b, t1) - _interp(b, t0))
              for t0, t1 in zip(edges, edges[1:]) if _interp(b, t1) > _interp(b, t0)]
    mean = statistics.fmean(ratios)
    half = 2.262 * statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) == 10 else None  # t(0.975, 9)
    return {"ratios": ratios, "mean": mean, "ci95": [mean - half, mean + half] if half is not None else None}


# --------------------------------------------------------------------------- the students

def lora_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def lora_summary(tensors: dict, prefix: str) -> dict:
    """Parameters and adapted modules of a LoRA state dict whose keys start with ``prefix``."""
    modules = sorted({k[len(prefix):].rsplit(".lora_", 1)[0] for k in tensors if ".lora_" in k})
    kinds = sorted({m.rsplit(".", 1)[-1] if not m.endswith((".0", ".2")) else ".".join(m.rsplit(".", 2)[-2:])
                    for m in modules})
    return {"parameters": int(sum(v.numel() for v in tensors.values())), "modules": len(modules),
            "module_names": modules, "leaf_names": kinds}


def convert_reference_lora(ref_out: Path, fewstep_export: Path, dest: Path) -> dict:
    """The script's ``unet_lora/pytorch_lora_weights.safetensors`` (keys ``unet.base_model.model.*``,
    peft's wrapper prefix) as a LoRA folder fewstep and diffusers load: keys ``unet.*`` (what fewstep's
    export writes), the adapter's rank/alpha metadata from the script's ``adapter_config.json``, and the
    same stock-scheduler recipe and ``scheduler/`` as fewstep's export (LCMScheduler,
    original_inference_steps = the skip grid, timestep_scaling, guidance 1)."""
    from diffusers import StableDiffusionPipeline

    src = lora_tensors(ref_out / "unet_lora" / "pytorch_lora_weights.safetensors")
    prefix = "unet.base_model.model."
    if not all(k.startswith(prefix) for k in src):
        raise SystemExit(f"unexpected key layout in the reference's LoRA: {next(iter(src))}")
    layers = {k[len(prefix):]: v for k, v in src.items()}
    config = json.loads((ref_out / "adapter_config.json").read_text())
    keys = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora", "use_dora", "fan_in_fan_out",
            "rank_pattern", "alpha_pattern")  # what shapes the adapter; diffusers builds its LoraConfig from these
    meta = {k: config[k] for k in keys if config.get(k) is not None}
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    StableDiffusionPipeline.save_lora_weights(dest, unet_lora_layers=layers, safe_serialization=True,
                                              unet_lora_adapter_metadata=meta)
    shutil.copy(fewstep_export / "fewstep_recipe.json", dest / "fewstep_recipe.json")
    shutil.copytree(fewstep_export / "scheduler", dest / "scheduler")
    return {"rank": config.get("r"), "alpha": config.get("lora_alpha"), "target_modules": config.get("target_modules")}


def check_conversion(teacher: Path, ref_out: Path, converted: Path) -> float:
    """Max |difference| between the UNet as the script saved it (peft adapter folder on the teacher's
    UNet) and the teacher pipeline after ``load_lora_weights(converted)``, on one random input."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import PeftModel

    torch.manual_seed(0)
    base = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet")
    peft_unet = PeftModel.from_pretrained(base, str(ref_out)).eval()
    pipe = StableDiffusionPipeline.from_pretrained(teacher, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(converted))
    c = base.config
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size)
    t = torch.tensor([999, 499])
    ctx = torch.randn(2, pipe.tokenizer.model_max_length, c.cross_attention_dim)
    with torch.no_grad():
        a = peft_unet(x, t, encoder_hidden_states=ctx).sample
        b = pipe.unet(x, t, encoder_hidden_states=ctx).sample
        plain = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet")(x, t, encoder_hidden_states=ctx).sample
    if (a - plain).abs().max() == 0:
        raise SystemExit("the reference's LoRA changes nothing: it did not train or did not load")
    return float((a - b).abs().max())


# --------------------------------------------------------------------------- evaluation

def fewstep_eval(flags: list[str], log: Path, env: dict) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).with_name("fewstep")), "eval", *flags]
    print("+", " ".join(repr(a) if a == "" else a for a in cmd), flush=True)
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO)


def wait_all(procs: dict) -> None:
    for name, p in procs.items():
        if p.wait():
            raise SystemExit(f"{name} failed (exit {p.returncode}); see its log")


def row(metrics: Path, model: str, steps: int) -> dict:
    return next(r for r in json.loads(metrics.read_text())["rows"] if r["model"] == model and r["steps"] == steps)


def quality(out: Path, work: Path, names: dict, teacher: tuple[str, int], combined: Path) -> dict:
    """Each student's "all" and FID-infinity with intervals and paired differences to the teacher
    (from ``combined``), and fewstep - reference paired at each step count."""
    from fewstep.pipelines.eval_compare import compare_reports

    result = {}
    for s in STEPS:
        entry = {}
        for label, name in names.items():
            r = row(combined / "metrics.json", name, s)
            entry[label] = {"all": r["attribute_accuracy"]["all"], "all_ci": r["ci"]["attribute_accuracy.all"],
                            "fid_infinity": r["fid_infinity"], "fid_infinity_ci": r["ci"]["fid_infinity"],
                            "fid": r["fid"], "recall": r["recall"],
                            "vs_teacher": {k: v for k, v in r.get("vs_teacher", {}).items()
                                           if k in ("attribute_accuracy.all", "fid_infinity", "fid")}}
        pair = work / f"fewstep-vs-reference@{s}"
        compare_reports([out / "reference", out / "fewstep"], pair, baseline=(names["reference"], s))
        r = row(pair / "metrics.json", names["fewstep"], s)
        entry["fewstep_minus_reference"] = {k: r["vs_teacher"][k] for k in
                                            ("attribute_accuracy.all", "fid_infinity", "fid", "recall", "diversity")
                                            if k in r["vs_teacher"]}
        keep = out / "head-to-head" / f"at-{s}-steps"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(pair / "report.md", keep / "report.md")
        result[s] = entry
    result["teacher"] = {"model": teacher[0], "steps": teacher[1], "report": str(combined)}
    return result


# --------------------------------------------------------------------------- main

def git_state() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "log", "--oneline", "-1"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")


def cpu_model() -> str:
    """' (model name, widest vector ISA)' from /proc/cpuinfo where it exists: the ratio to the script moves with
    the CPU (1.36-1.41x on an AVX2 machine, 1.26x on an AVX-512 one; REFERENCE_LCM.md)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = "AVX-512" + (" BF16" if "avx512_bf16" in flags else "") if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f" ({model}, {isa})"


def machine() -> str:
    import psutil

    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}{cpu_model()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, load average at start {load[0]:.1f}; "
            f"python {platform.python_version()}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == RUN_REFERENCE:
        return run_reference(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--script", required=True, help="train_lcm_distill_lora_sd_wds.py from diffusers' examples")
    p.add_argument("--config", default="configs/tiny/lcm_lora.yaml")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=1000, help="eval prompts (images per row)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--warmup", type=int, help="steps excluded from the rates (default max(5, steps / 10))")
    p.add_argument("--reference-autocast", choices=("script", "off"), default="script",
                   help="script: as written (torch.autocast on the teacher/target passes); off: fp32 throughout")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra fewstep override, e.g. train.compile=true (repeatable; the reference is unchanged)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="both runs keep a checkpoint every N steps (for "
                   "bench/reference_ttq.py's time-to-quality); 0: only the final weights")
    p.add_argument("--work", default="runs/bench-reference-lcm", help="shards, runs, weights (not in git)")
    p.add_argument("--out", default="bench/results/reference-lcm")
    args = p.parse_args()

    from fewstep.distill.config import ConfigError
    from fewstep.distill.run_config import load_config
    from reference_report import markdown
    from reference_shards import brace_pattern, write_shards

    work, out = (REPO / args.work).resolve(), (REPO / args.out).resolve()
    name = "fewstep-lcm-lora"
    overrides = [f"name={name}", f"output_dir={work}", f"train.steps={args.steps}", f"train.seed={args.seed}",
                 "eval.enabled=false", "validation.metrics=false", "train.validation_every=0",
                 f"train.checkpoint_every={args.checkpoint_every}",
                 f"train.checkpoints_total_limit={args.steps // max(args.checkpoint_every, 1) + 1}", *args.set]
    try:  # a bad --set (or config) in one line, before any shard is written
        cfg = load_config(REPO / args.config, overrides)
    except ConfigError as e:
        raise SystemExit(f"reference_lcm: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    teacher = resolve_teacher(cfg)
    resolution = native_resolution(teacher)
    warmup = args.warmup or max(5, args.steps // 10)
    t_start = time.time()
    shards = write_shards(work / "shards", args.steps * cfg.train.batch_size, cfg.data.seed)
    shard_s = time.time() - t_start
    ref_out = work / "diffusers-reference"
    for stale in (ref_out, work / name):
        if stale.exists():
            shutil.rmtree(stale)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    ref_cmd = [sys.executable, str(Path(__file__).resolve()), RUN_REFERENCE, args.reference_autocast,
               str(Path(args.script).resolve()),
               *reference_flags(cfg, brace_pattern(shards), ref_out, args.steps, args.seed, resolution,
                                args.checkpoint_every)]
    fs_cmd = [str(Path(sys.executable).with_name("fewstep")), "train", args.config,
              *[a for o in overrides for a in ("--set", o)]]
    work.mkdir(parents=True, exist_ok=True)
    children = [Child("reference", ref_cmd, env, work / "reference.log", "Steps", args.steps),
                Child("fewstep", fs_cmd, env, work / "fewstep.log", name, args.steps)]
    watch = RssWatch(children)
    watch.start()
    for c in children:
        print("+", " ".join(c.cmd), flush=True)
    codes = {c.label: c.proc.wait() for c in children}
    watch.done.set()
    for c in children:
        c.reader.join()
    wall = time.time() - t_start
    if any(codes.values()):
        raise SystemExit(f"a training run failed: {codes}; logs in {work}")
    speed = rates(children, args.steps, warmup)
    ref_rate, fs_rate = (speed[k].get("common_window_steps_per_s") for k in ("reference", "fewstep"))
    speed["ratio_fewstep_over_reference"] = fs_rate / ref_rate if ref_rate and fs_rate else None
    from fewstep.distill.runlog import read_logs

    logged = [r["sec_per_step"] for r in read_logs(work / name) if "sec_per_step" in r and r["step"] > warmup]
    speed["fewstep"]["logs_sec_per_step_mean"] = sum(logged) / len(logged) if logged else None

    results = {"command": " ".join(["OMP_NUM_THREADS=1 MKL_NUM_THREADS=1", ".venv/bin/python",
                                    "bench/reference_lcm.py", *sys.argv[1:]]),
               "fewstep_state": git_state(), "machine": machine(), "steps": args.steps, "seed": args.seed,
               "num_images": None if args.skip_eval else args.num_images, "warmup_steps": warmup,
               "checkpoint_every": args.checkpoint_every, "work": str(work),
               "resolution": resolution, "teacher": str(teacher),
               "reference_autocast": args.reference_autocast, "reference_command": " ".join(ref_cmd),
               "fewstep_command": " ".join(fs_cmd), "shards": {"pattern": brace_pattern(shards),
                                                               "samples": args.steps * cfg.train.batch_size,
                                                               "seconds": shard_s},
               "wall_s_training": wall, "speed": speed, "memory": watch.peak}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")  # before anything can fail
    export = work / name / "export"
    converted = work / "diffusers-lcm-lora"
    ref_meta = convert_reference_lora(ref_out, export, converted)
    conversion_diff = check_conversion(teacher, ref_out, converted)
    fs_lora = lora_summary(lora_tensors(export / "pytorch_lora_weights.safetensors"), "unet.")
    ref_lora = lora_summary(lora_tensors(converted / "pytorch_lora_weights.safetensors"), "unet.")
    lora = {"fewstep": {k: v for k, v in fs_lora.items() if k != "module_names"},
            "reference": {**{k: v for k, v in ref_lora.items() if k != "module_names"}, **ref_meta},
            "same_modules": fs_lora["module_names"] == ref_lora["module_names"],
            "only_fewstep": sorted(set(fs_lora["module_names"]) - set(ref_lora["module_names"]))[:20],
            "only_reference": sorted(set(ref_lora["module_names"]) - set(fs_lora["module_names"]))[:20],
            "conversion_max_abs_diff": conversion_diff}
    results["lora"] = lora

    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if not args.skip_eval:
        results["quality"] = evaluate_both(args, work, out, name, converted, teacher, env)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(results, STEPS))
    print((out / "results.md").read_text())


def evaluate_both(args, work: Path, out: Path, name: str, converted: Path, teacher: Path, env: dict) -> dict:
    sweep = REPO / "bench/results/teacher-sweep"
    sweep_n = json.loads((sweep / "metrics.json").read_text())["protocol"]["num_images"] if sweep.is_dir() else None
    use_sweep = sweep_n == args.num_images
    common = ["--steps", ",".join(map(str, STEPS)), "--num-images", str(args.num_images), "--no-floor"]
    # fewstep: the exact command bench/student_quality.py runs for a --student (it then finds it with --reuse)
    fs_flags = ["--run", str(work / name), "--teacher-steps", "", *common, "--out", str(out / "fewstep")]
    teacher_flags = [] if use_sweep else ["--teacher", str(teacher), "--teacher-steps", "50"]  # no --teacher: no rows
    ref_flags = ["--pipeline", str(teacher), "--lora", str(converted), *teacher_flags, *common,
                 "--out", str(out / "reference")]
    for d in ("fewstep", "reference"):
        if (out / d).exists():
            shutil.rmtree(out / d)
    wait_all({"fewstep eval (fewstep)": fewstep_eval(fs_flags, work / "eval-fewstep.log", env),
              "fewstep eval (reference)": fewstep_eval(ref_flags, work / "eval-reference.log", env)})
    names = {"fewstep": name, "reference": converted.name}
    if use_sweep:  # every row paired with the teacher sweep's 50-step row, by the project's own script
        cmd = [sys.executable, str(REPO / "bench/student_quality.py"), "--family", "consistency",
               "--student", f"lcm-lora={work / name}", "--against", f"diffusers-lcm-lora={out / 'reference'}",
               "--steps", ",".join(map(str, STEPS)), "--num-images", str(args.num_images), "--reuse",
               "--out", str(work / "student-quality")]
        (work / "student-quality").mkdir(parents=True, exist_ok=True)
        if (work / "student-quality" / "lcm-lora").exists():
            shutil.rmtree(work / "student-quality" / "lcm-lora")
        shutil.copytree(out / "fewstep", work / "student-quality" / "lcm-lora")  # --reuse reads it there
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
        combined = work / "student-quality" / "combined"
        shutil.copy(work / "student-quality" / "summary.md", out / "student_quality_summary.md")
    else:  # teacher rows of the reference's eval
        from fewstep.pipelines.eval_compare import compare_reports

        combined = work / "combined"
        compare_reports([out / "reference", out / "fewstep"], combined, baseline=("teacher", 50))
    (out / "combined").mkdir(exist_ok=True)
    shutil.copy(combined / "report.md", out / "combined" / "report.md")
    return quality(out, work, names, ("teacher", 50), combined)


if __name__ == "__main__":
    main()
