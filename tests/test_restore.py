"""``fewstep export`` restores only what it exports (distill.restore): the trained modules hold exactly the
weights the run ended with, the method's setup (DMD2's regression pairs) is never run, and the
command writes the same files as the end-of-training export."""
from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fewstep.distill.loop import Trainer, list_checkpoints
from fewstep.distill.methods import dmd
from fewstep.distill.modelset import unwrap
from fewstep.distill.restore import restore
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.teacher import run_teacher
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import fewstep, run_dict

CASES = [("lcm", "lora", {}), ("lcm", "full", {}),
         ("dmd", "full", {"regression_weight": 0.25, "regression_pairs": 4, "regression_teacher_steps": 2,
                          "generator_steps": 4, "ema_decay": 0.5})]


def states(models) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, m in models.modules.items() for k, v in unwrap(m).state_dict().items()}


@pytest.mark.parametrize("method,kind,settings", CASES)
def test_restored_modules_hold_the_trained_weights_without_the_methods_setup(tmp_path, monkeypatch, method, kind,
                                                                              settings):
    raw = run_dict(tmp_path, method=method, steps=2, checkpoint_every=0, lr=1e-2)
    raw["method"].update(settings)
    raw["student"] = {"kind": kind, "lora_rank": 4, "lora_alpha": 4}
    cfg = parse_config(raw)
    trainer = Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))
    trainer.train()
    (step, path), = list_checkpoints(trainer.run_dir)
    calls = []
    monkeypatch.setattr(dmd, "teacher_pairs", lambda *a, **k: calls.append(1))  # what DMD2's setup makes
    method_, models, restored_step = restore(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0), path)
    assert calls == [] and restored_step == step == 2 and type(method_) is type(trainer.method)
    trained, fresh = states(trainer.models), states(models)
    assert trained.keys() == fresh.keys()
    assert all(torch.equal(trained[k], fresh[k]) for k in trained)
    untrained = states(trainer.method.build(build_tiny_pipeline(cfg.model.tiny, seed=0)))
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained)  # the training changed something


def test_export_command_writes_what_the_run_exported(tmp_path, capsys):
    raw = run_dict(tmp_path, method="lcm", steps=3, checkpoint_every=0, lr=1e-2)
    raw["student"] = {"kind": "lora", "lora_rank": 4}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "runs" / "t"
    assert fewstep(capsys, "train", cfg)[0] == 0  # with its end-of-training export in runs/t/export
    code, err = fewstep(capsys, "export", run, "--out", tmp_path / "again")
    assert code == 0 and "exported step 3 " in err, err
    name = "pytorch_lora_weights.safetensors"
    ours, theirs = load_file(str(tmp_path / "again" / name)), load_file(str(run / "export" / name))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for text in ("fewstep_recipe.json", "README.md"):
        assert (tmp_path / "again" / text).read_text() == (run / "export" / text).read_text(), text
    # fused onto a fresh teacher: for a model.tiny run, the same seeded tiny pipeline (it had no other)
    code, err = fewstep(capsys, "export", run, "--fuse", "--out", tmp_path / "fused")
    assert code == 0, err
    fused = load_file(str(tmp_path / "fused" / "unet" / "diffusion_pytorch_model.safetensors"))
    base = run_teacher(parse_config(raw)).unet.state_dict()
    assert fused.keys() == base.keys() and any(not torch.equal(fused[k], base[k]) for k in base)
