"""Experiment trackers (``train.report_to``) through accelerate's tracker API, beside ``logs.jsonl``.

``logs.jsonl`` stays the record a run is read back from (``distill.runlog``); trackers get the same
numbers for people watching a run: each training record's losses, learning rates and seconds (per step
and per phase), each validation's metrics, and the sample grids as images. accelerate makes and feeds
trackers on the main process only (``Accelerator.init_trackers`` and ``log`` are main-process
methods), so a multi-process run writes one event file, as it writes one ``logs.jsonl``.
With ``report_to: none`` nothing here imports tensorboard or wandb.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fewstep.distill.config import ConfigError

PROJECT = "fewstep"  # wandb's project; tensorboard's subfolder of runs/<name>/tensorboard
TRACKERS = {"none": [], "tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"]}


def tracker_names(report_to: str) -> list[str]:
    """accelerate's tracker names for ``train.report_to`` (``all``: both, named, not accelerate's
    "every tracker installed", so a run reports to what its config says)."""
    return list(TRACKERS[report_to])


def check_trackers(report_to: str) -> None:
    """Every tracker ``report_to`` asks for is installed; checked in preflight, before the teacher
    loads. accelerate itself drops a requested tracker that is not installed with only a log message."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    missing = [name for name in tracker_names(report_to) if not available[name]()]
    if missing:
        raise ConfigError(f"train.report_to: {report_to!r} needs {' and '.join(missing)}, which is not installed; "
                          f"pip install fewstep[tracking]")


def logging_dir(run_dir: Path) -> Path:
    """Where tensorboard's event files go (inside it, in ``PROJECT``)."""
    return Path(run_dir) / "tensorboard"


def init_kwargs(name: str, run_dir: Path, resumed_step: int | None) -> dict:
    """Per-tracker settings for ``Accelerator.init_trackers``. A resumed run redoes the steps after its
    checkpoint: tensorboard's ``purge_step`` drops the interrupted attempt's events from that step on
    (as ``runlog.read_logs`` does for logs.jsonl), so each step's scalars appear once."""
    tb = {} if resumed_step is None else {"purge_step": resumed_step + 1}
    return {"tensorboard": tb, "wandb": {"name": name, "dir": str(run_dir)}}


def hyperparameters(config: dict, prefix: str = "") -> dict:
    """The resolved run config flattened to ``section/key`` scalars (trackers store only scalars and text)."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(hyperparameters(v, f"{key}/"))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        elif v is not None:
            out[key] = str(v)
    return out


def scalars(record: dict) -> dict[str, float]:
    """The numbers of one ``logs.jsonl`` record, named for a tracker: a training record's own keys
    (``<phase>/loss``, ``<phase>/lr``, ``sec_per_step``, ...), a validation record's metrics as
    ``validation/<metric>@<student steps>``; events (resume markers, stops) give nothing."""
    if "event" in record:
        return {}
    if isinstance(record.get("validation"), dict):
        v = record["validation"]
        at = f"@{v['steps']}" if "steps" in v else ""
        return {f"validation/{k}{at}": float(x) for k, x in v.items()
                if k != "steps" and isinstance(x, (int, float)) and not isinstance(x, bool)}
    return {k: float(x) for k, x in record.items()
            if k != "step" and isinstance(x, (int, float)) and not isinstance(x, bool)}


def log_grid(trackers: list, png: Path, step: int) -> None:
    """The sample grid written to ``png`` as an image in each tracker (main process: the others hold
    no trackers). Read back from the PNG so the tracker shows exactly the file ``samples/`` holds."""
    if not trackers:
        return
    from PIL import Image

    grid = np.asarray(Image.open(png).convert("RGB"))
    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": grid[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": [grid]}, step=step)


def attach_trackers(acc, report_to: str, run_dir: Path) -> None:
    """Give an accelerator made without the run folder (``make_accelerator(tc)``) the trackers
    ``report_to`` asks for, as its constructor would (accelerate's ``filter_trackers``, logging into
    ``logging_dir(run_dir)`` unless it has a logging folder of its own)."""
    names = tracker_names(report_to)
    if not names or acc.log_with:
        return
    from accelerate.tracking import filter_trackers

    if acc.project_configuration.logging_dir is None:
        acc.project_configuration.logging_dir = str(logging_dir(run_dir))
    acc.log_with = filter_trackers(names, acc.logging_dir)
