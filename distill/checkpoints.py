"""Lean, verified checkpoints: what resume needs, nothing that can be reloaded from the teacher, and a
manifest that proves every file is whole before anything is loaded from it.

A checkpoint folder ``checkpoints/checkpoint-<step>/`` holds
* ``<module>.safetensors`` per module with state: the parameters some phase trains (a LoRA
  student: its adapter weights only) and the module's buffers; EMA copies (the same entries);
  parameter-free modules with buffers (running statistics). Frozen networks (a full student's
  teacher, a LoRA's base UNet, VAE, text encoder) are never saved: resume rebuilds them from the teacher.
* accelerate's optimizer / LR scheduler / RNG files (``save_state`` with model saving switched off;
  ``random_states_<i>.pkl`` per process);
* ``fewstep_state.json``: iteration, each phase's optimizer-step count, batches drawn, each process's
  count of corrupt samples its data stream skipped (``per_process``), and the weight files' bytes and
  sha256 (all a checkpoint written before the full manifest carries);
* ``manifest.json``, written last: name, bytes and sha256 of every other file of the folder.

Saving (``save``): everything is written into a hidden temporary folder, the manifest last, and the
folder is renamed into place; pruning renames an old checkpoint out of the way before deleting it.
So at any moment a kill leaves each ``checkpoint-<step>`` either whole or absent, and only hidden
leftovers (removed by the next save). Loading (``load``) verifies first: a missing, truncated or changed
file (e.g. a truncated ``random_states_0.pkl``, which accelerate would otherwise skip silently) is a
``DamagedCheckpoint`` naming the file, raised before any state is touched; ``resume_latest`` falls back
past damaged checkpoints to the newest whole one.

Test hook: with ``FEWSTEP_TEST_KILL_AT=<moment>:<step>`` in the environment, ``save`` kills its own
process (SIGKILL, as ``kill -9`` would) at that moment of that step's save: ``state`` (accelerate's
files written), ``manifest`` (weights and counters written, no manifest yet), ``rename`` (complete,
not yet renamed into place), ``prune`` (renamed into place, nothing pruned) or ``pruning`` (an old
checkpoint renamed out of the way, not yet deleted). Only tests set it (tests/test_bad_inputs.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fewstep.distill.config import ConfigError
from fewstep.distill.files import atomic_dir, move_aside
from fewstep.distill.modelset import ModelSet, unwrap

CKPT_PREFIX = "checkpoint-"
STATE_FILE = "fewstep_state.json"
MANIFEST_FILE = "manifest.json"
FORMAT = 2  # 1: accelerate's full model state (fewstep before lean checkpoints); 2 with or without manifest.json
LEFTOVERS = (".tmp-", ".old-", ".del-")  # hidden folders a killed save or prune leaves beside the checkpoints
KILL_ENV = "FEWSTEP_TEST_KILL_AT"


class CheckpointError(ConfigError):
    """A checkpoint this run cannot resume from; the message names the file."""


class DamagedCheckpoint(CheckpointError):
    """A file of a checkpoint is missing, truncated or changed since it was written."""

    def __init__(self, folder: Path, name: str, why: str):
        self.folder, self.name, self.why = Path(folder), name, why
        super().__init__(f"{Path(folder) / name}: {why} (the checkpoint is damaged)")


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


# ---- writing -----------------------------------------------------------------------------------------
def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-<step>`` folder of the run, in step order. Each was renamed into place whole;
    whether it is still whole is ``verify``'s question."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for p in root.glob(f"{CKPT_PREFIX}*") if root.is_dir() else []:
        suffix = p.name[len(CKPT_PREFIX):]
        if suffix.isdigit() and p.is_dir():
            found.append((int(suffix), p))
    return sorted(found)


def _kill_point(moment: str, step: int) -> None:
    """The test hook of the module docstring (``FEWSTEP_TEST_KILL_AT``)."""
    if os.environ.get(KILL_ENV) == f"{moment}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def write_state(folder: Path, states: dict[str, dict[str, torch.Tensor]], counters: dict) -> dict:
    """Write the module weights and ``fewstep_state.json`` (counters + the weights' sizes and sha256) into
    ``folder``; the state says a full manifest follows, so a checkpoint that lost it is seen as damaged."""
    weights = {}
    for name, tensors in states.items():
        path = folder / f"{name}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
        path.chmod(0o644)  # safetensors writes owner-only files
        weights[path.name] = {"module": name, "tensors": len(tensors), "bytes": path.stat().st_size,
                              "sha256": _sha256(path)}
    state = {"format": FORMAT, **counters, "weights": weights, "manifest": MANIFEST_FILE}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
    return state


def write_manifest(folder: Path, known: dict[str, str] | None = None) -> dict:
    """``manifest.json``: bytes and sha256 of every file in ``folder`` (``known``: sha256 already computed,
    by file name). Written last, once every other file is complete."""
    files = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name != MANIFEST_FILE:
            files[name] = {"bytes": path.stat().st_size, "sha256": (known or {}).get(name) or _sha256(path)}
    manifest = {"format": 1, "files": files}
    (Path(folder) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return manifest


def remove_leftovers(root: Path) -> None:
    """Hidden folders left beside the checkpoints by a killed save or prune."""
    for prefix in LEFTOVERS:
        for stale in Path(root).glob(f"{prefix}{CKPT_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)


def prune(run_dir: Path, step: int, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints up to ``step`` (the one just written among them). Newer ones
    (left by an earlier attempt, e.g. a damaged one resume fell back past) are not counted, so they
    never push a whole checkpoint out. Each is renamed out of the way before it is deleted."""
    done = [(s, p) for s, p in list_checkpoints(run_dir) if s <= step]
    for _, old in done[:max(0, len(done) - keep)]:
        trash = move_aside(old)
        _kill_point("pruning", step)
        shutil.rmtree(trash, ignore_errors=True)


def per_process(acc, value: int) -> list[int]:
    """``value`` of every process, in process order (a collective: every process calls it). The counters
    file is written by the main process alone; a count each process keeps for itself (the corrupt samples
    its own part of the stream skipped) goes in as this list, and ``own_count`` gives each its entry back."""
    from accelerate.utils import gather_object

    return [int(v) for v in gather_object([int(value)])] if acc.num_processes > 1 else [int(value)]


def own_count(state: dict, key: str, process_index: int) -> int:
    """This process's entry of a ``per_process`` list in a checkpoint's counters (0 where the checkpoint
    predates the key)."""
    values = state.get(key) or []
    return int(values[process_index]) if process_index < len(values) else 0


def save(acc, run_dir: Path, step: int, states: dict[str, dict[str, torch.Tensor]], counters: dict,
         keep: int) -> Path:
    """Write ``checkpoint-<step>`` (the order is the module docstring's) and prune; every process calls it."""
    from accelerate.utils import broadcast_object_list

    root = Path(run_dir) / "checkpoints"
    final = root / f"{CKPT_PREFIX}{step}"
    with ExitStack() as stack:
        tmp = None
        if acc.is_main_process:
            remove_leftovers(root)
            tmp = str(stack.enter_context(atomic_dir(final)))
        tmp = Path(broadcast_object_list([tmp])[0])
        acc.save_state(str(tmp))  # optimizers, LR schedulers, RNG of every process
        _kill_point("state", step)
        acc.wait_for_everyone()  # every process's RNG file is on disk before the manifest lists it
        if acc.is_main_process:
            state = write_state(tmp, states, counters)
            _kill_point("manifest", step)
            write_manifest(tmp, {n: info["sha256"] for n, info in state["weights"].items()})
            _kill_point("rename", step)
        acc.wait_for_everyone()
    if acc.is_main_process:  # the rename happened as the block closed
        _kill_point("prune", step)
        prune(run_dir, step, keep)
    acc.wait_for_everyone()
    return final


# ---- verifying -------------------------------------------------------------------------------------
def _read_json(folder: Path, name: str) -> dict:
    path = Path(folder) / name
    if not path.is_file():
        raise DamagedCheckpoint(folder, name, "missing")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise DamagedCheckpoint(folder, name, "not valid JSON: truncated or overwritten") from None
    if not isinstance(data, dict):
        raise DamagedCheckpoint(folder, name, "not a JSON object")
    return data


def _check_files(folder: Path, listed: dict, source: str) -> None:
    """Every file ``listed`` (name -> {"bytes", "sha256"}) is present with its size and sha256: sizes of
    all first (cheap: a truncated file is named without hashing gigabytes), then the hashes."""
    try:
        want = {name: (int(info["bytes"]), str(info["sha256"])) for name, info in listed.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DamagedCheckpoint(folder, source, "its file list is malformed") from None
    for name, (size, _) in sorted(want.items()):
        path = Path(folder) / name
        if not path.is_file():
            raise DamagedCheckpoint(folder, name, f"missing; {source} lists it")
        got = path.stat().st_size
        if got != size:
            what = f"truncated: {got} of {size} bytes" if got < size else f"{got} bytes, {size} written"
            raise DamagedCheckpoint(folder, name, what)
    for name, (_, digest) in sorted(want.items()):
        if _sha256(Path(folder) / name) != digest:
            raise DamagedCheckpoint(folder, name, f"corrupt: its sha256 differs from {source}")


def _check_pickles(folder: Path) -> None:
    """A checkpoint without a full manifest: its RNG files must at least unpickle (accelerate swallows
    an RNG file it cannot read and trains on with fresh random state)."""
    for path in sorted(Path(folder).glob("random_states_*.pkl")):
        try:
            torch.load(path, weights_only=False)
        except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as e:
            raise DamagedCheckpoint(folder, path.name, f"unreadable: {type(e).__name__}") from None


def verify(folder: Path) -> dict:
    """Check that the checkpoint ``folder`` is whole before anything is loaded from it, and return its
    ``fewstep_state.json``: every file ``manifest.json`` lists, by size and sha256; a checkpoint written
    before the full manifest, as far as its own list goes (the weight files) plus readable RNG files.
    Raises ``DamagedCheckpoint`` naming the first bad file."""
    folder = Path(folder)
    if (folder / MANIFEST_FILE).is_file():
        _check_files(folder, _read_json(folder, MANIFEST_FILE).get("files"), MANIFEST_FILE)
        return _read_json(folder, STATE_FILE)
    state = _read_json(folder, STATE_FILE)
    if state.get("manifest"):
        raise DamagedCheckpoint(folder, MANIFEST_FILE, f"missing; {STATE_FILE} says it was written")
    if state.get("format") == FORMAT:
        _check_files(folder, state.get("weights"), STATE_FILE)
        _check_pickles(folder)
    return state


def newest_good(run_dir: Path) -> tuple[Path | None, list[DamagedCheckpoint]]:
    """The newest checkpoint that verifies (None if none does), and what was wrong with each newer one."""
    damaged = []
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            verify(path)
        except DamagedCheckpoint as e:
            damaged.append(e)
            continue
        return path, damaged
    return None, damaged


def checkpoint_at(run_dir: Path, step: int) -> Path:
    """The checkpoint written at ``step`` (``fewstep export --step``), verified; a CheckpointError naming the
    steps the run has when there is none at ``step``, or naming the damaged file."""
    found = dict(list_checkpoints(run_dir))
    if step not in found:
        have = ", ".join(map(str, found)) or "none"
        raise CheckpointError(f"--step {step}: {run_dir} has no checkpoint at step {step} (checkpoints at: {have})")
    verify(found[step])
    return found[step]


def resume_latest(run_dir: Path) -> tuple[Path | None, str | None]:
    """What ``--resume latest`` (and ``fewstep export``) load: the newest checkpoint that verifies, and a
    one-line note naming the damaged file of each newer checkpoint passed over (None: none was).
    (None, None) when the run has no checkpoint; a CheckpointError naming the files when every one is
    damaged, since falling back to a fresh start would silently throw the run away."""
    path, damaged = newest_good(run_dir)
    if path is None and damaged:
        raise CheckpointError(f"every checkpoint of {run_dir} is damaged: " + "; ".join(map(str, damaged)))
    if not damaged:
        return path, None
    skipped = "; ".join(f"{e.folder / e.name} ({e.why})" for e in damaged)
    return path, f"damaged checkpoint skipped: {skipped}; falling back to {path}"


# ---- loading ---------------------------------------------------------------------------------------
def read_state(folder: Path) -> dict:
    """``fewstep_state.json`` of a checkpoint written in this format."""
    state = _read_json(folder, STATE_FILE)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{Path(folder) / STATE_FILE}: written by an older fewstep (full accelerate state, "
                              f"format {state.get('format', 1)}); resume it with that version or start the run afresh")
    return state


def load_weights(folder: Path, state: dict, models: ModelSet, trained: dict[str, set[str]]) -> None:
    """Copy every saved tensor into the run's modules (the files were verified by ``verify``)."""
    folder = Path(folder)
    expected = {n: set(t) for n, t in module_states(models, trained).items()}
    saved = {info["module"]: fname for fname, info in state["weights"].items()}
    if set(saved) != set(expected):
        raise CheckpointError(f"{folder}: holds weights of modules {sorted(saved)}, this run has state in "
                              f"{sorted(expected)} (a different method or student config?)")
    for fname, info in state["weights"].items():
        path = folder / fname
        tensors = load_file(str(path))
        if set(tensors) != expected[info["module"]]:
            diff = sorted(set(tensors) ^ expected[info["module"]])
            raise CheckpointError(f"{path}: its tensors differ from what this run trains in module "
                                  f"{info['module']!r}, e.g. {diff[:3]} (a different student config?)")
        try:
            unwrap(models.modules[info["module"]]).load_state_dict(tensors, strict=False)
        except RuntimeError as e:  # shape mismatch: e.g. another LoRA rank
            raise CheckpointError(f"{path}: does not fit module {info['module']!r}: "
                                  f"{str(e).splitlines()[-1]}") from None


def check_phases(folder: Path, phases: list[str]) -> dict:
    """The checkpoint's state, if it is of this format and was written for these phases (cheap: the
    command line asks before the teacher is loaded)."""
    state = read_state(folder)
    if set(state["phase_steps"]) != set(phases):
        raise CheckpointError(f"{folder}: written for phases {sorted(state['phase_steps'])}, "
                              f"this method has {sorted(phases)} (another method's run?)")
    return state


def load(acc, folder: Path, models: ModelSet, trained: dict[str, set[str]], phases: list[str],
         verified: bool = False) -> dict:
    """Verify the checkpoint (unless the caller just did), check that it fits this run (phases, one RNG
    file for this process), then restore weights and accelerate's state; returns the counters. Every
    check comes before the first tensor is loaded: a refused checkpoint leaves the run untouched."""
    folder = Path(folder)
    if not verified:
        verify(folder)
    state = check_phases(folder, phases)
    rng = folder / f"random_states_{acc.process_index}.pkl"
    if not rng.is_file():
        written = len(list(folder.glob("random_states_*.pkl")))
        raise CheckpointError(f"{rng}: missing: the checkpoint was written by {written} process(es), this run "
                              f"has {acc.num_processes}; resume with the same number of processes")
    load_weights(folder, state, models, trained)
    try:
        acc.load_state(str(folder))
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{folder}: accelerate could not restore its optimizer / scheduler / RNG state "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return state
