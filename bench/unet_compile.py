"""The embedded teacher's UNet with configs/tiny/lcm_lora.yaml's adapter (rank 16, its targets): forward +
backward at batch 32 (8x8 latents, grad reaching only the LoRA factors), eager against ``torch.compile``
(static shapes, ``--mode``), in one process, alternating three times (issue 13, REFERENCE_LCM.md).

    OMP_NUM_THREADS=1 .venv/bin/python bench/unet_compile.py --mode default
    OMP_NUM_THREADS=1 .venv/bin/python bench/unet_compile.py --mode max-autotune-no-cudagraphs

Prints the compile time (first call) and, per round, the median ms of eager and compiled calls.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, n: int = 10) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2] * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="default", choices=("default", "max-autotune-no-cudagraphs"))
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()

    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from fewstep.distill.run_config import load_config

    student = load_config(REPO / "configs/tiny/lcm_lora.yaml", []).student
    unet = UNet2DConditionModel.from_pretrained(REPO / "assets/tiny-sd/unet").requires_grad_(False)
    unet.add_adapter(LoraConfig(r=student.lora_rank, lora_alpha=student.lora_alpha,
                                target_modules=student.lora_targets))
    g = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    x = torch.randn(args.batch, unet.config.in_channels, size, size, generator=g)
    t = torch.randint(0, 1000, (args.batch,), generator=g)
    text = torch.randn(args.batch, 16, unet.config.cross_attention_dim, generator=g)

    def step(net):
        net(x, t, encoder_hidden_states=text).sample.square().mean().backward()

    compiled = torch.compile(unet, mode=None if args.mode == "default" else args.mode, dynamic=False)
    start = time.perf_counter()
    step(compiled)
    print(f"{args.mode}: compile + first call {time.perf_counter() - start:.0f} s", flush=True)
    for _ in range(3):
        eager, fast = median_ms(lambda: step(unet)), median_ms(lambda: step(compiled))
        print(f"{args.mode}: eager {eager:.1f} ms, compiled {fast:.1f} ms, ratio {eager / fast:.2f}x", flush=True)


if __name__ == "__main__":
    main()
