"""``train.channels_last``: the run's networks in channels_last memory format take the same steps as the
default layout (to float32 rounding), resume bit for bit, and export files plain diffusers loads."""
from __future__ import annotations

import pytest
import torch

from fewstep.distill.config import ConfigError
from fewstep.distill.loop import Trainer, list_checkpoints
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.export import export_run
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict

NHWC = torch.channels_last


def trainer(tmp_path, steps, kind="lora", **train):
    raw = run_dict(tmp_path, method="lcm", steps=steps, checkpoint_every=2, **train)
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    raw["method"].update({"num_ddim_timesteps": 10})
    cfg = parse_config(raw)
    return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))


def convs(t: Trainer) -> list[torch.Tensor]:
    """The 3x3 (and larger) conv weights of the run's networks, whose layout channels_last changes."""
    return [p for m in t.models.modules.values() for p in m.parameters() if p.dim() == 4 and p.shape[-1] > 1]


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_channels_last_run_is_nhwc_and_takes_the_default_runs_steps(tmp_path, kind):
    default = trainer(tmp_path / "a", 3, kind)  # each built just before it trains: a Trainer seeds when built
    assert all(p.is_contiguous() for p in convs(default))
    start = [p.detach().clone() for p in default.params["student"]]
    default.train()
    nhwc = trainer(tmp_path / "b", 3, kind, channels_last=True)
    assert convs(nhwc) and all(p.is_contiguous(memory_format=NHWC) and not p.is_contiguous() for p in convs(nhwc))
    nhwc.train()
    # the same arithmetic in another order: float32 rounding, which Adam magnifies in single weights whose
    # gradient is near 0 (up to 2e-4 after 3 steps here; as between AdamW implementations,
    # tests/test_adamw_impl.py). Over all trained weights the updates agree within 2 %, where a wrong layout
    # or a dropped weight would change them wholesale.
    step_a = torch.cat([(a.detach() - s0).flatten() for a, s0 in zip(nhwc.params["student"], start)])
    step_b = torch.cat([(b.detach() - s0).flatten() for b, s0 in zip(default.params["student"], start)])
    assert step_b.norm() > 1e-2
    assert (step_a - step_b).norm() < 0.02 * step_b.norm()
    assert all(p.is_contiguous(memory_format=NHWC) for p in convs(nhwc))  # the optimizer kept the layout


def test_channels_last_resume_is_bitwise_and_exports_load(tmp_path):
    from diffusers import StableDiffusionPipeline

    first = trainer(tmp_path / "r", 2, channels_last=True)
    first.train()
    (_, path), = list_checkpoints(first.run_dir)
    resumed = trainer(tmp_path / "r", 4, channels_last=True)
    resumed.load_checkpoint(path)
    assert all(p.is_contiguous(memory_format=NHWC) for p in convs(resumed))
    resumed.train()
    whole = trainer(tmp_path / "w", 4, channels_last=True)
    whole.train()
    for a, b in zip(resumed.params["student"], whole.params["student"]):
        assert torch.equal(a, b)
    out = export_run(whole.method, whole.models, whole.cfg, tmp_path / "export", grid_prompts=["a red circle"])
    base = build_tiny_pipeline(whole.cfg.model.tiny, seed=0)
    base.load_lora_weights(str(out))
    loaded = {n.replace(".default_0.", ".default."): p for n, p in base.unet.named_parameters() if "lora_" in n}
    trained = dict(whole.models["student"].unet.named_parameters())
    assert loaded and all(torch.equal(p, trained[n]) for n, p in loaded.items())
    assert isinstance(base, StableDiffusionPipeline)


def test_channels_last_takes_a_boolean(tmp_path):
    with pytest.raises(ConfigError, match="train.channels_last"):
        parse_config(run_dict(tmp_path, channels_last="yes please"))
