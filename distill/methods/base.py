"""The method interface: hyperparameters in a typed config, phases over named roles, and a loss.

A method never touches optimizers, accelerate, files or CLI arguments (DESIGN.md layer 3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from fewstep.distill.config import StudentConfig, check_ranges
from fewstep.distill.modelset import ModelSet, unwrap
from fewstep.distill.phases import Phase
from fewstep.distill.sampling import Recipe, apply_recipe, generate  # noqa: F401 (Recipe re-exported)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate
    logs: dict[str, float] = field(default_factory=dict)  # extra scalars to log
    # Detached tensors for the later phases of the same iteration (e.g. DMD2's critic trains on the
    # samples the generator just made); the loop detaches them and passes them on as batch["handover"].
    handover: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """Base class; subclasses set ``Config``, build their roles and implement ``loss``.

    ``phases()`` declares what the loop runs (by default one ``student`` phase that trains the
    ``student`` role on data batches); ``loss(models, batch, phase, step)`` gets the phase's name and
    the iteration, and ``batch["handover"]`` holds what earlier phases of this iteration handed over.
    """

    Config: ClassVar[type]

    def __init__(self, config, student: StudentConfig | None = None):
        check_ranges(config, "method")  # what from_dict checks, for settings built in code
        config.check()
        self.config = config
        self.student_config = student or StudentConfig()

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("student", ("student",)),)

    def build(self, pipe) -> ModelSet:
        raise NotImplementedError

    def setup(self, models: ModelSet, dataset) -> None:
        """Called once by the loop after ``build``, with the run's dataset (items with a ``caption``):
        for state a method derives from the data before training (e.g. DMD's regression pairs). It
        must draw no global randomness (a resumed run calls it again and must see the same noise)."""

    def check_native_size(self, dataset, sample_size: int, vae_factor: int) -> None:
        """Called before any weight loads, where the teacher's config files are at hand, with its UNet's
        ``sample_size`` and its VAE's scale factor: for checks of the data against the size the student
        generates at (raise ``ConfigError``, one line naming the key)."""

    def loss(self, models: ModelSet, batch: dict, phase: str, step: int) -> LossOutput:
        raise NotImplementedError

    def to_pipeline(self, models: ModelSet):
        """(diffusers pipeline, Recipe) that reproduces the trained model with stock classes."""
        raise NotImplementedError

    def trained_steps(self) -> list[int] | None:
        """The step counts the student is trained to run (None: any), known before any model is built."""
        return self.recipe().trained_steps if hasattr(self, "recipe") else None

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
