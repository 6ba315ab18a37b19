"""Attribute classifier for the procedural domain: the judge of generated images and the FID feature net.

A small CNN reads a 3x32x32 image and predicts every attribute of the scene (colour, shape,
background, size, position) with one linear head per attribute. Its penultimate activations
(``AttributeClassifier.features``) are the embedded feature network for FID on this domain, so
no Inception weights are needed to measure sample quality.

The module is deliberately independent of ``distill/``: it knows nothing about how scenes are
rendered. Attribute names and their class names arrive as a ``heads`` mapping, so the same code can
judge any small labelled image domain. It only loads and scores; building (training) a classifier
is ``pipelines/build_classifier.py``.

Checkpoint layout (one directory)::

    model.safetensors   the state dict
    config.json         {"heads": {"color": ["red", ...], ...}, "width": 32, "feature_dim": 128,
                         "training": {...hyper-parameters and validation accuracy...}}

The shipped classifier in ``assets/classifier/`` was built from ``configs/classifier.yaml`` by
(about 4 minutes on 1 CPU thread; 1500 steps, 100% accuracy on all 5000 held-out images)::

    OMP_NUM_THREADS=1 fewstep build-classifier --config configs/classifier.yaml --out assets/classifier
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

HeadSpec = Mapping[str, "int | Sequence[str]"]


def _normalise_heads(heads: HeadSpec) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Split a heads spec into (attribute -> num classes, attribute -> class names).

    A head may be given as a class count or as its ordered class names; counts get the names
    "0".."n-1" so that a checkpoint is always self-describing.
    """
    if not heads:
        raise ValueError("heads must name at least one attribute")
    sizes: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    for attr, spec in heads.items():
        if isinstance(spec, str):
            raise TypeError(f"head {attr!r}: give a class count or a list of class names, not the string {spec!r}")
        if isinstance(spec, int):
            cls = [str(i) for i in range(spec)]
        else:
            cls = [str(c) for c in spec]
        if len(cls) < 2:
            raise ValueError(f"head {attr!r} needs at least 2 classes, got {len(cls)}")
        sizes[attr] = len(cls)
        names[attr] = cls
    return sizes, names


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AttributeClassifier(nn.Module):
    """Small CNN predicting every attribute of a 3x32x32 image, one linear head per attribute.

    Args:
        heads: ordered mapping attribute -> number of classes, or attribute -> ordered class
            names (e.g. the procedural ``ATTRIBUTES``). The order fixes the column order of
            label tensors everywhere in this module.
        width: base channel count; the conv layers use width/2, width, width, 2*width channels.
        feature_dim: size of the penultimate feature vector (the FID embedding).
        class_names: optional attribute -> class names; overrides names derived from ``heads``.

    Inputs are raw images, uint8 or float in [0, 255], NCHW with 3 channels; the model scales
    them itself so every caller feeds the same thing it would save to disk.
    """

    def __init__(
        self,
        heads: HeadSpec,
        width: int = 32,
        feature_dim: int = 128,
        class_names: Mapping[str, Sequence[str]] | None = None,
    ):
        super().__init__()
        sizes, names = _normalise_heads(heads)
        if class_names is not None:
            for attr, cls in class_names.items():
                if attr not in sizes or len(cls) != sizes[attr]:
                    raise ValueError(f"class_names[{attr!r}] does not match heads {sizes}")
                names[attr] = [str(c) for c in cls]
        if width < 2 or width % 2:
            raise ValueError(f"width must be an even number >= 2, got {width}")
        self.head_sizes: dict[str, int] = sizes
        self.class_names: dict[str, list[str]] = names
        self.width = int(width)
        self.feature_dim = int(feature_dim)
        w = self.width
        self.body = nn.Sequential(
            # Only one conv at full resolution: it dominates the cost, and one 3x3 layer is enough
            # to pick up colour and edges before pooling; shape is resolved at 16x16.
            _conv_block(3, w // 2),
            nn.MaxPool2d(2),  # 16x16
            _conv_block(w // 2, w),
            _conv_block(w, w),
            nn.MaxPool2d(2),  # 8x8
            _conv_block(w, 2 * w),
            nn.MaxPool2d(2),  # 4x4
        )
        # Flatten rather than global-average-pool: "position" is an absolute-location attribute,
        # and a pooled descriptor would have to recover it from padding artefacts alone.
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 4 * 4, self.feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({a: nn.Linear(self.feature_dim, n) for a, n in sizes.items()})

    @property
    def attributes(self) -> list[str]:
        """Attribute names in label-column order."""
        return list(self.head_sizes)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}")
        p = next(self.parameters())
        x = images.to(device=p.device, dtype=p.dtype)
        # Map [0, 255] to roughly [-1, 1]; BatchNorm handles the rest of the scaling.
        return x / 127.5 - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, feature_dim]`` (float) of raw [0, 255] images.

        Call in eval mode (``model.eval()``) for deterministic features, e.g. for FID.
        """
        return self.neck(self.body(self._prepare(images)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute: ``{attribute: [N, num_classes]}`` for raw [0, 255] images."""
        f = self.features(images)
        return {a: head(f) for a, head in self.heads.items()}

    def config(self) -> dict:
        """The JSON-serialisable description needed to rebuild this model."""
        return {"heads": {a: list(c) for a, c in self.class_names.items()}, "width": self.width, "feature_dim": self.feature_dim}


# --------------------------------------------------------------------------------------------
# Checkpoints


def classifier_files(model: AttributeClassifier, extra: Mapping | None = None) -> dict[str, bytes]:
    """The checkpoint as ``{file name: contents}``: what :func:`load_classifier` reads back.

    ``extra`` (the build record: config, seconds, held-out accuracy) goes under ``"training"`` in
    ``config.json``. Writing the files (atomically) is the builder's job, ``pipelines.build_classifier``.
    """
    cfg = model.config()
    if extra is not None:
        cfg["training"] = dict(extra)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return {MODEL_FILE: save(state, metadata={"format": "pt"}),
            CONFIG_FILE: (json.dumps(cfg, indent=2) + "\n").encode()}


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> AttributeClassifier:
    """Load a classifier directory (the files of :func:`classifier_files`), in eval mode.

    Raises FileNotFoundError naming the missing file when the directory is incomplete.
    """
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"classifier directory not found: {d}")
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(f"classifier directory {d} is incomplete: missing {name} ({d / name})")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    try:
        model = AttributeClassifier(cfg["heads"], width=cfg["width"], feature_dim=cfg["feature_dim"])
    except KeyError as e:
        raise ValueError(f"{d / CONFIG_FILE} lacks required key {e}") from None
    model.load_state_dict(load_file(str(d / MODEL_FILE)))
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def _logits_in_batches(model: AttributeClassifier, images: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        chunks = [model(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return {a: torch.cat([c[a] for c in chunks]).cpu() for a in model.attributes}


def predict(model: AttributeClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted class per attribute, ``LongTensor [N, n_attr]`` in ``model.attributes`` order."""
    if images.shape[0] == 0:
        return torch.empty(0, len(model.attributes), dtype=torch.long)
    logits = _logits_in_batches(model, images, batch_size)
    return torch.stack([logits[a].argmax(dim=1) for a in model.attributes], dim=1)


def attribute_accuracy(model: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Accuracy per attribute, plus ``"all"`` (every attribute right) and ``"mean"`` (of attributes)."""
    if images.shape[0] == 0:
        raise ValueError("attribute_accuracy needs at least one image")
    if labels.shape != (images.shape[0], len(model.attributes)):
        raise ValueError(f"labels must be [{images.shape[0]}, {len(model.attributes)}], got {tuple(labels.shape)}")
    correct = predict(model, images, batch_size) == labels.cpu().long()
    out = {a: float(correct[:, j].float().mean()) for j, a in enumerate(model.attributes)}
    out["all"] = float(correct.all(dim=1).float().mean())
    out["mean"] = sum(out[a] for a in model.attributes) / len(model.attributes)
    return out
