"""channels_last memory format for the UNet (issue 13's candidate list): the embedded teacher's UNet with
configs/tiny/lcm_lora.yaml's adapter, default (NCHW) against channels_last weights and inputs, in one
process, alternating rounds; the LCM-LoRA step's two big passes: the teacher's CFG forward (adapters off,
no_grad, batch 64) and the student's forward + backward (batch 32). One thread.

    OMP_NUM_THREADS=1 .venv/bin/python bench/channels_last.py --out bench/results/channels-last
    OMP_NUM_THREADS=1 .venv/bin/python bench/channels_last.py --compile --out bench/results/channels-last

Writes ``<eager|compiled>.json``: per pass and format the median ms of each round, and the ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def build(fmt: torch.memory_format):
    from diffusers import UNet2DConditionModel

    from fewstep.distill.run_config import load_config
    from fewstep.distill.students import add_lora

    torch.manual_seed(0)
    student = load_config(REPO / "configs/tiny/lcm_lora.yaml", []).student
    unet = add_lora(UNet2DConditionModel.from_pretrained(REPO / "assets/tiny-sd/unet"), student)
    return unet.to(memory_format=fmt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    formats = {"default": torch.contiguous_format, "channels_last": torch.channels_last}
    g = torch.Generator().manual_seed(0)
    shapes = {64: None, 32: None}
    for b in shapes:
        shapes[b] = (torch.randn(b, 4, 8, 8, generator=g), torch.randint(0, 1000, (b,), generator=g),
                     torch.randn(b, 16, 64, generator=g))
    nets, calls = {}, {}
    for name, fmt in formats.items():
        unet = build(fmt)
        net = torch.compile(unet, dynamic=False) if args.compile else unet
        x64 = (shapes[64][0].contiguous(memory_format=fmt), *shapes[64][1:])
        x32 = (shapes[32][0].contiguous(memory_format=fmt), *shapes[32][1:])

        def teacher(unet=unet, net=net, x=x64):
            unet.disable_adapters()
            try:
                with torch.no_grad():
                    net(*x)
            finally:
                unet.enable_adapters()

        def student(net=net, x=x32):
            net(*x).sample.square().mean().backward()

        nets[name] = unet
        calls[name] = {"teacher fwd [64]": teacher, "student fwd+bwd [32]": student}
        for fn in calls[name].values():  # compile (or warm up) both graphs
            fn()
            fn()
    ms = {f: {k: [] for k in calls[f]} for f in formats}
    for _ in range(args.rounds):
        for f in formats:
            for k, fn in calls[f].items():
                times = []
                for _ in range(8):
                    t = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t)
                ms[f][k].append(statistics.median(times) * 1e3)
    result = {"compile": args.compile, "rounds": args.rounds, "ms": ms,
              "default_over_channels_last": {k: [a / b for a, b in zip(ms["default"][k], ms["channels_last"][k])]
                                             for k in ms["default"]}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{'compiled' if args.compile else 'eager'}.json").write_text(json.dumps(result, indent=1))
    for k, r in result["default_over_channels_last"].items():
        print(f"{'compiled' if args.compile else 'eager'} {k}: default {statistics.median(ms['default'][k]):.1f} ms, "
              f"channels_last {statistics.median(ms['channels_last'][k]):.1f} ms, default / channels_last "
              f"{statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}]")


if __name__ == "__main__":
    main()
