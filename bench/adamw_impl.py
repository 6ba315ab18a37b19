"""AdamW implementations (``train.adamw_impl``) on the shipped tiny configs: the optimizer step alone and
whole training iterations, fused against torch's CPU default (for-loop), in one process, interleaved.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/adamw_impl.py --out bench/results/adamw-impl

For each config a real Trainer (``score_cost.quiet_trainer``; no grids, no checkpoints) is built, with
glibc's thresholds raised as ``fewstep train`` does. Then:

* **alone**: for each phase, its trained parameters with fixed random gradients, and one AdamW of each
  implementation over copies of them; their steps are timed in turn, ``--reps`` rounds, median per
  implementation (CPU milliseconds). Per iteration = per optimizer step x the phase's steps per
  iteration (``repeats / every``).
* **iterations**: after ``--warmup`` iterations, the run's own optimizers switch implementation between
  consecutive iterations (fused, for-loop, fused, ...; the group flags ``fused`` / ``foreach``, which
  ``AdamW.step`` reads at every call; the states are the same tensors for both on a CPU). Each adjacent
  pair gives one difference, for-loop - fused, in CPU seconds; reported as the median iteration of
  each and the mean difference with a 95 % t-interval over pairs.

Results: ``adamw.json`` and ``adamw.md`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
sys.path.insert(0, str(ROOT / "bench"))
from score_cost import quiet_trainer  # noqa: E402
from reference_seeds import t_interval  # noqa: E402
from step_bound import CONFIGS, SETUP  # noqa: E402

from fewstep.distill.phases import adamw_flags  # noqa: E402

IMPLS = ("fused", "for-loop", "foreach")  # train.adamw_impl's forced choices


def group_flags(impl: str) -> dict:
    """A param group's ``fused`` / ``foreach`` entries as AdamW sets them when built for ``impl``."""
    return {"fused": None, "foreach": None, **adamw_flags([], impl)}


def optimizer_alone(params: list[torch.nn.Parameter], reps: int) -> dict[str, float]:
    """CPU ms per AdamW step of each implementation over copies of ``params`` with fixed gradients."""
    g = torch.Generator().manual_seed(0)
    opts = {}
    for name in IMPLS:
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for c in copies:
            c.grad = torch.randn(c.shape, generator=g, dtype=c.dtype) * 1e-3
        opts[name] = torch.optim.AdamW(copies, lr=1e-4, **adamw_flags(copies, name))
        opts[name].step()  # states made
    times = {name: [] for name in opts}
    for _ in range(reps):
        for name, opt in opts.items():
            t = time.process_time()
            opt.step()
            times[name].append((time.process_time() - t) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def switch(trainer, impl: str) -> None:
    for opt in trainer.opts.values():
        for group in opt.optimizer.param_groups:
            group.update(group_flags(impl))


def iterations(trainer, warmup: int, pairs: int) -> dict:
    """Whole iterations, alternating fused and for-loop: CPU s from one iteration's first phase step to
    the next one's (so EMA and the loop's own work are inside)."""
    trainer.cfg.train.steps = warmup + 2 * pairs + 1
    inner, marks, state = trainer._phase_step, [], {"step": None, "t": None, "impl": None}

    def phase_step(plan, batches, handover):
        if trainer.step != state["step"]:  # the first phase step of a new iteration
            now = time.process_time()
            if state["impl"] is not None:
                marks.append((state["impl"], now - state["t"]))
            state["impl"] = None if trainer.step < warmup else ("fused", "for-loop")[(trainer.step - warmup) % 2]
            switch(trainer, state["impl"] or "fused")
            state["step"], state["t"] = trainer.step, time.process_time()
        return inner(plan, batches, handover)

    trainer._phase_step = phase_step
    trainer.train()
    times = {impl: [s for i, s in marks if i == impl] for impl in ("fused", "for-loop")}
    n = min(len(times["fused"]), len(times["for-loop"]))
    mean, lo, hi = t_interval([b - a for a, b in zip(times["fused"][:n], times["for-loop"][:n])])
    return {"pairs": n, "fused_s": statistics.median(times["fused"]), "for_loop_s": statistics.median(times["for-loop"]),
            "diff_s": mean, "diff_ci": [lo, hi], "times": times}


def measure(config: str, args) -> dict:
    from fewstep.distill.run_config import load_config
    from fewstep.pipelines.teacher import load_teacher

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(TINY / config, [f"output_dir={tmp}", "train.validation_every=0", "train.checkpoint_every=0",
                                          "eval.enabled=false", "train.log_every=1000000", *SETUP.get(config, [])])
        trainer = quiet_trainer(cfg, load_teacher(cfg.model))
        alone = {}
        for plan in trainer.plans:
            ms = optimizer_alone(trainer.params[plan.name], args.reps)
            per_iter = plan.repeats / plan.every
            alone[plan.name] = {"tensors": len(trainer.params[plan.name]),
                                "numel": sum(p.numel() for p in trainer.params[plan.name]),
                                "steps_per_iteration": per_iter, "ms": ms,
                                "ms_per_iteration": {k: v * per_iter for k, v in ms.items()}}
        its = iterations(trainer, args.warmup, args.pairs)
    return {"config": config, "method": CONFIGS.get(config, config), "alone": alone, "iterations": its}


def report(results: dict) -> str:
    lines = ["| method (config) | phase: tensors, AdamW steps / iteration | AdamW step alone, CPU ms: for-loop / foreach / "
             "fused | saved per iteration, ms (alone) | iteration, CPU s: for-loop / fused (medians) | for-loop - fused, "
             "ms per iteration [95 %] | of the iteration |",
             "|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        a, it = r["alone"], r["iterations"]
        phases = "; ".join(f"{n}: {p['tensors']}, {p['steps_per_iteration']:g}" for n, p in a.items())
        alone = "; ".join(f"{p['ms']['for-loop']:.1f} / {p['ms']['foreach']:.1f} / {p['ms']['fused']:.1f}" for p in a.values())
        saved = sum(p["ms_per_iteration"]["for-loop"] - p["ms_per_iteration"]["fused"] for p in a.values())
        lo, hi = it["diff_ci"]
        lines.append(f"| {r['method']} (`{r['config']}`) | {phases} | {alone} | {saved:.0f} | {it['for_loop_s']:.3f} / "
                     f"{it['fused_s']:.3f} | {it['diff_s'] * 1e3:+.0f} [{lo * 1e3:+.0f}, {hi * 1e3:+.0f}] "
                     f"({it['pairs']} pairs) | {it['diff_s'] / it['for_loop_s'] * 100:.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from fewstep.distill.memory import retain_freed_memory

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adamw-impl")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=12)
    args = ap.parse_args(argv)
    for name in ("reps", "pairs"):
        if getattr(args, name) < 2:
            ap.error(f"--{name}: must be >= 2")
    torch.set_num_threads(1)
    retain_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    t0, runs = time.time(), []
    for config in args.configs.split(","):
        runs.append(r := measure(config, args))
        print(f"{config}: {r['iterations']['diff_s'] * 1e3:+.0f} ms per iteration for-loop - fused", flush=True)
    command = "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python bench/adamw_impl.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    results = {"command": command.strip(), "seconds": round(time.time() - t0), "torch": torch.__version__,
               "args": {k: v for k, v in vars(args).items() if k != "out"}, "runs": runs}
    (args.out / "adamw.json").write_text(json.dumps(results, indent=1) + "\n")
    md = f"# AdamW implementations on the tiny configs (CPU, one thread)\n\n`{results['command']}`\n\n{report(results)}\n"
    (args.out / "adamw.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
