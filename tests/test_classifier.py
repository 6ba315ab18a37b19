"""The attribute classifier: checkpoint round trip (eval loads what the builder writes), the shipped
judge's accuracy, and training (pipelines.build_classifier)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fewstep.distill.data.procedural import ATTRIBUTES, ProceduralDataset
from fewstep.eval.classifier import (
    CONFIG_FILE,
    MODEL_FILE,
    AttributeClassifier,
    attribute_accuracy,
    load_classifier,
    predict,
)
from fewstep.pipelines.build_classifier import fit_classifier, save_classifier
from fewstep.pipelines.judge_config import ClassifierBuildConfig
from fewstep.pipelines.judge_training import procedural_batches

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "assets" / "classifier"


def render_batch(seed: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ProceduralDataset(seed)[i] for i in range(start, start + n)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["labels"] for it in items])


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return render_batch(7, 0, 16)[0]


def _small_model() -> AttributeClassifier:
    torch.manual_seed(0)
    model = AttributeClassifier(ATTRIBUTES, width=8, feature_dim=16)
    # One train-mode pass so BatchNorm running stats differ from their defaults and are checked too.
    model.train()(render_batch(3, 0, 32)[0])
    return model.eval()


def test_save_load_round_trip_is_exact(tmp_path, images):
    model = _small_model()
    out = save_classifier(model, tmp_path / "clf")
    loaded = load_classifier(out)
    assert not loaded.training
    assert loaded.class_names == {a: list(c) for a, c in ATTRIBUTES.items()}
    assert loaded.attributes == list(ATTRIBUTES)
    with torch.no_grad():
        a, b = model(images), loaded(images)
        for k in a:
            assert torch.equal(a[k], b[k]), k
        assert torch.equal(model.features(images), loaded.features(images))
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg["heads"]["color"][0] == "red" and cfg["width"] == 8 and cfg["feature_dim"] == 16


def test_save_replaces_existing_dir_without_leftovers(tmp_path):
    model = _small_model()
    target = tmp_path / "clf"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_classifier(model, target)
    save_classifier(model, target)
    assert sorted(p.name for p in target.iterdir()) == sorted([MODEL_FILE, CONFIG_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["clf"]  # no temp or old dirs left behind


def test_load_incomplete_dir_names_missing_file(tmp_path):
    out = save_classifier(_small_model(), tmp_path / "clf")
    (out / MODEL_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_classifier(out)
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "does-not-exist")


def test_features_and_logit_shapes(images):
    model = _small_model()
    with torch.no_grad():
        f = model.features(images)
        logits = model(images)
        # Raw uint8 and float [0, 255] inputs are the same thing to the model.
        assert torch.allclose(model.features(images.float()), f)
    assert f.shape == (images.shape[0], 16) and f.dtype == torch.float32
    assert {a: v.shape for a, v in logits.items()} == {a: (images.shape[0], len(c)) for a, c in ATTRIBUTES.items()}
    assert predict(model, images, batch_size=5).shape == (images.shape[0], len(ATTRIBUTES))
    with pytest.raises(ValueError):
        model.features(images[:, :1])


def test_shipped_classifier_accuracy_on_held_out_split():
    model = load_classifier(SHIPPED)
    assert model.class_names == {a: list(c) for a, c in ATTRIBUTES.items()}
    imgs, labels = render_batch(999, 0, 1000)
    acc = attribute_accuracy(model, imgs, labels)
    assert set(acc) == set(ATTRIBUTES) | {"all", "mean"}
    for attr in ATTRIBUTES:
        assert acc[attr] >= 0.99, (attr, acc)


def test_short_fit_lowers_loss():
    torch.set_num_threads(1)  # small ops; extra threads only add overhead on a shared CPU
    losses: list[float] = []
    cfg = ClassifierBuildConfig(steps=30, lr=5e-3, width=8, feature_dim=32, warmup_steps=3)
    model = fit_classifier(procedural_batches(0, 32, "labels"), ATTRIBUTES, cfg,
                           on_step=lambda step, loss: losses.append(loss), progress=False)
    assert len(losses) == 30 and not model.training
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


def test_fit_rejects_mislabelled_batches():
    bad = iter([(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, 2, dtype=torch.long))])
    with pytest.raises(ValueError, match="labels"):
        fit_classifier(bad, ATTRIBUTES, ClassifierBuildConfig(steps=1, warmup_steps=0, width=4, feature_dim=8),
                       progress=False)


def test_eval_package_does_not_import_distill():
    # Loading and scoring the judges pulls in nothing from training or the builders above it.
    code = ("import sys, fewstep.eval.classifier, fewstep.eval.tiny_clip, fewstep.eval.clip; "
            "bad = [m for m in sys.modules if m.startswith(('fewstep.distill', 'fewstep.pipelines'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
