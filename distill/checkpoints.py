"""Lean checkpoints: what resume needs, and nothing that can be reloaded from the teacher.

A checkpoint folder holds
* ``<module>.safetensors`` per module with state: the parameters some phase trains (a LoRA
  student: its adapter weights only) and the module's buffers; EMA copies (the same entries);
  parameter-free modules with buffers (running statistics). Frozen networks (a full student's
  teacher, a LoRA's base UNet, VAE, text encoder) are never saved: resume rebuilds them from the teacher.
* accelerate's optimizer / LR scheduler / RNG files (``save_state`` with model saving switched off);
* ``fewstep_state.json``: iteration, each phase's optimizer-step count, batches drawn, and a
  manifest (bytes and sha256 of every weight file) that loading verifies.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fewstep.distill.config import ConfigError
from fewstep.distill.modelset import ModelSet, unwrap

STATE_FILE = "fewstep_state.json"
FORMAT = 2  # 1: accelerate's full model state (fewstep before lean checkpoints)


class CheckpointError(ConfigError):
    """A checkpoint this run cannot resume from; the message names the file."""


def trained_names(models: ModelSet, params_by_role: dict[str, list[tuple[str, torch.nn.Parameter]]]) -> dict[str, set[str]]:
    """module name -> names (in the unwrapped module) of the parameters some phase trains."""
    out: dict[str, set[str]] = {}
    for role, named in params_by_role.items():
        out.setdefault(models.module_of(role), set()).update(n for n, _ in named)
    return out


def module_states(models: ModelSet, trained: dict[str, set[str]]) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors a checkpoint keeps, per module (see the module docstring for the rule)."""
    source_of = {target: source for target, source, _ in models.ema}
    out = {}
    for name, module in models.modules.items():
        m = unwrap(module)
        params = {n for n, _ in m.named_parameters()}
        state = m.state_dict()
        buffers = {k for k in state if k not in params}
        keep = trained.get(source_of.get(name, name))
        if keep:
            names = keep | buffers
        elif not params and buffers:
            names = buffers  # running statistics
        else:
            continue  # a frozen network
        out[name] = {k: state[k] for k in sorted(names)}
    return out


def first_non_finite(states: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """``module/tensor`` of the first floating-point tensor in ``states`` holding a NaN or an infinity."""
    for module, tensors in states.items():
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"{module}/{name}"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def write_state(folder: Path, states: dict[str, dict[str, torch.Tensor]], counters: dict) -> dict:
    """Write the module weights and ``fewstep_state.json`` (counters + manifest) into ``folder``."""
    manifest = {}
    for name, tensors in states.items():
        path = folder / f"{name}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
        path.chmod(0o644)  # safetensors writes owner-only files
        manifest[path.name] = {"module": name, "tensors": len(tensors), "bytes": path.stat().st_size,
                               "sha256": _sha256(path)}
    state = {"format": FORMAT, **counters, "weights": manifest}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
    return state


def read_state(folder: Path) -> dict:
    """``fewstep_state.json`` of a checkpoint written in this format."""
    path = Path(folder) / STATE_FILE
    state = json.loads(path.read_text())
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: written by an older fewstep (full accelerate state, format "
                              f"{state.get('format', 1)}); resume it with that version or start the run afresh")
    return state


def load_weights(folder: Path, state: dict, models: ModelSet, trained: dict[str, set[str]]) -> None:
    """Verify the manifest and copy every saved tensor into the run's modules."""
    folder = Path(folder)
    expected = {n: set(t) for n, t in module_states(models, trained).items()}
    saved = {info["module"]: fname for fname, info in state["weights"].items()}
    if set(saved) != set(expected):
        raise CheckpointError(f"{folder}: holds weights of modules {sorted(saved)}, this run has state in "
                              f"{sorted(expected)} (a different method or student config?)")
    for fname, info in state["weights"].items():
        path = folder / fname
        if not path.is_file() or path.stat().st_size != info["bytes"] or _sha256(path) != info["sha256"]:
            raise CheckpointError(f"{path}: missing or changed since it was written (size/sha256 differ from "
                                  f"{STATE_FILE})")
        tensors = load_file(str(path))
        if set(tensors) != expected[info["module"]]:
            diff = sorted(set(tensors) ^ expected[info["module"]])
            raise CheckpointError(f"{path}: its tensors differ from what this run trains in module "
                                  f"{info['module']!r}, e.g. {diff[:3]} (a different student config?)")
        try:
            unwrap(models.modules[info["module"]]).load_state_dict(tensors, strict=False)
        except RuntimeError as e:  # shape mismatch: e.g. another LoRA rank
            raise CheckpointError(f"{path}: does not fit module {info['module']!r}: {str(e).splitlines()[-1]}") from None
