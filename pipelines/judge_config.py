"""Typed build configs of the embedded judges (``configs/classifier.yaml``, ``configs/tiny_clip.yaml``).

Read with the run config's machinery (``distill.config.from_dict``): an unknown, ill-typed or
out-of-range key (ranges are written next to each field) is one line naming it, and ``check()``
rejects combinations the builder cannot use. Light imports only, so
``fewstep build-*`` reports a config mistake before torch is imported. Defaults are the shipped
judges' values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar


# LR_SCHEDULES: the training loop's schedule names, all built by diffusers' ``get_scheduler``.
from fewstep.distill.config import LR_SCHEDULES, MAX_LR, ConfigError, from_dict, ranged, read_yaml


@dataclass
class OptimConfig:
    """The optimisation knobs both builders share (AdamW + one of the loop's LR schedules)."""

    seed: int = ranged(0, ge=0)  # weight init + augmentation RNG
    train_seed: int = ranged(0, ge=0)  # ProceduralDataset split used for training (fresh scenes every batch)
    val_seed: int = ranged(12345, ge=0)  # held-out split scored after training (recorded with the weights)
    steps: int = ranged(1500, gt=0)  # optimizer steps
    batch_size: int = ranged(128, gt=0)  # scenes per step
    lr: float = ranged(0.002, gt=0, le=MAX_LR)  # AdamW peak learning rate
    lr_schedule: LR_SCHEDULES = "cosine"  # after warm-up; the loop's get_scheduler names
    warmup_steps: int = ranged(100, ge=0)  # linear warm-up from 0 (diffusers get_scheduler semantics)
    weight_decay: float = ranged(0.0001, ge=0)  # AdamW
    augment: bool = True  # blur / noise / colour cast per batch, like generated samples

    def check(self) -> None:
        if not 0 <= self.warmup_steps < self.steps:
            raise ConfigError(f"warmup_steps: must be in [0, steps={self.steps}), got {self.warmup_steps}")


@dataclass
class ClassifierBuildConfig(OptimConfig):
    """``configs/classifier.yaml``: the attribute classifier (``eval.classifier.AttributeClassifier``)."""

    val_size: int = ranged(5000, gt=0)  # held-out scenes scored after training
    width: int = ranged(32, ge=2)  # base channel count (conv layers: width/2, width, width, 2*width)
    feature_dim: int = ranged(128, gt=0)  # penultimate features: the FID embedding of the embedded domain

    def check(self) -> None:
        super().check()
        if self.width < 2 or self.width % 2:
            raise ConfigError(f"width: must be an even number >= 2, got {self.width}")


@dataclass
class TinyClipArch:
    """The ``model:`` section of ``configs/tiny_clip.yaml``: an open_clip ``CLIP`` model config."""

    embed_dim: int = ranged(64, gt=0)  # joint image-text space
    image_size: int = ranged(32, gt=0)
    # 4 stage depths select open_clip's ModifiedResNet (conv stem, bottleneck stages, attention pooling);
    # an int selects a ViT of that depth (then set patch_size).
    vision_layers: list[int] | int = ranged(factory=lambda: [1, 1, 1, 1], ge=1)
    vision_width: int = ranged(12, gt=0)  # ResNet: stem width (stages 4x..32x it); ViT: token width
    vision_head_width: int = ranged(32, gt=0)  # attention(-pool) head width
    patch_size: int | None = ranged(None, ge=1)  # ViT only
    context_length: int = ranged(20, gt=0)  # text tokens, start/end included
    text_width: int = ranged(32, gt=0)
    text_heads: int = ranged(2, gt=0)
    text_layers: int = ranged(2, gt=0)
    mlp_ratio: float = ranged(2.0, gt=0)  # transformer MLP width / model width (text tower, and a ViT image tower)

    def check(self) -> None:
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

    train_seed: int = ranged(7, ge=0)
    steps: int = ranged(1000, gt=0)
    batch_size: int = ranged(256, gt=0)
    warmup_steps: int = ranged(50, ge=0)
    weight_decay: float = ranged(0.05, ge=0)  # matrices only; gains, biases and the temperature are not decayed
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
