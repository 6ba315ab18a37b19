"""Building the embedded judges (pipelines.build_classifier / build_tiny_clip): typed configs that
agree with the shipped assets, short builds through the ``fewstep`` command that eval loads back,
the contrastive loss and the augmentation."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from fewstep.distill.config import ConfigError, from_dict
from fewstep.distill.data.procedural import ATTRIBUTES, ProceduralDataset, all_captions
from fewstep.eval.classifier import attribute_accuracy, load_classifier
from fewstep.eval.clip import load_clip, retrieval_accuracy
from fewstep.pipelines.build_tiny_clip import contrastive_loss, distinct_caption_gallery, fit_tiny_clip
from fewstep.pipelines.cli import main
from fewstep.pipelines.judge_config import (
    ClassifierBuildConfig,
    TinyClipBuildConfig,
    load_build_config,
)
from fewstep.pipelines.judge_training import augment, procedural_batches, procedural_slice

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # small ops; extra threads only add overhead on a shared CPU


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("cls,config,asset,record_key", [
    (ClassifierBuildConfig, "classifier.yaml", "classifier/config.json", "training"),
    (TinyClipBuildConfig, "tiny_clip.yaml", "tiny-clip/open_clip_config.json", "fewstep_training"),
])
def test_committed_config_is_what_the_shipped_judge_records(cls, config, asset, record_key):
    cfg = load_build_config(REPO / "configs" / config, cls)
    shipped = json.loads((REPO / "assets" / asset).read_text())
    assert from_dict(cls, shipped[record_key]["config"]) == cfg
    if cls is TinyClipBuildConfig:
        assert shipped["model_cfg"] == cfg.model.open_clip_cfg()


@pytest.mark.parametrize("data,message", [
    ({"stepz": 3}, "unknown key 'stepz'"),
    ({"lr": "fast"}, "lr: expected float"),
    ({"augment": 1}, "augment: expected bool"),
    ({"steps": 10, "warmup_steps": 10}, "warmup_steps: must be in"),
    ({"lr_schedule": "cosine_with_restarts"}, "lr_schedule"),
    ({"model": {"vision_layers": 3}}, "model.patch_size"),
    ({"model": {"vision_layers": [1, 1]}}, "model.vision_layers"),
    ({"model": {"text_heads": 0}}, "model.text_heads: must be > 0"),
])
def test_bad_build_config_is_one_error_naming_file_and_key(tmp_path, data, message):
    path = _write(tmp_path / "clip.yaml", data)
    with pytest.raises(ConfigError, match=message) as e:
        load_build_config(path, TinyClipBuildConfig)
    assert str(path) in str(e.value)


def test_config_errors_come_before_torch_is_imported(tmp_path):
    bad = _write(tmp_path / "bad.yaml", {"width": 7})
    code = ("import sys; from fewstep.pipelines.cli import main; "
            f"rc = main(['build-classifier', '--config', {str(bad)!r}, '--out', 'x']); "
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["2", "False"]
    assert proc.stderr.strip().splitlines() == [f"fewstep: error: {bad}: width: must be an even number >= 2, got 7"]


# --------------------------------------------------------------------------------------------
# Short builds


def test_short_classifier_build_is_sane_and_reproducible(tmp_path, capsys):
    cfg = {"steps": 40, "batch_size": 32, "width": 8, "feature_dim": 32, "lr": 5e-3, "warmup_steps": 3,
           "val_size": 200}
    path = _write(tmp_path / "clf.yaml", cfg)
    assert main(["build-classifier", "--config", str(path), "--out", str(tmp_path / "a")]) == 0
    assert "held-out accuracy" in capsys.readouterr().err
    model = load_classifier(tmp_path / "a")
    record = json.loads((tmp_path / "a" / "config.json").read_text())["training"]
    assert record["config"] == dataclasses.asdict(from_dict(ClassifierBuildConfig, cfg))
    acc = attribute_accuracy(model, *procedural_slice(12345, 0, 200, "labels"))
    assert record["val_accuracy"] == {k: round(v, 6) for k, v in acc.items()}  # recorded = what eval measures
    chance = sum(1 / len(c) for c in ATTRIBUTES.values()) / len(ATTRIBUTES)
    assert acc["mean"] > chance + 0.2, acc
    assert acc["background"] > 0.9 and acc["position"] > 0.9, acc  # the large-area attributes come first
    # Same config, same weights: what makes a shipped judge reproducible from its config and command.
    assert main(["build-classifier", "--config", str(path), "--out", str(tmp_path / "b")]) == 0
    a, b = model.state_dict(), load_classifier(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "clf.yaml"]  # no temporary folders left


def test_short_tiny_clip_fit_lowers_loss():
    losses: list[float] = []
    cfg = TinyClipBuildConfig(steps=30, warmup_steps=3)
    model = fit_tiny_clip(procedural_batches(7, 32, "caption"), cfg, on_step=lambda s, loss: losses.append(loss),
                          progress=False)
    assert len(losses) == 30 and not model.training
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5]), losses


def test_tiny_clip_build_writes_an_open_clip_folder_eval_loads(tmp_path):
    cfg = {"steps": 4, "batch_size": 16, "warmup_steps": 1}
    path = _write(tmp_path / "clip.yaml", cfg)
    assert main(["build-tiny-clip", "--config", str(path), "--out", str(tmp_path / "clip")]) == 0
    written = json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())
    typed = from_dict(TinyClipBuildConfig, cfg)
    assert written["model_cfg"] == typed.model.open_clip_cfg()
    assert written["fewstep_training"]["config"] == dataclasses.asdict(typed)
    gallery = distinct_caption_gallery(ProceduralDataset(12345), len(all_captions()))
    clip = load_clip(f"local-dir:{tmp_path / 'clip'}")
    # The recorded accuracy is that of the folder as written (float16 weights), not of the trained model.
    assert written["fewstep_training"]["val_retrieval"] == retrieval_accuracy(clip, *gallery)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "clip.yaml"]


# --------------------------------------------------------------------------------------------
# Pieces


def _clip_loss(img, txt, scale):
    """Plain CLIP: one-hot targets on the diagonal, both directions."""
    logits = scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    target = torch.arange(img.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def test_contrastive_loss_is_clips_when_equal_captions_embed_equally():
    torch.manual_seed(0)
    img, txt, scale = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8), torch.tensor(math.log(20.0))
    assert torch.allclose(contrastive_loss(img, txt, scale, list("abcdef")), _clip_loss(img, txt, scale), atol=1e-6)
    # Repeated captions with equal text embeddings (what a deterministic text tower gives): the same
    # loss and the same gradient as one-hot CLIP.
    captions = list("abacba")
    txt = torch.stack([txt[ord(c) - ord("a")] for c in captions])
    ours, plain = contrastive_loss(img, txt, scale, captions), _clip_loss(img, txt, scale)
    assert torch.allclose(ours, plain, atol=1e-6)
    assert torch.allclose(*[torch.autograd.grad(v, img)[0] for v in (ours, plain)], atol=1e-6)


def test_contrastive_loss_minimum_is_the_targets_entropy():
    # Two copies of caption "a" with identical embeddings, orthogonal to "b", at a large temperature:
    # each "a" row puts half its mass on either copy, the best any prediction can do against targets
    # (1/2, 1/2), so the loss is their entropy, (2 log 2 + 0) / 3 in each direction.
    e = torch.eye(4)
    img = torch.stack([e[0], e[0], e[1]])
    loss = contrastive_loss(img, img.clone(), torch.tensor(math.log(100.0)), ["a", "a", "b"])
    assert loss.item() == pytest.approx(2 * math.log(2) / 3, abs=1e-6)


def test_augment_is_seeded_bounded_and_leaves_its_input():
    images = procedural_slice(3, 0, 8, "labels")[0]
    before = images.clone()
    a = augment(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, augment(images, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(images, torch.Generator().manual_seed(2)))
    assert torch.equal(images, before) and a.dtype == torch.float32 and a.shape == images.shape
    assert a.min() >= 0 and a.max() <= 255
    assert (a - images.float()).abs().mean() < 30  # light: renders stay recognisable
