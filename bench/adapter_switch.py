"""What switching a LoRA UNet to its base weights costs per call: the LoRA teacher's view (issue 13).

A LoRA student's teacher is its own UNet with the adapters off, called once per LCM-LoRA or TSCD
step through ``distill.modelset.adapters_as``. Timed here, on the embedded teacher's UNet with
configs/tiny/lcm_lora.yaml's adapter (rank 16, its 128 target modules), without any forward:

* ``fewstep``: ``adapters_as(unet, View(base=True))`` as the loop runs it (peft's per-layer
  ``_disable_adapters`` switch on a cached list of tuner layers);
* ``diffusers``: what it did before 2026-11-30, diffusers' ``disable_adapters()`` / ``enable_adapters()``
  around the call with every adapter weight's ``requires_grad`` put back after each (peft's
  ``enable_adapters`` rewrites them);
* ``module walk``: one ``unet.modules()`` scan for peft layers, what the cached list saves.

    OMP_NUM_THREADS=1 .venv/bin/python bench/adapter_switch.py --out bench/results/adapter-switch

Writes ``<out>/switch.json`` (ms per switch-on-and-back, median of ``--repeats`` blocks of ``--calls``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def diffusers_switch(unet) -> None:
    """The former base view: diffusers' switches, then the requires_grad flags put back."""
    lora = [p for n, p in unet.named_parameters() if ".lora_" in n]
    flags = [p.requires_grad for p in lora]
    unet.disable_adapters()
    for p, f in zip(lora, flags):
        p.requires_grad_(f)
    unet.enable_adapters()
    for p, f in zip(lora, flags):
        p.requires_grad_(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default="bench/results/adapter-switch")
    args = p.parse_args()

    from peft.tuners.tuners_utils import BaseTunerLayer

    from fewstep.distill.modelset import View, adapters_as
    from fewstep.distill.run_config import load_config
    from fewstep.distill.students import build_students
    from fewstep.pipelines.teacher import load_pipeline

    cfg = load_config(REPO / "configs/tiny/lcm_lora.yaml", [])
    pipe = load_pipeline(str(REPO / "assets/tiny-sd"))
    models = build_students(pipe, cfg.student)
    unet = models.modules["unet"].unet
    base = View("unet", base=True)

    def fewstep_switch():
        with adapters_as(unet, base):
            pass

    ways = {"fewstep": fewstep_switch, "diffusers": lambda: diffusers_switch(unet),
            "module walk": lambda: [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]}
    ms = {k: [] for k in ways}
    for _ in range(args.repeats):  # interleaved: the ways meet the same load
        for name, way in ways.items():
            way()
            t = time.perf_counter()
            for _ in range(args.calls):
                way()
            ms[name].append((time.perf_counter() - t) / args.calls * 1e3)
    flags = [p.requires_grad for n, p in unet.named_parameters() if ".lora_" in n]
    result = {"command": " ".join(["bench/adapter_switch.py", *sys.argv[1:]]), "torch": torch.__version__,
              "peft_layers": sum(isinstance(m, BaseTunerLayer) for m in unet.modules()),
              "adapter_weights_trainable_after": all(flags),
              "ms_per_switch": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in ms.items()}}
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "switch.json").write_text(json.dumps(result, indent=1) + "\n")
    for k, v in result["ms_per_switch"].items():
        print(f"{k:12s} {v['median']:7.2f} ms  [{v['min']:.2f}, {v['max']:.2f}]")


if __name__ == "__main__":
    main()
