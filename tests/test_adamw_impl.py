"""``train.adamw_impl``: which of torch's AdamW implementations the loop builds (fused by default where
torch has it), that they take the same steps, and that a resumed run keeps its own implementation
rather than the checkpoint's."""
from __future__ import annotations

import copy

import pytest
import torch

from fewstep.distill.config import ConfigError
from fewstep.distill.loop import Trainer, list_checkpoints
from fewstep.distill.phases import adamw_flags, keep_implementation
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict


def params(device="cpu"):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*s, generator=g).to(device)) for s in [(16, 8), (8,), (3, 4, 5)]]


def test_auto_is_fused_for_float_tensors_on_cpu_and_torch_default_elsewhere():
    assert adamw_flags(params(), "auto") == {"fused": True}
    assert adamw_flags(params("meta"), "auto") == {}
    assert adamw_flags(params() + [torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)],
                       "auto") == {}
    assert adamw_flags(params(), "for-loop") == {"foreach": False}
    assert adamw_flags(params(), "foreach") == {"foreach": True}
    assert adamw_flags(params("meta"), "fused") == {"fused": True}  # asked for: torch says why not


def run_steps(opt, ps, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_every_implementation_takes_the_same_steps():
    results = {}
    for impl in ("fused", "foreach", "for-loop"):
        ps = params()
        run_steps(torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, **adamw_flags(ps, impl)), ps, 5)
        results[impl] = ps
    moved = (results["for-loop"][0] - params()[0]).abs().max()
    assert moved > 1e-2  # the steps did something
    for impl in ("fused", "foreach"):
        for a, b in zip(results[impl], results["for-loop"]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_loaded_state_keeps_the_implementation_the_optimizer_was_built_with():
    ps = params()
    loop = torch.optim.AdamW(ps, lr=1e-2, foreach=False)
    run_steps(loop, ps, 2)
    fused_ps = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    fused = torch.optim.AdamW(fused_ps, lr=1e-2, fused=True)
    fused.load_state_dict(copy.deepcopy(loop.state_dict()))  # as from a file: no shared tensors
    assert not fused.param_groups[0]["fused"]  # torch takes the saved group's flags
    keep_implementation(fused)
    assert fused.param_groups[0]["fused"] and fused.param_groups[0]["foreach"] is None
    assert all(fused.state[p]["step"].dtype == torch.float32 for p in fused_ps)
    run_steps(fused, fused_ps, 3, seed=2)
    run_steps(loop, ps, 3, seed=2)
    for a, b in zip(fused_ps, ps):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def trainer(tmp_path, steps, **train):
    raw = run_dict(tmp_path, method="lcm", steps=steps, checkpoint_every=0, **train)
    raw["student"] = {"kind": "lora", "lora_rank": 4, "lora_alpha": 4}
    cfg = parse_config(raw)
    return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))


def flags(t: Trainer) -> tuple:
    group = t.opts["student"].optimizer.param_groups[0]
    return group["fused"], group["foreach"]


def test_runs_build_the_configured_implementation_and_a_resume_keeps_it(tmp_path):
    assert flags(trainer(tmp_path / "auto", 1)) == (True, None)
    first = trainer(tmp_path / "b", 2, adamw_impl="for-loop")
    assert flags(first) == (None, False)
    first.train()
    (_, path), = list_checkpoints(first.run_dir)
    resumed = trainer(tmp_path / "b", 4)  # resumed with the default: fused, though the checkpoint's was not
    resumed.load_checkpoint(path)
    assert flags(resumed) == (True, None)
    resumed.train()
    whole = trainer(tmp_path / "c", 4, adamw_impl="for-loop")
    whole.train()
    # The same Adam steps, to rounding: where a gradient is near 0, m / (sqrt(v) + eps) magnifies the
    # implementations' last-bit differences (4 whole steps fused against for-loop: up to 1.4e-4 here),
    # but a lost moment or step count would move a weight by about lr (1e-3) per step.
    for a, b in zip(resumed.params["student"], whole.params["student"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0.2 * resumed.cfg.train.lr)


def test_an_unknown_implementation_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.adamw_impl"):
        parse_config(run_dict(tmp_path, adamw_impl="fastest"))
