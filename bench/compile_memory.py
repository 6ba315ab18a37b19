"""Where a ``train.compile`` LCM-LoRA process's extra memory sits: resident and anonymous memory of one process
(``/proc/self/status``) at each stage of a short run, eager or compiled, with glibc's thresholds raised as
``fewstep train`` does.

    OMP_NUM_THREADS=1 python bench/compile_memory.py --compile --out bench/results/compile-memory/compiled.json
    OMP_NUM_THREADS=1 python bench/compile_memory.py --out bench/results/compile-memory/eager.json

Stages: after the Trainer is built; after step 0 (with ``--compile``, the three graphs are compiled there);
the peak of steps 1..N, the kernel's peak mark reset after step 0 (``5`` to ``/proc/self/clear_refs``);
then after ``torch._dynamo.reset()``, ``gc.collect()`` and glibc ``malloc_trim(0)``, which return what the
steps and the compiled graphs held and leave what the process keeps regardless (code, loaded kernels,
the models). Uses the cached latents of ``--cache`` (``fewstep cache``, as in bench/REFERENCE_LCM.md).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status() -> dict[str, int]:
    """VmHWM, VmRSS and RssAnon of this process, MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon"):
            out[key] = int(value.split()[0]) // 1024
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "cache-tiny-19200")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps: must be >= 1")
    if not args.cache.is_dir():
        ap.error(f"--cache: {args.cache} not found (make it with fewstep cache, bench/REFERENCE_LCM.md)")
    from fewstep.distill.memory import retain_freed_memory

    retain_freed_memory()
    import torch

    from fewstep.distill.loop import Trainer, preflight
    from fewstep.distill.run_config import load_config
    from fewstep.pipelines.cli import _load_pipeline_for

    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs" / "tiny" / "lcm_lora.yaml", [
        f"train.compile={str(args.compile).lower()}", "data.source=cache", f"data.path={args.cache}",
        "output_dir=/tmp/fewstep-compile-memory", "train.validation_every=0", "train.checkpoint_every=0",
        "eval.enabled=false", f"train.steps={args.steps + 1}"])
    stages = {"imported": status()}
    trainer = Trainer(cfg, _load_pipeline_for(cfg), checked=preflight(cfg))
    stages["built"] = status()
    batches, plan = iter(trainer.loader), trainer.plans[0]
    trainer._phase_step(plan, batches, {})
    stages["after step 0"] = status()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    for _ in range(args.steps):
        trainer._phase_step(plan, batches, {})
    stages[f"steps 1-{args.steps}"] = status()
    torch._dynamo.reset()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    stages["after dynamo reset, gc, trim"] = status()
    result = {"compile": args.compile, "steps": args.steps, "torch": torch.__version__, "stages_mib": stages}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, s in stages.items():
        print(f"{name:32s} " + "  ".join(f"{k} {v} MiB" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
