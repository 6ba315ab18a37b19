"""Sampling speed, teacher vs few-step student, end to end and broken down (issue 13).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/sampling_speed.py --out bench/results/sampling-speed \
        [--pipelines tiny-sd,sd15] [--repeats 3] [--sd15-teacher50-repeats 1] [--tiny-repeats 10] \
        [--sd15-lora-repeats 1] [--warmup-steps 1] [--lora-row tiny-sd,sd15]

Writes <out>/speed.json (every timing of every call), <out>/speed.md (the tables, the command on top)
and <out>/speed.png (seconds per image against UNet evaluations, log axes) when matplotlib is present.

**Pipelines.** ``sd15``: Stable Diffusion 1.5's exact UNet, VAE and CLIP ViT-L/14 text tower with random
weights (``bench/sd15_arch.py``), sampled at 256 px; ``tiny-sd``: the embedded teacher at its native size
(``unet.sample_size`` x the VAE factor, 32 px), at batch 1 and 16. Both with the progress bar off, as
fewstep's ``load_pipeline`` leaves them. Random weights do not change the time; whether every image came
out finite is recorded (a NaN could take other code paths).

**Rows.** Every call is one stock ``StableDiffusionPipeline.__call__`` (``@torch.no_grad``, as diffusers
runs it) with ``output_type="pil"``. Teacher: DDIMScheduler with trailing spacing (what ``fewstep eval``
samples teachers with, ``pipelines/eval_entries.py``) at 50 and 25 steps with CFG (SD1.5: 7.5; tiny: 3),
which diffusers batches as one UNet call on [uncond, cond]: 2 evaluations per step. Student: the same
UNet under the LCM-LoRA config's export recipe (``LCMScheduler``, ``original_inference_steps`` and
``timestep_scaling`` from ``configs/{tiny,sd15}/lcm_lora.yaml``, applied by ``distill.sampling.apply_recipe``)
at 1, 2, 4, 8 steps and guidance 1: one evaluation per step. ``--lora-row`` adds "student 4 + LoRA": the
config's LoRA attached by ``distill.students.add_lora`` and not fused, as ``fewstep sample --lora`` and
``fewstep eval`` load a LoRA export (``load_lora_weights`` without ``fuse_lora``).

**Timing.** Each (pipeline, batch) first warms up every call shape (CFG or not, LoRA or not) once, at
``--warmup-steps`` steps; then repetition r runs every row once, rows rotated by r so drift hits all rows
alike. Per row: the median repetition (by total; use an odd count) with its parts, and min and max. Parts
of a call, by wrappers and hooks on the pipeline's own objects: ``text`` = ``pipe.encode_prompt`` (tokenizer
+ text encoder; with CFG also the empty negative prompt); ``unet`` = forward pre/post hooks on ``pipe.unet``
(evaluations per image = rows of each call / images, so a CFG call counts 2); ``scheduler`` =
``set_timesteps``, ``scale_model_input`` and ``step``; ``vae`` = ``pipe.vae.decode``; ``postprocess`` =
``pipe.image_processor.postprocess`` (to PIL); ``rest`` = the call's total less those parts (latent init,
the CFG arithmetic, the pipeline's Python).
Every part and total is read on two clocks: wall (what a user waits) and this process's CPU time (the
steadier figure on a shared machine: time spent waiting for a core is not in it).

**Ideal and where the rest goes.** By UNet evaluations a row's ideal speedup over "teacher 50 + CFG" is
E_ref / E_row (100 / K for a K-step student). Two exact decompositions of a miss (``compare``):
achieved / ideal = (UNet seconds per evaluation, teacher / row) x (UNet share of the row's time) /
(UNet share of the teacher's time); and the seconds a row takes above its ideal time T_ref / ideal split
by part: row_part - ref_part / ideal (what a fixed cost, paid once per image, adds to a short sampler).
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("text", "unet", "scheduler", "vae", "postprocess")  # timed directly; "rest" is what is left
REACHES = 0.8  # achieved / ideal at or above which a row "reaches" (issue 13)


@dataclass(frozen=True)
class Row:
    name: str
    steps: int
    teacher: bool  # DDIM trailing + CFG; else the student recipe at guidance 1
    lora: bool = False  # the student UNet with the config's LoRA attached, not fused


ROWS = (Row("teacher 50 + CFG", 50, True), Row("teacher 25 + CFG", 25, True), Row("student 1", 1, False),
        Row("student 2", 2, False), Row("student 4", 4, False), Row("student 8", 8, False))
LORA_ROW = Row("student 4 + LoRA (unfused)", 4, False, lora=True)
REFERENCE = ROWS[0].name


@dataclass(frozen=True)
class Bench:
    name: str  # as in the tables
    size: int | None  # pixels (None: the pipeline's native size)
    guidance: float  # the teacher's CFG scale
    student_config: str  # the run config whose export recipe the student samples with
    batches: tuple[int, ...]  # images per call


PRESETS = {
    "tiny-sd": Bench("tiny-sd", None, 3.0, "configs/tiny/lcm_lora.yaml", (1, 16)),
    "sd15": Bench("sd15-arch", 256, 7.5, "configs/sd15/lcm_lora.yaml", (1,)),
}


def clocks() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a shared machine a process that waits for a core
    loses wall time but no CPU time, so CPU seconds are the steadier figure (one thread: CPU <= wall)."""
    return time.perf_counter(), time.process_time()


# ---- instrumentation ---------------------------------------------------------------------------------
class Probe:
    """Seconds spent in each part of one pipeline call, its UNet calls and rows, and whether the decoded
    images were finite. ``reset`` before a call, ``record`` after it."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.seconds, self.cpu = dict.fromkeys(PARTS, 0.0), dict.fromkeys(PARTS, 0.0)
        self.unet_calls, self.unet_rows, self.finite, self._unet_t0 = 0, 0, True, None
        self.unet_each = []  # (wall, CPU) seconds of every UNet call: drift within a call shows here

    def add(self, part: str, t0: tuple[float, float]) -> None:
        wall, cpu = clocks()
        self.seconds[part] += wall - t0[0]
        self.cpu[part] += cpu - t0[1]

    def timed(self, part: str, fn, check=None):
        """``fn`` wrapped to add its wall time to ``part``. ``functools.wraps`` keeps its signature visible to
        ``inspect.signature``: the pipeline passes ``generator`` / ``eta`` to ``scheduler.step`` only if
        its signature names them (``prepare_extra_step_kwargs``), so a bare wrapper would change the sampler."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = clocks()
            out = fn(*args, **kwargs)
            self.add(part, t0)
            if check is not None:
                check(out)
            return out
        return wrapper

    def unet_pre(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.unet_calls += 1
        self.unet_rows += sample.shape[0]
        self._unet_t0 = clocks()

    def unet_post(self, module, args, output):
        wall, cpu = clocks()
        self.unet_each.append((round(wall - self._unet_t0[0], 5), round(cpu - self._unet_t0[1], 5)))
        self.add("unet", self._unet_t0)

    def record(self, t0: tuple[float, float], images: int) -> dict:
        wall, cpu = clocks()
        return {"total": wall - t0[0], **self.seconds, "cpu": {"total": cpu - t0[1], **self.cpu},
                "unet_calls": self.unet_calls, "evals_per_image": self.unet_rows / images, "finite": self.finite,
                "unet_each": self.unet_each}


def instrument_unet(unet, probe: Probe) -> None:
    unet.register_forward_pre_hook(probe.unet_pre, with_kwargs=True)
    unet.register_forward_hook(probe.unet_post)


def instrument_scheduler(scheduler, probe: Probe) -> None:
    for name in ("set_timesteps", "scale_model_input", "step"):
        setattr(scheduler, name, probe.timed("scheduler", getattr(scheduler, name)))


def instrument(pipe, probe: Probe) -> None:
    """Wrap the pipeline's text encoding, VAE decode and postprocessing and hook its UNet (in place)."""
    import torch

    def check(decoded):
        probe.finite = probe.finite and bool(torch.isfinite(decoded[0]).all())

    pipe.encode_prompt = probe.timed("text", pipe.encode_prompt)
    pipe.vae.decode = probe.timed("vae", pipe.vae.decode, check)
    pipe.image_processor.postprocess = probe.timed("postprocess", pipe.image_processor.postprocess)
    instrument_unet(pipe.unet, probe)


def schedulers(pipe, student_config: str) -> dict:
    """``{"teacher": DDIM trailing, "student": the config's export recipe}``, each built from the pipeline's
    own scheduler config by ``apply_recipe``; the pipeline keeps its scheduler."""
    from fewstep.distill.methods.registry import REGISTRY
    from fewstep.distill.run_config import load_config
    from fewstep.distill.sampling import Recipe, apply_recipe
    from fewstep.pipelines.eval_entries import TEACHER_SPACING

    cfg = load_config(ROOT / student_config)
    student = REGISTRY[cfg.method.name](cfg.method.config, cfg.student).recipe()
    # clip_sample False: SD1.5's scheduler_config.json (bench/sd15_arch.py drops it: PNDM takes no such key)
    teacher = Recipe("DDIMScheduler", {"timestep_spacing": TEACHER_SPACING, "clip_sample": False})
    base, out = pipe.scheduler, {}
    for kind, recipe in (("teacher", teacher), ("student", student)):
        pipe.scheduler = base
        out[kind] = apply_recipe(pipe, recipe).scheduler
    pipe.scheduler = base
    return out


def lora_unet(pipe, student_config: str):
    """A copy of the pipeline's UNet with the config's LoRA attached as training attaches it (not fused)."""
    from fewstep.distill.run_config import load_config
    from fewstep.distill.students import add_lora

    return add_lora(copy.deepcopy(pipe.unet), load_config(ROOT / student_config).student).eval()


def load(name: str):
    """The pipeline of a preset, progress bar off."""
    if name == "sd15":
        sys.path.insert(0, str(ROOT / "bench"))
        from sd15_arch import sd15_pipeline

        pipe = sd15_pipeline(seed=0)
        pipe.set_progress_bar_config(disable=True)  # as fewstep's load_pipeline
        return pipe
    from fewstep.pipelines.teacher import load_pipeline

    return load_pipeline(name)


@functools.lru_cache
def prompts(n: int) -> tuple[str, ...]:
    """``n`` procedural captions, every 36th of the 576."""
    from fewstep.distill.data.procedural import all_captions

    captions = all_captions()
    return tuple(captions[(36 * i) % len(captions)] for i in range(n))


def execution_device_seconds(pipe, n: int = 20) -> float:
    """Median seconds of one ``pipe._execution_device`` lookup: each call of the pipeline makes one, and it
    walks the modules of every component looking for offload hooks (diffusers' ``pipeline_utils``)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        pipe._execution_device
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- measuring ---------------------------------------------------------------------------------------
class Sampler:
    """A pipeline prepared once: instrumented, with both schedulers and optionally a LoRA UNet; ``call(row)``
    runs one timed call of ``batch`` images and returns its record."""

    def __init__(self, pipe, bench: Bench, with_lora: bool):
        self.pipe, self.bench, self.probe = pipe, bench, Probe()
        instrument(pipe, self.probe)
        self.schedulers = schedulers(pipe, bench.student_config)
        for s in self.schedulers.values():
            instrument_scheduler(s, self.probe)
        self.unets = {False: pipe.unet}
        if with_lora:
            self.unets[True] = lora_unet(pipe, bench.student_config)
            instrument_unet(self.unets[True], self.probe)
        self.size = bench.size or pipe.unet.config.sample_size * pipe.vae_scale_factor

    def call(self, row: Row, batch: int, steps: int | None = None, output_type: str = "pil") -> dict:
        import torch

        pipe = self.pipe
        pipe.scheduler = self.schedulers["teacher" if row.teacher else "student"]
        pipe.unet = self.unets[row.lora]
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        texts = list(prompts(batch))
        self.probe.reset()
        t0 = clocks()
        out = pipe(texts, num_inference_steps=steps or row.steps,
                   guidance_scale=self.bench.guidance if row.teacher else 1.0, height=self.size, width=self.size,
                   generator=gens, output_type=output_type)
        rec = self.probe.record(t0, batch)
        pipe.unet = self.unets[False]
        rec["images"] = out.images
        return rec


def measure(sampler: Sampler, rows: list[Row], batch: int, repeats: dict, warmup_steps: int) -> dict:
    """``{"warmup": [...], "rows": {name: [record per repetition]}}``; ``repeats[name]`` repetitions per row,
    interleaved (repetition r runs the rows rotated by r)."""
    warmup, shapes = [], set()
    for row in rows:
        if (row.teacher, row.lora) not in shapes:
            shapes.add((row.teacher, row.lora))
            rec = sampler.call(row, batch, steps=min(row.steps, warmup_steps))
            rec.pop("images")
            warmup.append({"row": row.name, "steps": min(row.steps, warmup_steps), **rec})
    out = {row.name: [] for row in rows}
    for r in range(max(repeats.values())):
        for row in rows[r % len(rows):] + rows[:r % len(rows)]:
            if r < repeats[row.name]:
                rec = sampler.call(row, batch)
                rec.pop("images")
                out[row.name].append(rec)
                print(f"  {sampler.bench.name} b{batch} rep {r} {row.name}: {rec['total']:.3f} s "
                      f"(CPU {rec['cpu']['total']:.3f}) "
                      f"(unet {rec['unet']:.3f}, vae {rec['vae']:.3f}, evals/img {rec['evals_per_image']:g})",
                      flush=True)
    return {"warmup": warmup, "rows": out}


# ---- arithmetic (pure) -------------------------------------------------------------------------------
def summarize(reps: list[dict], images: int, clock: str = "wall") -> dict:
    """Per image, by ``clock`` ("wall" or "cpu"): the median repetition's total and parts (the middle one
    by total; of an even count the lower middle), so the parts and ``rest`` (total less the timed parts) come
    from one real call and add up to its total; min and max of the total over all repetitions; UNet seconds
    per evaluation."""
    if clock == "cpu":
        reps = [{**r, **r["cpu"]} for r in reps]
    evals = {r["evals_per_image"] for r in reps}
    if len(evals) != 1:
        raise ValueError(f"UNet evaluations differ between repetitions: {sorted(evals)}")
    totals = [r["total"] / images for r in reps]
    mid = sorted(reps, key=lambda r: r["total"])[(len(reps) - 1) // 2]
    s = {"total": mid["total"] / images, "min": min(totals), "max": max(totals), "repeats": len(reps),
         "evals": evals.pop(), "unet_calls": reps[0]["unet_calls"], "finite": all(r["finite"] for r in reps)}
    for part in PARTS:
        s[part] = mid[part] / images
    s["rest"] = s["total"] - sum(s[p] for p in PARTS)
    s["unet_per_eval"] = s["unet"] / s["evals"]
    return s


def compare(row: dict, ref: dict) -> dict:
    """A row's speedup over ``ref``, its ideal by UNet evaluations, and how the miss decomposes:
    ``ratio = per_eval_factor * row_unet_share / ref_unet_share`` and ``total - ideal_total = sum(gap)``."""
    ideal = ref["evals"] / row["evals"]
    speedup = ref["total"] / row["total"]
    parts = PARTS + ("rest",)
    return {"speedup": speedup, "ideal": ideal, "ratio": speedup / ideal, "reaches": speedup / ideal >= REACHES,
            "ideal_total": ref["total"] / ideal, "per_eval_factor": ref["unet_per_eval"] / row["unet_per_eval"],
            "unet_share": row["unet"] / row["total"], "ref_unet_share": ref["unet"] / ref["total"],
            "gap": {p: row[p] - ref[p] / ideal for p in parts}}


def fixed_share(row: dict) -> float:
    """Share of a row's time in what no step reduction removes: text encoding, VAE decode, postprocessing."""
    return (row["text"] + row["vae"] + row["postprocess"]) / row["total"]


# ---- report ------------------------------------------------------------------------------------------
def fmt_s(x: float) -> str:
    return f"{x:.4f}" if x < 0.1 else f"{x:.3f}" if x < 10 else f"{x:.1f}"


def verdict(c: dict) -> str:
    return " reaches" if c["reaches"] else " **miss**"


def table(summary: dict, cpu: dict) -> list[str]:
    """Wall-clock table with the CPU-time speedup beside it (``cpu``: the same rows summarized by CPU time)."""
    ref, ref_cpu = summary[REFERENCE], cpu[REFERENCE]
    lines = ["| row | UNet evals / image | s / image, median [min, max] (R) | UNet s / eval | speedup vs "
             "teacher 50 + CFG | ideal (by evals) | achieved / ideal | CPU s / image [min, max] | CPU / wall | "
             "achieved / ideal by CPU s | text | UNet | scheduler | VAE decode | postprocess | rest |",
             "|" + " --- |" * 16]
    for name, s in summary.items():
        c, cc, sc = compare(s, ref), compare(cpu[name], ref_cpu), cpu[name]
        share = " | ".join(f"{100 * s[p] / s['total']:.1f} %" for p in PARTS + ("rest",))
        lines.append(f"| {name} | {s['evals']:g} | {fmt_s(s['total'])} [{fmt_s(s['min'])}, {fmt_s(s['max'])}] "
                     f"({s['repeats']}) | {fmt_s(s['unet_per_eval'])} | {c['speedup']:.2f}x | {c['ideal']:g}x | "
                     f"{c['ratio']:.2f}{'' if name == REFERENCE else verdict(c)} | {fmt_s(sc['total'])} "
                     f"[{fmt_s(sc['min'])}, {fmt_s(sc['max'])}] | {sc['total'] / s['total']:.2f} | "
                     f"{cc['ratio']:.2f}{'' if name == REFERENCE else verdict(cc)} | {share} |")
    return lines


def gap_table(summary: dict) -> list[str]:
    ref = summary[REFERENCE]
    lines = ["| row | ideal s / image | above ideal, s | from text | from UNet | from scheduler | from VAE decode | "
             "from postprocess | from rest | UNet s/eval: teacher / row | fixed share |", "|" + " --- |" * 11]
    for name, s in summary.items():
        if name == REFERENCE:
            continue
        c = compare(s, ref)
        above = s["total"] - c["ideal_total"]
        gaps = " | ".join(f"{fmt_s(c['gap'][p])} ({100 * c['gap'][p] / above:.0f} %)" if above > 0
                          else fmt_s(c["gap"][p]) for p in PARTS + ("rest",))
        lines.append(f"| {name} | {fmt_s(c['ideal_total'])} | {fmt_s(above)} | {gaps} | {c['per_eval_factor']:.2f} "
                     f"| {100 * fixed_share(s):.1f} % |")
    return lines


def analysis(summary: dict) -> list[str]:
    ref, out = summary[REFERENCE], []
    other = next((s for n, s in summary.items() if n.startswith("teacher") and n != REFERENCE), None)
    if other is not None and abs(ref["unet_per_eval"] / other["unet_per_eval"] - 1) > 0.1:
        out.append(f"- **Check the reference**: its UNet s/eval ({fmt_s(ref['unet_per_eval'])}) differs from the other "
                   f"teacher row's ({fmt_s(other['unet_per_eval'])}) by more than 10 %, though both run the same "
                   "calls: the machine's speed changed between them, and every ratio to the reference carries that.")
    for name, s in summary.items():
        if name == REFERENCE:
            continue
        c = compare(s, ref)
        if c["reaches"]:
            out.append(f"- {name}: reaches ({c['ratio']:.2f} of the ideal {c['ideal']:g}x).")
            continue
        above = s["total"] - c["ideal_total"]
        big = sorted(((g, p) for p, g in c["gap"].items() if g > 0), reverse=True)
        where = ", ".join(f"{p} {fmt_s(g)} s ({100 * g / above:.0f} %)" for g, p in big)
        out.append(f"- {name}: **miss**, {c['ratio']:.2f} of the ideal {c['ideal']:g}x; {fmt_s(above)} s / image "
                   f"above the ideal {fmt_s(c['ideal_total'])} s, from {where}. Factors: UNet s/eval teacher/row "
                   f"{c['per_eval_factor']:.2f} x UNet share {c['unet_share']:.2f} / teacher's "
                   f"{c['ref_unet_share']:.2f} = {c['ratio']:.2f}. Text + VAE + postprocess are "
                   f"{100 * fixed_share(s):.1f} % of this row (VAE decode {100 * s['vae'] / s['total']:.1f} %).")
    return out


def write_report(out: Path, results: dict, command: str) -> None:
    lines = ["# Sampling speed: teacher vs student (issue 13)", "", f"`{command}`", "",
             f"{results['machine']} Whole run {results['wall_s'] / 60:.0f} min; 1-minute load average "
             f"{results['load_average_start']:.2f} at the start, {results['load_average_end']:.2f} at the end. The "
             "machine is shared: other jobs ran during parts of the run, so compare rows within one run and read "
             "CPU / wall.", "",
             "Seconds per image of one whole `pipe(...)` call (output PIL), median [min, max] over R "
             "interleaved repetitions after a warm-up; parts of the median repetition as a share of its wall "
             "time (`rest` = its total less its timed parts). Ideal = UNet evaluations of teacher 50 + CFG / "
             "the row's; "
             f"a row reaches at achieved / ideal >= {REACHES}. CPU s = this process's CPU time over the same "
             "calls (one thread): it leaves out the time the process waited for a core, so on a shared machine "
             "it is the steadier figure; CPU / wall well below 1 means the call waited. Raw timings: "
             "`speed.json`.", ""]
    for key, res in results["benches"].items():
        summary, cpu = res["summary"], res["summary_cpu"]
        lines += [f"## {key}: {res['size']} px, batch {res['batch']}, teacher CFG {res['guidance']}", "",
                  *table(summary, cpu), "", "Where the time above the ideal goes (wall seconds per image; a part's "
                  "excess = row part - teacher part / ideal; fixed share = text + VAE + postprocess):", "",
                  *gap_table(summary), "", "The same by CPU seconds:", "", *gap_table(cpu), "",
                  "By wall time:", "", *analysis(summary), "", "By CPU time:", "", *analysis(cpu),
                  f"- Of `rest`, diffusers' `pipe._execution_device` lookup (once per call; it walks every "
                  f"component's modules for offload hooks) takes {1e3 * res['execution_device_s']:.2f} ms per call "
                  f"= {1e3 * res['execution_device_s'] / res['batch']:.2f} ms per image.", ""]
        if not all(s["finite"] for s in summary.values()):
            lines += ["Non-finite decoded images in some row (random weights): see speed.json.", ""]
    if results.get("plot"):
        lines += [f"![seconds per image vs UNet evaluations]({results['plot']})", ""]
    (out / "speed.md").write_text("\n".join(lines))


def plot(out: Path, results: dict) -> str | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.6, 4.4))
    for i, (key, res) in enumerate(results["benches"].items()):
        color = f"C{i}"
        summary = res["summary"]
        ref = summary[REFERENCE]
        for teacher in (True, False):
            pts = [s for n, s in summary.items() if n.startswith("teacher") == teacher and "LoRA" not in n]
            pts.sort(key=lambda s: s["evals"])
            x, y = [s["evals"] for s in pts], [s["total"] for s in pts]
            err = [[s["total"] - s["min"] for s in pts], [s["max"] - s["total"] for s in pts]]
            ax.errorbar(x, y, yerr=err, color=color, marker="o" if teacher else "s", ls="-" if not teacher else "none",
                        label=f"{key} {'teacher (DDIM + CFG)' if teacher else 'student (LCM)'}", ms=5, capsize=2)
        xs = [1, ref["evals"]]
        ax.plot(xs, [ref["total"] * x / ref["evals"] for x in xs], color=color, ls=":", lw=1,
                label=f"{key} ideal (teacher 50 / evals)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("UNet evaluations per image")
    ax.set_ylabel("seconds per image (1 thread)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("wall time, median [min, max]; dotted: ideal by UNet evaluations", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "speed.png", dpi=110)
    plt.close(fig)
    return "speed.png"


def machine_note() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import diffusers
    import torch

    return (f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
            f"thread(s), diffusers {diffusers.__version__}, Python {platform.python_version()}.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--pipelines", default="tiny-sd,sd15", help=f"comma list of {sorted(PRESETS)}")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions of each sd15 row")
    ap.add_argument("--sd15-teacher50-repeats", type=int, help="repetitions of sd15's 50-step row (default --repeats)")
    ap.add_argument("--sd15-lora-repeats", type=int, help="repetitions of sd15's LoRA row (default --repeats)")
    ap.add_argument("--tiny-repeats", type=int, default=10, help="timed repetitions of each tiny-sd row")
    ap.add_argument("--warmup-steps", type=int, default=1, help="steps of each warm-up call (one per call shape)")
    ap.add_argument("--lora-row", default="tiny-sd", help="pipelines that get the unfused-LoRA row ('' for none)")
    ap.add_argument("--render", action="store_true", help="only rewrite speed.md and speed.png from speed.json")
    args = ap.parse_args(argv)
    if args.render:
        results = json.loads((args.out / "speed.json").read_text())
        results["plot"] = plot(args.out, results)
        write_report(args.out, results, results["command"])
        return
    names = [n for n in args.pipelines.split(",") if n]
    unknown = set(names) - set(PRESETS) | set(n for n in args.lora_row.split(",") if n) - set(PRESETS)
    counts = (args.repeats, args.tiny_repeats, args.warmup_steps, args.sd15_teacher50_repeats, args.sd15_lora_repeats)
    if unknown or any(c is not None and c < 1 for c in counts):
        ap.error(f"unknown pipelines {sorted(unknown)} or a count below 1")
    import torch

    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} nice -n {os.nice(0)} "
               f".venv/bin/python bench/sampling_speed.py {shlex.join(argv if argv is not None else sys.argv[1:])}")
    results = {"command": command, "machine": machine_note(), "threads": torch.get_num_threads(),
               "load_average_start": os.getloadavg()[0], "rows": [asdict(r) for r in ROWS], "benches": {}}
    for name in names:
        bench = PRESETS[name]
        t0 = time.perf_counter()
        pipe = load(name)
        load_s = time.perf_counter() - t0
        lora = name in args.lora_row.split(",")
        sampler = Sampler(pipe, bench, lora)
        rows = list(ROWS) + ([LORA_ROW] if lora else [])
        base = args.tiny_repeats if name == "tiny-sd" else args.repeats
        repeats = {r.name: base for r in rows}
        if name == "sd15" and args.sd15_teacher50_repeats:
            repeats[REFERENCE] = args.sd15_teacher50_repeats
        if name == "sd15" and lora and args.sd15_lora_repeats:
            repeats[LORA_ROW.name] = args.sd15_lora_repeats
        for batch in bench.batches:
            print(f"{bench.name}: batch {batch}, {sampler.size} px", flush=True)
            raw = measure(sampler, rows, batch, repeats, args.warmup_steps)
            summary = {n: summarize(reps, batch) for n, reps in raw["rows"].items()}
            summary_cpu = {n: summarize(reps, batch, "cpu") for n, reps in raw["rows"].items()}
            results["benches"][f"{bench.name} b{batch}"] = {
                "pipeline": name, "size": sampler.size, "batch": batch, "guidance": bench.guidance,
                "student_recipe": dict(sampler.schedulers["student"].config),
                "teacher_scheduler": dict(sampler.schedulers["teacher"].config), "load_s": load_s,
                "execution_device_s": execution_device_seconds(pipe), "summary": summary,
                "compare": {n: compare(s, summary[REFERENCE]) for n, s in summary.items()},
                "summary_cpu": summary_cpu,
                "compare_cpu": {n: compare(s, summary_cpu[REFERENCE]) for n, s in summary_cpu.items()},
                **raw}
            (args.out / "speed.json").write_text(json.dumps(results, indent=1, default=str))
        del sampler, pipe
    results["plot"] = plot(args.out, results)
    results["wall_s"] = time.perf_counter() - t_start
    results["load_average_end"] = os.getloadavg()[0]
    (args.out / "speed.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(args.out, results, command)
    print((args.out / "speed.md").read_text())
    print(f"wall {results['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
