"""The live quality signal's bookkeeping: which validation was best so far, and the early-stop alarm.

Losses of adversarial and score-distillation methods (DMD2, VSD) oscillate and say little about
progress, so the loop can measure a metric at every validation (an injected :class:`Validator`; the
one that knows about evaluation is ``pipelines.validation``, since ``distill`` imports no ``eval``).
:class:`Watch` is the pure state the loop keeps about one watched metric: the best value and the
step that reached it (whose export ``runs/<name>/best`` holds), and how many validations in a row
were worse than it. ``patience`` such validations in a row stop the run. The state travels in every
checkpoint (``as_state`` / ``from_state``), so ``--resume`` neither loses nor repeats a best.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

BEST_DIR = "best"  # runs/<name>/best: the export of the best validation, with best.json


class Validator(Protocol):
    """What the loop calls at each validation (main process only); knows no method."""

    # What the numbers mean (prompts, step counts, reference): a resumed run whose protocol differs
    # starts a new best instead of comparing unlike numbers.
    protocol: str

    def measure(self, method, models, step: int) -> list[dict]:
        """One record per measured step count, ``{"steps": s, metric: value, ..., "seconds": t}``; the
        watched metric is read from the first."""

    def keep_best(self, method, models, step: int, metrics: dict, grid_prompts: list[str]) -> Path:
        """Write the run's export and ``best.json`` (step, metrics) to ``runs/<name>/best``, atomically."""


def finite_or_none(value):
    """``value`` for JSON: a non-finite float becomes None (logs.jsonl holds no NaN / Infinity)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass(frozen=True)
class Watch:
    """Best value so far of one metric and the streak of worse validations since (immutable)."""

    metric: str
    higher_is_better: bool
    patience: int = 0  # worse validations in a row that stop the run; 0: never
    protocol: str = ""
    best: float | None = None
    best_step: int | None = None
    streak: int = 0  # validations in a row worse than ``best``

    def beats(self, value: float | None) -> bool:
        """Strictly better than the best so far (a missing or non-finite value never is)."""
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.higher_is_better else value < self.best

    def observe(self, value: float | None, step: int) -> Watch:
        """The state after a validation at ``step`` measured ``value``. A tie with the best breaks
        the streak without moving the best; a missing or non-finite value counts as worse."""
        if self.beats(value):
            return replace(self, best=float(value), best_step=step, streak=0)
        tie = value is not None and math.isfinite(value) and value == self.best
        return replace(self, streak=0 if tie else self.streak + 1)

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.streak >= self.patience

    def stop_reason(self, step: int, best_export: Path | None) -> str:
        """One line for the user: where the run stopped, why, and where its best export is."""
        where = f"best export: {best_export}" if best_export else "no best export"
        if self.best is None:
            return f"stopped at step {step}: {self.metric!r} has had no finite value in {self.streak} validations"
        side = "below" if self.higher_is_better else "above"
        return (f"stopped at step {step}: {self.metric!r} has been {side} its best {self.best:.4g} "
                f"(step {self.best_step}) for {self.streak} validation{'s' * (self.streak != 1)}; {where}")

    def as_state(self) -> dict:
        """For the checkpoint counters (``distill.checkpoints.write_state``)."""
        return {k: v for k, v in asdict(self).items() if k not in ("higher_is_better", "patience")}

    def resumed(self, state: dict | None) -> Watch:
        """This (fresh) watch with a checkpoint's state; a checkpoint without one (written before
        validation metrics existed) or for another metric or protocol leaves it fresh."""
        if not state or state.get("metric") != self.metric or state.get("protocol") != self.protocol:
            return self
        return replace(self, best=state.get("best"), best_step=state.get("best_step"),
                       streak=int(state.get("streak", 0)))
