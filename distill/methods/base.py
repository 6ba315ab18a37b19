"""The method interface: hyperparameters in a typed config, phases, trainable modules and a loss.

A method never touches optimizers, accelerate, files or CLI arguments (DESIGN.md layer 3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from fewstep.distill.config import StudentConfig
from fewstep.distill.modelset import ModelSet, unwrap
from fewstep.distill.sampling import Recipe, apply_recipe, generate  # noqa: F401 (Recipe re-exported)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate
    logs: dict[str, float] = field(default_factory=dict)  # extra scalars to log


class Method:
    """Base class; subclasses set ``Config`` and ``phases`` and implement build / trainable / loss."""

    Config: ClassVar[type]
    phases: ClassVar[tuple[str, ...]] = ("student",)

    def __init__(self, config, student: StudentConfig | None = None):
        config.check()
        self.config = config
        self.student_config = student or StudentConfig()

    def build(self, pipe) -> ModelSet:
        raise NotImplementedError

    def trainable(self, models: ModelSet, phase: str) -> list[str]:
        """Names of the modules that ``phase`` optimises."""
        raise NotImplementedError

    def loss(self, models: ModelSet, batch: dict, phase: str, step: int) -> LossOutput:
        raise NotImplementedError

    def to_pipeline(self, models: ModelSet):
        """(diffusers pipeline, Recipe) that reproduces the trained model with stock classes."""
        raise NotImplementedError

    def preview(self, models: ModelSet, batch: dict, seed: int) -> np.ndarray:
        """Validation images uint8 [N, H, W, 3]: by default, samples from the exported pipeline."""
        pipe, recipe = self.to_pipeline(models)
        pipe = apply_recipe(pipe, recipe).to(models.device)
        return generate(pipe, batch["captions"], recipe.steps, recipe.guidance, seed)


def pipeline_with(models: ModelSet, **components):
    """A shallow copy of the run's pipeline with some components replaced by unwrapped modules."""
    comps = dict(models.pipe.components)
    comps.update({k: unwrap(v) for k, v in components.items()})
    kwargs = {"requires_safety_checker": False} if "safety_checker" in comps else {}
    pipe = type(models.pipe)(**comps, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
