"""A finished run's trained modules, restored from one of its checkpoints for export, without the
training machinery: no accelerator state, optimizer, data loader, compiled graphs or method ``setup``
(DMD2's regression pairs are teacher samples, minutes on the embedded teacher and hours on SD1.5, that
an export never reads). The weights go through the same checks as a resume (``distill.checkpoints``)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from accelerate.utils import set_seed

from fewstep.distill import checkpoints
from fewstep.distill.config import RunConfig
from fewstep.distill.data import build_dataset, collate, first_items
from fewstep.distill.methods.base import Method
from fewstep.distill.methods.registry import REGISTRY
from fewstep.distill.modelset import ModelSet
from fewstep.distill.phases import plan_phases


class Restored(NamedTuple):
    method: Method
    models: ModelSet
    step: int  # the iteration the checkpoint was written at


def validation_batch(cfg: RunConfig) -> dict:
    """The run's validation items (its held-out split where the source has one), with
    ``validation.prompts`` as captions where set: the sample grid's prompts during training and in the export."""
    v = cfg.validation
    batch = collate(first_items(build_dataset(cfg.data, seed=v.seed), v.num_images))
    if v.prompts:
        batch["captions"] = [v.prompts[i % len(v.prompts)] for i in range(v.num_images)]
    return batch


def restore(cfg: RunConfig, pipe, folder: Path, verified: bool = False, device: torch.device | None = None) -> Restored:
    """The method's models built on ``pipe`` with ``folder``'s trained weights (verified first unless the
    caller did), on ``device`` (CUDA where there is one)."""
    folder = Path(folder)
    if not verified:
        checkpoints.verify(folder)
    method = REGISTRY[cfg.method.name](cfg.method.config, cfg.student)
    plans = plan_phases(method.phases(), cfg.train)
    state = checkpoints.check_phases(folder, [p.name for p in plans])  # another method's: before building
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_seed(cfg.train.seed)  # as the Trainer builds: whatever a build draws at random and no checkpoint holds
    models = method.build(pipe).to(device)
    named = {r: models.trainable_parameters(r) for p in plans for r in p.phase.modules}
    checkpoints.load_weights(folder, state, models, checkpoints.trained_names(models, named))
    return Restored(method, models, state["step"])
