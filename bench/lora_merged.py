"""A LoRA UNet's forward where the adapter takes no gradient (an LCM-LoRA target forward): peft's own
layers (base + B A branch) against ``distill/lora_merged.py`` (one layer with W + s B A per call, where
that is fewer multiply-adds), in one process, alternating rounds; one thread.

    OMP_NUM_THREADS=1 .venv/bin/python bench/lora_merged.py --out bench/results/lora-merged
    OMP_NUM_THREADS=1 .venv/bin/python bench/lora_merged.py --skip-tiny --sd15-px 512 --sd15-batches 1 --rounds 3 \
        --name sd15-512 --out bench/results/lora-merged

Cases: the embedded teacher with configs/tiny/lcm_lora.yaml's adapter (rank 16) at the training batch 32,
eager and compiled (inductor, static shapes; the first call compiles), and SD1.5's UNet (random weights,
bench/sd15_arch.py) with configs/sd15/lcm_lora.yaml's adapter (rank 64) at 256 px, batch 1 and 2, eager.
Writes ``lora_merged.json`` and ``lora_merged.md``: per case the median ms of each form per round, the
ratio, how many layers merged, and the largest output difference.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def lora_unet(unet, config: Path):
    from fewstep.distill.run_config import load_config
    from fewstep.distill.students import add_lora

    unet = add_lora(unet, load_config(config, []).student)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # peft starts B at zero: a trained-looking adapter instead
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=g)
    return unet


def set_merged(unet, on: bool) -> int:
    """Switch the merged path on (``lora_merged.install``) or off (peft's class forward); layers merged."""
    from fewstep.distill import lora_merged

    for m in unet.modules():
        if m.__dict__.get(lora_merged._MARK):
            del m.__dict__["forward"], m.__dict__[lora_merged._MARK]
    return lora_merged.install(unet) if on else 0


def count_merging(unet, args) -> int:
    from fewstep.distill import lora_merged

    hits = []
    orig = lora_merged.merge_is_cheaper
    lora_merged.merge_is_cheaper = lambda *a: hits.append(orig(*a)) or hits[-1]
    try:
        with torch.no_grad():
            unet(*args)
    finally:
        lora_merged.merge_is_cheaper = orig
    return sum(hits)


def inputs(unet, batch: int, latent: int, tokens: int):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, unet.config.in_channels, latent, latent, generator=g),
            torch.randint(0, 1000, (batch,), generator=g),
            torch.randn(batch, tokens, unet.config.cross_attention_dim, generator=g))


def time_case(unet, args, compiled: bool, rounds: int, calls: int) -> dict:
    """``unet`` (merged path installed) against a copy of it running peft's forward: two modules, so each
    compiled one traces its own form."""
    nets = {"peft": copy.deepcopy(unet), "merged": unet}
    set_merged(nets["peft"], False)
    runs, first, outs = {}, {}, {}
    for form, net in nets.items():
        runs[form] = torch.compile(net, dynamic=False) if compiled else net
        start = time.perf_counter()
        with torch.no_grad():
            outs[form] = runs[form](*args).sample
        first[form] = time.perf_counter() - start
    merged_layers = count_merging(unet, args)
    ms = {"peft": [], "merged": []}
    for _ in range(rounds):
        for form, net in runs.items():
            times = []
            with torch.no_grad():
                for _ in range(calls):
                    t = time.perf_counter()
                    net(*args)
                    times.append(time.perf_counter() - t)
            ms[form].append(statistics.median(times) * 1e3)
    ratios = [p / m for p, m in zip(ms["peft"], ms["merged"])]
    return {"peft_ms": ms["peft"], "merged_ms": ms["merged"], "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "merged_layers": merged_layers,
            "lora_layers": sum(1 for m in unet.modules() if getattr(m, "lora_A", None)),
            "max_abs_diff": (outs["merged"] - outs["peft"]).abs().max().item(),
            "output_abs_max": outs["peft"].abs().max().item(), "first_call_s": first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--skip-sd15", action="store_true")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--skip-tiny", action="store_true")
    p.add_argument("--sd15-px", type=int, default=256, help="SD1.5 rows' resolution (latents px / 8)")
    p.add_argument("--sd15-batches", default="1,2")
    p.add_argument("--name", default="lora_merged", help="results file stem")
    args = p.parse_args()
    torch.manual_seed(0)
    from diffusers import UNet2DConditionModel

    results = {}
    if not args.skip_tiny:
        tiny = lora_unet(UNet2DConditionModel.from_pretrained(REPO / "assets/tiny-sd/unet"),
                         REPO / "configs/tiny/lcm_lora.yaml")
        x = inputs(tiny, 32, tiny.config.sample_size, 16)
        for compiled in ([False] if args.skip_compile else [False, True]):
            name = f"embedded, batch 32, {'compiled' if compiled else 'eager'}"
            results[name] = time_case(tiny, x, compiled, args.rounds, 12)
            print(name, json.dumps(results[name]), flush=True)
        del tiny
    if not args.skip_sd15:
        from sd15_arch import sd15_unet

        sd = lora_unet(sd15_unet(), REPO / "configs/sd15/lcm_lora.yaml")
        for batch in map(int, args.sd15_batches.split(",")):
            name = f"SD1.5 architecture, {args.sd15_px} px, batch {batch}, eager"
            results[name] = time_case(sd, inputs(sd, batch, args.sd15_px // 8, 77), False, args.rounds, 3)
            print(name, json.dumps(results[name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    lines = ["# A LoRA UNet's no-gradient forward: peft's layers against merged layers", "",
             f"`OMP_NUM_THREADS=1 .venv/bin/python bench/lora_merged.py {' '.join(sys.argv[1:])}`", "",
             "| case | peft ms (median of rounds) | merged ms | peft / merged: median [min, max] | layers merged | max abs diff (of max abs output) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {statistics.median(r['peft_ms']):.1f} | {statistics.median(r['merged_ms']):.1f} | "
                     f"{r['ratio_median']:.2f}x [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] | "
                     f"{r['merged_layers']} / {r['lora_layers']} | {r['max_abs_diff']:.1e} ({r['output_abs_max']:.1f}) |")
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
