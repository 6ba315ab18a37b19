"""Typed build configs of the embedded judges (``configs/classifier.yaml``, ``configs/tiny_clip.yaml``).

Read with the run config's machinery (``distill.config.from_dict``): an unknown or ill-typed key is
one line naming it, and ``check()`` rejects values the builder cannot use. Light imports only, so
``fewstep build-*`` reports a config mistake before torch is imported. Defaults are the shipped
judges' values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar


# LR_SCHEDULES: the training loop's schedule names, all built by diffusers' ``get_scheduler``.
from fewstep.distill.config import LR_SCHEDULES, ConfigError, from_dict, read_yaml


def _positive(section: str, **values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"{section}{key}: must be > 0, got {value}")


@dataclass
class OptimConfig:
    """The optimisation knobs both builders share (AdamW + one of the loop's LR schedules)."""

    seed: int = 0  # weight init + augmentation RNG
    train_seed: int = 0  # ProceduralDataset split used for training (fresh scenes every batch)
    val_seed: int = 12345  # held-out split scored after training (recorded with the weights)
    steps: int = 1500  # optimizer steps
    batch_size: int = 128  # scenes per step
    lr: float = 0.002  # AdamW peak learning rate
    lr_schedule: LR_SCHEDULES = "cosine"  # after warm-up; the loop's get_scheduler names
    warmup_steps: int = 100  # linear warm-up from 0 (diffusers get_scheduler semantics)
    weight_decay: float = 0.0001  # AdamW
    augment: bool = True  # blur / noise / colour cast per batch, like generated samples

    def check(self) -> None:
        _positive("", steps=self.steps, batch_size=self.batch_size, lr=self.lr)
        if not 0 <= self.warmup_steps < self.steps:
            raise ConfigError(f"warmup_steps: must be in [0, steps={self.steps}), got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")


@dataclass
class ClassifierBuildConfig(OptimConfig):
    """``configs/classifier.yaml``: the attribute classifier (``eval.classifier.AttributeClassifier``)."""

    val_size: int = 5000  # held-out scenes scored after training
    width: int = 32  # base channel count (conv layers: width/2, width, width, 2*width)
    feature_dim: int = 128  # penultimate features: the FID embedding of the embedded domain

    def check(self) -> None:
        super().check()
        _positive("", val_size=self.val_size, feature_dim=self.feature_dim)
        if self.width < 2 or self.width % 2:
            raise ConfigError(f"width: must be an even number >= 2, got {self.width}")


@dataclass
class TinyClipArch:
    """The ``model:`` section of ``configs/tiny_clip.yaml``: an open_clip ``CLIP`` model config."""

    embed_dim: int = 64  # joint image-text space
    image_size: int = 32
    # 4 stage depths select open_clip's ModifiedResNet (conv stem, bottleneck stages, attention pooling);
    # an int selects a ViT of that depth (then set patch_size).
    vision_layers: list[int] | int = field(default_factory=lambda: [1, 1, 1, 1])
    vision_width: int = 12  # ResNet: stem width (stages 4x..32x it); ViT: token width
    vision_head_width: int = 32  # attention(-pool) head width
    patch_size: int | None = None  # ViT only
    context_length: int = 20  # text tokens, start/end included
    text_width: int = 32
    text_heads: int = 2
    text_layers: int = 2
    mlp_ratio: float = 2.0  # transformer MLP width / model width (text tower, and a ViT image tower)

    def check(self) -> None:
        _positive("model.", embed_dim=self.embed_dim, image_size=self.image_size, vision_width=self.vision_width,
                  vision_head_width=self.vision_head_width, context_length=self.context_length,
                  text_width=self.text_width, text_heads=self.text_heads, text_layers=self.text_layers,
                  mlp_ratio=self.mlp_ratio)
        if isinstance(self.vision_layers, list):
            if len(self.vision_layers) != 4 or min(self.vision_layers) < 1:
                raise ConfigError(f"model.vision_layers: a ResNet needs 4 stage depths >= 1, got {self.vision_layers}")
            if self.patch_size is not None:
                raise ConfigError("model.patch_size: only for a ViT (vision_layers an int)")
        elif self.patch_size is None or self.patch_size < 1 or self.vision_layers < 1:
            raise ConfigError(f"model.patch_size: a ViT (vision_layers {self.vision_layers}) needs a patch size >= 1")

    def open_clip_cfg(self) -> dict:
        """open_clip's ``model_cfg`` (what ``open_clip_config.json`` stores and ``open_clip.CLIP`` takes)."""
        vision: dict = {"image_size": self.image_size, "layers": self.vision_layers, "width": self.vision_width,
                        "head_width": self.vision_head_width}
        if not isinstance(self.vision_layers, list):
            vision.update(patch_size=self.patch_size, mlp_ratio=self.mlp_ratio)
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": vision,
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408,  # open_clip's BPE vocabulary
                         "width": self.text_width, "heads": self.text_heads, "layers": self.text_layers,
                         "mlp_ratio": self.mlp_ratio},
        }


@dataclass
class TinyClipBuildConfig(OptimConfig):
    """``configs/tiny_clip.yaml``: the embedded tiny CLIP."""

    train_seed: int = 7
    steps: int = 1000
    batch_size: int = 256
    warmup_steps: int = 50
    weight_decay: float = 0.05  # matrices only; gains, biases and the temperature are not decayed
    model: TinyClipArch = field(default_factory=TinyClipArch)

    def check(self) -> None:
        super().check()
        self.model.check()


BuildConfig = TypeVar("BuildConfig", ClassifierBuildConfig, TinyClipBuildConfig)


def load_build_config(path: str | Path, cls: type[BuildConfig]) -> BuildConfig:
    """Read and type a judge build config; every problem is a :class:`ConfigError` naming the file."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    try:
        cfg = from_dict(cls, data)
        cfg.check()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def to_record(cfg: ClassifierBuildConfig | TinyClipBuildConfig) -> dict:
    """The config as plain data, stored with the judge's weights."""
    return dataclasses.asdict(cfg)
