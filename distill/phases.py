"""The phase contract between a method and the loop.

A method declares its phases (NVIDIA FastGen's and DMD2's shape: a generator phase, a critic phase
that steps 5x as often, ...); the loop runs them without knowing any method:

* ``modules``: the roles a phase optimises. While it runs, the roles of every other phase are frozen
  (``requires_grad`` off) and called without their DDP wrapper: no gradient is computed or reduced
  for them.
* update rate: the phase runs on iterations ``i`` with ``i % every == 0`` and takes ``repeats``
  optimizer steps there (two time-scale updates, Heusel et al. 2017; DMD2, Yin et al. 2024, Sec. 4.2).
* ``data``: ``"batch"`` draws a data batch per micro-step, ``"prompts"`` keeps only its captions,
  ``"none"`` draws nothing (the phase lives on what earlier phases handed over, or on noise).
* optimizer settings per phase: ``train.phases.<name>`` (user) > ``train.phase_lr`` (lr only) >
  the method's ``Phase.defaults`` > ``train.*``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Iterable, Literal

import torch

from fewstep.distill.config import RANGE, ConfigError, PhaseConfig, TrainConfig, schedule_name

DataNeed = Literal["batch", "prompts", "none"]
PROMPT_KEYS = ("captions",)  # what a "prompts" phase keeps of a data batch


@dataclass(frozen=True)
class Phase:
    """One optimisation phase, as a method declares it (see the module docstring)."""

    name: str  # in logs, in train.phases.<name>, and passed to Method.loss
    modules: tuple[str, ...]  # the roles it optimises
    data: DataNeed = "batch"
    defaults: PhaseConfig = field(default_factory=PhaseConfig)  # the method's own settings for it


@dataclass(frozen=True)
class PhasePlan:
    """A phase with every setting resolved."""

    phase: Phase
    every: int
    repeats: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    lr_schedule: str
    lr_warmup_steps: int
    max_grad_norm: float

    @property
    def name(self) -> str:
        return self.phase.name

    def due(self, iteration: int) -> bool:
        return iteration % self.every == 0

    def steps_until(self, iterations: int) -> int:
        """Optimizer steps this phase takes in iterations ``0 .. iterations - 1``."""
        return math.ceil(iterations / self.every) * self.repeats


_RATE_DEFAULTS = {"every": 1, "repeats": 1}  # the update-rate fields have no train.* counterpart


def plan_phases(phases: Iterable[Phase], train: TrainConfig) -> list[PhasePlan]:
    """Resolve every phase's settings; unknown phase names and out-of-range values name their key."""
    phases = list(phases)
    names = [p.name for p in phases]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"a method needs one or more uniquely named phases, got {names}")
    for section, given in (("train.phases", train.phases), ("train.phase_lr", train.phase_lr)):
        for key in given:
            if key not in names:
                raise ConfigError(f"{section}.{key}: this method has no phase {key!r}; its phases: {', '.join(names)}")
    plans = []
    for ph in phases:
        user = train.phases.get(ph.name, PhaseConfig())
        if user.lr is not None and ph.name in train.phase_lr:
            raise ConfigError(f"train.phase_lr.{ph.name} and train.phases.{ph.name}.lr are both set; keep one")
        values = {}
        for f in fields(PhaseConfig):
            chain = [(getattr(user, f.name), f"train.phases.{ph.name}.{f.name}")]
            if f.name == "lr":
                chain.append((train.phase_lr.get(ph.name), f"train.phase_lr.{ph.name}"))
            chain.append((getattr(ph.defaults, f.name), f"the {ph.name} phase's default {f.name}"))
            chain.append((_RATE_DEFAULTS[f.name], "default") if f.name in _RATE_DEFAULTS
                         else (getattr(train, f.name), f"train.{f.name}"))
            value, where = next((v, w) for v, w in chain if v is not None)
            if RANGE in f.metadata:  # PhaseConfig's ranges hold for the resolved value, wherever it came from
                f.metadata[RANGE].check(where, value)
            values[f.name] = value
        plans.append(PhasePlan(ph, values["every"], values["repeats"], values["lr"],
                               (values["adam_beta1"], values["adam_beta2"]), values["weight_decay"],
                               values["lr_schedule"], values["lr_warmup_steps"], values["max_grad_norm"]))
    return plans


FUSED_DEVICES = ("cpu", "cuda")  # where "auto" picks torch's fused AdamW (torch has it for more; tested on these)


def adamw_flags(params: list[torch.nn.Parameter], impl: str) -> dict:
    """``torch.optim.AdamW``'s ``fused`` / ``foreach`` arguments for ``train.adamw_impl``."""
    if impl == "auto":
        fits = all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
        return {"fused": True} if fits else {}
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[impl]


def build_optimizer(params: list[torch.nn.Parameter], plan: PhasePlan, iterations: int, impl: str = "auto"):
    """AdamW (implementation ``impl``, ``train.adamw_impl``) and its LR schedule for one phase, over the
    optimizer steps it takes in ``iterations``."""
    from diffusers.optimization import get_scheduler

    opt = torch.optim.AdamW(params, lr=plan.lr, betas=plan.betas, weight_decay=plan.weight_decay,
                            **adamw_flags(params, impl))
    sched = get_scheduler(schedule_name(plan.lr_schedule, plan.lr_warmup_steps), opt,
                          num_warmup_steps=plan.lr_warmup_steps,
                          num_training_steps=plan.steps_until(iterations))
    return opt, sched


def keep_implementation(opt: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: the implementation this run built ``opt`` with, not the checkpoint's.
    torch takes every param-group entry from the saved state, ``fused`` and ``foreach`` too, so a run
    resumed from another implementation's checkpoint would silently keep that one; the step counters
    then go where a fresh optimizer of this kind keeps them (fused: on the parameter's device)."""
    opt = getattr(opt, "optimizer", opt)  # accelerate's wrapper
    fused = bool(opt.defaults.get("fused"))
    for group in opt.param_groups:
        group["fused"], group["foreach"] = opt.defaults.get("fused"), opt.defaults.get("foreach")
        for p in group["params"]:
            state = opt.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(p.device if fused or group["capturable"] else "cpu", torch.float32)


def freeze_all_but(params: dict[str, list[torch.nn.Parameter]], phase: str | None) -> None:
    """requires_grad on for ``phase``'s parameters only (``None``: on for every phase's)."""
    for name, ps in params.items():
        if name != phase:
            for p in ps:
                p.requires_grad_(phase is None)
    if phase is not None:
        for p in params[phase]:
            p.requires_grad_(True)


def select_data(need: DataNeed, draw) -> dict:
    """The batch a phase gets: ``draw()`` (a full data batch), its captions only, or nothing."""
    if need == "none":
        return {}
    batch = draw()
    return batch if need == "batch" else {k: batch[k] for k in PROMPT_KEYS}
