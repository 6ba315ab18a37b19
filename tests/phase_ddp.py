"""Run under torchrun by tests/test_distributed.py: the two-phase toy method (tests/phase_toy.py) in
DDP, once with its two adapters on one UNet (needs find_unused_parameters) and once with a full
student beside a fake-score adapter (separate modules, plain DDP). Each rank saves what it trained.

    torchrun --nproc_per_node 2 -m tests.phase_ddp OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fewstep.distill.config import ConfigError, MethodSpec
from fewstep.distill.loop import Trainer
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict
from tests.phase_toy import ToyConfig, ToyTwoPhase


def trainer(out: Path, kind: str, **train) -> Trainer:
    raw = run_dict(out / kind, steps=3, checkpoint_every=0, **train)
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    cfg = parse_config(raw)
    cfg.method = MethodSpec("toy", ToyConfig(every=2, repeats=2))
    return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0), method=ToyTwoPhase(cfg.method.config, cfg.student))


def main(out: Path) -> None:
    result = {}
    try:  # adapters of one module trained by two phases: refused without find_unused_parameters
        trainer(out, "lora")
        result["refused"] = None
    except ConfigError as e:
        result["refused"] = str(e)
    for kind, flags in (("lora", {"ddp_find_unused_parameters": True}), ("full", {})):
        t = trainer(out, kind, **flags)
        t.train()
        rank = t.acc.process_index
        torch.save({ph: [p.detach().cpu() for p in ps] for ph, ps in t.params.items()},
                   out / f"{kind}-rank{rank}.pt")
        result[kind] = t.phase_steps
    if rank == 0:
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
