"""student.init_lora: a LoRA student starts from an exported LoRA (e.g. a consistency student that
score distillation then refines); wrong shapes and missing files fail before training."""
from __future__ import annotations

import pytest
import torch

from fewstep.distill.config import ConfigError
from fewstep.distill.loop import Trainer, preflight
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict


def lora_run(tmp_path, method, name, **student):
    raw = run_dict(tmp_path, method=method, steps=2, checkpoint_every=0)
    raw["name"] = name
    raw["student"] = {"kind": "lora", "lora_rank": 4, "lora_alpha": 4, **student}
    return parse_config(raw)


def test_a_dmd_student_starts_from_an_exported_lcm_lora(tmp_path):
    from fewstep.pipelines.export import export_run

    cfg = lora_run(tmp_path, "lcm", "lcm")
    lcm = Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))
    lcm.train()
    out = export_run(lcm.method, lcm.models, cfg, tmp_path / "lcm-export")
    trained = {n: p.detach().clone() for n, p in lcm.models.pipe.unet.named_parameters() if ".lora_" in n}

    cfg = lora_run(tmp_path, "dmd", "dmd", init_lora=str(out))
    dmd = Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))
    student = {n: p for n, p in dmd.models.pipe.unet.named_parameters() if ".lora_" in n and ".default." in n}
    assert student and all(torch.equal(p, trained[n]) for n, p in student.items())
    fake = [p for n, p in dmd.models.pipe.unet.named_parameters() if ".fake_score." in n and "lora_B" in n]
    assert all(torch.count_nonzero(p) == 0 for p in fake)  # the fake score still starts as the teacher


def test_bad_init_lora_fails_before_any_model(tmp_path):
    with pytest.raises(ConfigError, match=r"^student.init_lora: .*/missing not found"):
        preflight(lora_run(tmp_path, "dmd", "x", init_lora=str(tmp_path / "missing")))
    raw = run_dict(tmp_path, method="dmd")
    raw["student"] = {"kind": "full", "init_lora": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"^student.init_lora: starts a LoRA student's adapter"):
        preflight(parse_config(raw))


def test_a_lora_of_another_rank_names_the_key(tmp_path):
    from fewstep.pipelines.export import export_run

    cfg = lora_run(tmp_path, "lcm", "lcm")
    lcm = Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))
    out = export_run(lcm.method, lcm.models, cfg, tmp_path / "lcm-export")
    cfg = lora_run(tmp_path, "dmd", "dmd", init_lora=str(out), lora_rank=8, lora_alpha=8)
    with pytest.raises(ConfigError, match=r"^student.init_lora: .* does not fit the student's adapter"):
        Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))
