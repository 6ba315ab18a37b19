"""Run under torchrun by tests/test_distributed.py: the two-phase toy method (tests/phase_toy.py) in
DDP, once with its two adapters on one UNet (needs find_unused_parameters) and once with a full
student beside a fake-score adapter (separate modules, plain DDP). Each rank saves what it trained.

    torchrun --nproc_per_node 2 -m tests.phase_ddp OUT_DIR

With ``--equal METHOD KIND BATCH`` instead: METHOD (``data-only``, a one-phase method whose loss is
a function of the data alone, or a registered method such as ``lcm`` or ``dmd``) trains a KIND student
for a few steps at per-process batch BATCH; each rank saves its trained weights (and, data-only, the
captions it drew), so a 2 x B run can be compared with a 1 x 2B run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import torch.nn.functional as F

from fewstep.distill.config import ConfigError, MethodSpec
from fewstep.distill.methods.base import LossOutput
from fewstep.distill.phases import Phase
from fewstep.distill.loop import Trainer
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict
from tests.phase_toy import T_MID, ToyConfig, ToyTwoPhase


def trainer(out: Path, kind: str, **train) -> Trainer:
    raw = run_dict(out / kind, steps=3, checkpoint_every=0, **train)
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    cfg = parse_config(raw)
    cfg.method = MethodSpec("toy", ToyConfig(every=2, repeats=2))
    return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0), method=ToyTwoPhase(cfg.method.config, cfg.student))


class DataOnly(ToyTwoPhase):
    """One phase; the loss depends on the data only (pixels resized to latents, fixed t, no noise), so a
    step's gradient is the mean over the global batch however it is split over processes."""

    def phases(self):
        return (Phase("student", ("student",)),)

    def build(self, pipe):
        from fewstep.distill.students import build_students
        return build_students(pipe, self.student_config)

    def loss(self, models, batch, phase, step):
        self.calls.append(list(batch["captions"]))
        x = F.interpolate(batch["pixels"].to(models.device), size=(8, 8), mode="area")
        latents = torch.cat([x, x.mean(1, keepdim=True)], 1)
        cond = models.encode_text(batch["captions"])
        t = torch.full((len(latents),), T_MID, device=latents.device)
        alpha, _ = models["student"].alpha_sigma(t)
        pred = models["student"](alpha * latents, t, cond)
        return LossOutput(torch.mean((pred.x0 - latents) ** 2))


def equal(out: Path, method_name: str, kind: str, batch: int) -> None:
    """Train ``method_name`` ("data-only": :class:`DataOnly`; else a registered method, whose noise,
    timesteps and guidance scales come from distill.rng) for 3 steps at per-process batch ``batch``."""
    raw = run_dict(out / kind, method="denoise" if method_name == "data-only" else method_name, steps=3,
                   checkpoint_every=0, batch_size=batch, max_grad_norm=0.0)
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    if method_name == "dmd":
        raw["method"].update(fake_steps_per_generator=2)
    cfg = parse_config(raw)
    method = None
    if method_name == "data-only":
        cfg.method = MethodSpec("toy", ToyConfig())
        method = DataOnly(cfg.method.config, cfg.student)
    t = Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0), method=method)
    init = [p.detach().cpu().clone() for ps in t.params.values() for p in ps]
    t.train()
    rank = t.acc.process_index
    params = [p.detach().cpu() for ps in t.params.values() for p in ps]
    torch.save({"captions": getattr(method, "calls", None), "params": params, "init": init},
               out / f"equal-{method_name}-{kind}-{t.acc.num_processes}x{batch}-rank{rank}.pt")


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
    if len(sys.argv) > 2 and sys.argv[2] == "--equal":
        equal(Path(sys.argv[1]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main(Path(sys.argv[1]))
