"""The one training loop (accelerate). Nothing here knows any method.

Each iteration runs the method's phases that are due (``distill.phases``), in declared order: a
phase freezes every other phase's roles, runs ``grad_accum`` micro-batches through
``method.loss`` (under the mixed-precision autocast), clips, steps its own optimizer and LR
schedule, and passes its detached hand-over to the later phases. Then EMA pairs are updated.
Checkpoints (``distill.checkpoints``) hold trainable state only, with a manifest of every file, and
are written to a temporary folder and renamed, so a kill never leaves one that ``--resume latest``
would pick up half-written; a resumed run marks ``logs.jsonl`` so ``distill.runlog.read_logs`` keeps
each step's records once.
Validations write a sample grid and, with an injected ``distill.watch.Validator``, measure a metric,
keep the best export and stop the run after ``validation.patience`` worse validations in a row; a
validation at a checkpoint's step runs before the checkpoint, so the checkpoint carries its result.
Only the main process writes logs, grids, trackers (``distill.trackers``) and the checkpoint's shared
files; every process writes its own RNG state.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast_object_list, set_seed
from tqdm.auto import tqdm

from fewstep.distill import checkpoints
from fewstep.distill.checkpoints import CKPT_PREFIX, list_checkpoints  # noqa: F401 (re-exported)
from fewstep.distill.config import (VALIDATION_METRICS, ConfigError, DivergedError, RunConfig, TrainConfig,
                                    check_trained_steps, check_validation, save_config, to_dict, validation_steps,
                                    watched_metric)
from fewstep.distill.data import build_dataset, collate, has_images, prepare_loader, take_corrupt
from fewstep.distill.lora_init import init_lora_file
from fewstep.distill.methods.base import Method
from fewstep.distill.methods.registry import REGISTRY
from fewstep.distill.modelset import ModelSet, ema_update, unwrap
from fewstep.distill.phases import (PhasePlan, build_optimizer, freeze_all_but, keep_implementation, plan_phases,
                                    select_data)
from fewstep.distill.restore import validation_batch
from fewstep.distill.runlog import LOG_FILE, RESUMED, append_record
from fewstep.distill.sampling import save_grid
from fewstep.distill.trackers import (PROJECT, attach_trackers, check_trackers, hyperparameters, init_kwargs, log_grid,
                                      logging_dir, scalars, tracker_names)
from fewstep.distill.watch import BEST_DIR, Validator, Watch, finite_or_none

FROZEN_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class StreamSampler(torch.utils.data.Sampler):
    """Endless indices: in order (procedural data is already random) or reshuffled every epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int):
        self.n, self.shuffle, self.seed = n, shuffle, seed

    def __len__(self) -> int:
        return 2**31 - 1

    def __iter__(self):
        epoch = 0
        while True:
            if self.shuffle:
                yield from np.random.default_rng([self.seed, epoch]).permutation(self.n).tolist()
            else:
                yield from range(self.n)
            epoch += 1


def use_xformers_if_available(models: ModelSet, device: torch.device) -> bool:
    """xformers attention for every UNet of the run, only on CUDA and only if it is installed (an
    optional extra: torch 2's SDPA is the default and needs nothing)."""
    if device.type != "cuda":
        return False
    try:
        import xformers  # noqa: F401
    except ImportError:
        return False
    for m in models.modules.values():
        unet = getattr(m, "unet", None)
        if unet is not None:
            unet.enable_xformers_memory_efficient_attention()
    return True


def checkpoint_activations(models: ModelSet, names: list[str]) -> list[str]:
    """Activation checkpointing (``train.gradient_checkpointing``) of the trained modules ``names``:
    diffusers' ``enable_gradient_checkpointing`` on a diffusers model (a Denoiser's UNet: a LoRA
    student's shared UNet, a full student, a full fake score; a VAE), transformers'
    ``gradient_checkpointing_enable`` on a text encoder; both non-reentrant, so LoRA weights inside a
    checkpointed block get gradients though the block's input needs none (torch.utils.checkpoint docs).

    A checkpointed block keeps only its inputs and recomputes the rest during the backward. Both
    libraries check ``torch.is_grad_enabled()`` first, so a frozen teacher or target called under
    no_grad (one sharing the LoRA student's UNet too) runs exactly as before. A module whose class sets
    ``checkpointing_exempt`` (its reason, e.g. the GAN head) is left as it is; any other module that
    cannot checkpoint is a ConfigError (the knob never silently does nothing). Returns the names done."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    done = []
    for name in names:
        module = unwrap(models.modules[name])
        net = getattr(module, "unet", module)  # a Denoiser: its UNet
        if isinstance(net, ModelMixin) and net._supports_gradient_checkpointing:
            net.enable_gradient_checkpointing()
        elif isinstance(net, PreTrainedModel) and net.supports_gradient_checkpointing:
            if hasattr(net, "activation_checkpointing_enable"):  # transformers 5's name for it
                net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif getattr(net, "checkpointing_exempt", None):
            continue
        else:
            raise ConfigError(f"train.gradient_checkpointing: the trained module {name!r} "
                              f"({type(net).__name__}) cannot checkpoint activations; set it to false")
        done.append(name)
    return done


def compile_unets(models: ModelSet) -> list[str]:
    """``train.compile``: every module's UNet (a Denoiser's; a LoRA student's shared one carries its teacher
    and target views) compiled in place with ``nn.Module.compile``, so the plain module and its DDP
    wrapper both run the compiled forward and state-dict keys stay as they are. Static shapes: the few
    distinct calls of a step (student with grad, target and teacher without, CFG's doubled batch) each
    compile once instead of one dynamic-shape graph serving all. Returns the module names compiled."""
    from diffusers import ModelMixin

    done = []
    for name, module in models.modules.items():
        net = getattr(unwrap(module), "unet", None)
        if isinstance(net, ModelMixin):
            net.compile(dynamic=False)
            done.append(name)
    if not done:
        raise ConfigError("train.compile: this run has no UNet to compile; set it to false")
    return done


def channels_last(models: ModelSet) -> int:
    """``train.channels_last``: every module of the run in channels_last memory format, in place (the
    Parameter objects stay, so optimizer lists built from them hold). Returns the 4-D tensors converted."""
    nets = [unwrap(m) for m in models.modules.values()]
    for net in nets:
        net.to(memory_format=torch.channels_last)
    return sum(p.dim() == 4 for net in nets for p in net.parameters())


def eager_sampling(compiled: bool):
    """Where ``train.compile`` is on, sampling (the validation grid and metrics, the export's grid) runs the
    UNets eagerly (``torch.compiler.set_stance("force_eager")``): its batch shapes differ from the
    training step's, and each would compile a graph of its own, used for a few calls per validation
    (on this CPU: tens of seconds per shape with inductor's cache warm, minutes from cold)."""
    return torch.compiler.set_stance("force_eager") if compiled else nullcontext()


def make_accelerator(tc: TrainConfig, run_dir: Path | None = None) -> Accelerator:
    """Mixed precision and DDP settings from the config, and its trackers when given the run folder they
    write into (without it, ``Trainer`` attaches them). The launcher's world (DDP, FSDP, DeepSpeed,
    processes, machines) comes from ``accelerate launch`` (configs/accelerate/)."""
    handlers = []
    if tc.ddp_find_unused_parameters or tc.ddp_static_graph:
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=tc.ddp_find_unused_parameters,
                                                      static_graph=tc.ddp_static_graph))
    if run_dir is None:
        return Accelerator(mixed_precision=tc.mixed_precision, kwargs_handlers=handlers)
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(logging_dir(run_dir)))
    return Accelerator(mixed_precision=tc.mixed_precision, kwargs_handlers=handlers,
                       log_with=tracker_names(tc.report_to) or None, project_config=project)


def check_strategy(distributed: DistributedType, modules: list[str], grad_accum: int) -> None:
    """What the loop supports of the launcher's strategy, refused in one line before any step.
    FSDP shards the weights, but the EMA update, the validation grid (main process only), the lean
    checkpoint and the export read whole weights from the plain module. DeepSpeed: accelerate makes one
    engine per prepared model ("You can't use same Accelerator() instance with multiple models"), and its
    engine steps inside every ``accelerator.backward`` (``sync_gradients`` is always on here), so the
    loop's own micro-batch accumulation would step each micro-batch."""
    if distributed == DistributedType.FSDP:
        raise ConfigError("accelerate config: FSDP is not supported by fewstep's loop yet (EMA, validation grids, "
                          "checkpoints and export read whole weights); launch with configs/accelerate/multi_gpu.yaml "
                          "or deepspeed_zero2.yaml")
    if distributed == DistributedType.DEEPSPEED:
        if len(modules) > 1:
            raise ConfigError(f"accelerate config: DeepSpeed trains one module per run, this method trains "
                              f"{', '.join(modules)}; launch with configs/accelerate/multi_gpu.yaml")
        if grad_accum > 1:
            raise ConfigError(f"train.grad_accum: {grad_accum} is not supported under DeepSpeed (its engine steps at "
                              "every backward); set 1 and raise train.batch_size")


def check_precision(mixed_precision: str, cpu_forced: bool) -> None:
    """fp16 needs a GPU: accelerate enables no fp16 autocast on CPU, while the loop stores the frozen
    networks in the mixed-precision dtype, so the first step would mix float and half (bf16 works on CPU)."""
    if mixed_precision == "fp16" and (cpu_forced or not torch.cuda.is_available()):
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU (no fp16 autocast on CPU); "
                          "use bf16 or no on this machine")


class Checked(NamedTuple):
    """What ``preflight`` built and checked; the Trainer takes it as it is instead of building it again."""

    method: Method
    plans: list[PhasePlan]
    dataset: torch.utils.data.Dataset
    validation_steps: list[int] | None = None  # step counts validation metrics use (None: the recipe's)


def preflight(cfg: RunConfig, method: Method | None = None) -> Checked:
    """Everything about a run that can be checked before a model is loaded: the method's phases
    against ``train.phases`` (names, ranges), the data source (files are read and validated here),
    whether it has the images each phase needs, the validation settings, and the ``eval.steps`` and
    ``validation.steps`` the run will measure its student at against the step counts it is trained for."""
    check_validation(cfg)
    check_trackers(cfg.train.report_to)  # a missing tensorboard / wandb is named before the teacher loads
    check_precision(cfg.train.mixed_precision, os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"))
    if cfg.student.init_lora:
        if cfg.student.kind != "lora":
            raise ConfigError("student.init_lora: starts a LoRA student's adapter; set student.kind: lora")
        init_lora_file(cfg.student.init_lora)
    method = method or REGISTRY[cfg.method.name](cfg.method.config, cfg.student)
    plans = plan_phases(method.phases(), cfg.train)
    dataset = build_dataset(cfg.data)
    if cfg.data.source == "cache":  # made by this run's teacher, else its latents are another VAE's
        dataset.check_teacher(cfg.model, cfg.train.seed, cfg.data.resolution)
    needy = [p.name for p in plans if p.phase.data == "batch"]
    if needy and not has_images(cfg.data):
        raise ConfigError(f"data.source: {cfg.data.source!r} has no images, but the {', '.join(needy)} phase(s) of "
                          f"method {cfg.method.name!r} train on image batches")
    trained = method.trained_steps()
    if cfg.eval.enabled:
        check_trained_steps("eval.steps", cfg.eval.steps, trained)
    if cfg.validation.metrics:
        check_trained_steps("validation.steps", cfg.validation.steps, trained)
    return Checked(method, plans, dataset, validation_steps(cfg, trained))


class Trainer:
    def __init__(self, cfg: RunConfig, pipe, accelerator: Accelerator | None = None, method: Method | None = None,
                 checked: Checked | None = None, validator: Validator | None = None):
        self.cfg, tc = cfg, cfg.train
        self.run_dir = cfg.run_dir
        checked = checked or preflight(cfg, method)  # the command line passes what it already checked
        self.method: Method = checked.method
        self.plans: list[PhasePlan] = checked.plans
        self.acc = accelerator or make_accelerator(tc, self.run_dir)
        attach_trackers(self.acc, tc.report_to, self.run_dir)  # an accelerator made without the run folder
        set_seed(tc.seed)  # one stream on every process: distill.rng slices each its part of the global batch
        self.models: ModelSet = self.method.build(pipe).to(self.acc.device)
        self.method.setup(self.models, checked.dataset)  # e.g. teacher pairs made once from the data's prompts
        use_xformers_if_available(self.models, self.acc.device)
        named = {r: self.models.trainable_parameters(r) for p in self.plans for r in p.phase.modules}
        self.params = {p.name: [q for r in p.phase.modules for _, q in named[r]] for p in self.plans}
        self.trained = checkpoints.trained_names(self.models, named)
        self._check_ddp_settings()
        if tc.gradient_checkpointing:  # before prepare: set on the plain modules
            checkpoint_activations(self.models, sorted(self.trained))
        check_strategy(self.acc.distributed_type, sorted(self.trained), tc.grad_accum)
        if tc.mixed_precision in FROZEN_DTYPES:
            self.models.cast_frozen(FROZEN_DTYPES[tc.mixed_precision], {id(q) for ps in self.params.values() for q in ps})
        if tc.channels_last:  # before compiling: the graphs trace the layout
            channels_last(self.models)
        if tc.compile:  # after the casts and checkpointing it must trace
            compile_unets(self.models)
        names = sorted(self.trained)
        built = [build_optimizer(self.params[p.name], p, tc.steps, tc.adamw_impl) for p in self.plans]
        prepared = self.acc.prepare(*[self.models.modules[n] for n in names], *[o for o, _ in built],
                                    *[s for _, s in built])
        for n, m in zip(names, prepared):
            self.models.modules[n] = m
        k = len(names)
        self.opts = {p.name: o for p, o in zip(self.plans, prepared[k:k + len(built)])}
        self.scheds = {p.name: s for p, s in zip(self.plans, prepared[k + len(built):])}
        self.phase_modules = {p.name: sorted({self.models.module_of(r) for r in p.phase.modules}) for p in self.plans}
        # Module weights are written by distill.checkpoints (lean, safetensors), not by accelerate.
        self.acc.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
        self.acc.register_load_state_pre_hook(lambda models, inp: models.clear())
        dataset = checked.dataset
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=tc.batch_size, collate_fn=collate, num_workers=cfg.data.num_workers, drop_last=True,
            # a streaming source (webdataset) orders and splits itself: no sampler
            sampler=None if isinstance(dataset, torch.utils.data.IterableDataset) else
            StreamSampler(len(dataset), cfg.data.source != "procedural", tc.seed),
            # Its own generator: creating an iterator then draws no global RNG, so a resumed run
            # sees the same noise as an uninterrupted one.
            generator=torch.Generator().manual_seed(tc.seed))
        self.loader = prepare_loader(self.acc, self.loader)  # a streaming source is not split a second time
        self.val_batch = validation_batch(cfg)
        self.step = 0  # iterations done
        self.phase_steps = {p.name: 0 for p in self.plans}  # optimizer steps each phase has taken
        self.drawn = 0  # data batches consumed (resume skips exactly these)
        self.corrupt_skipped = 0  # corrupt samples the data source skipped (logged as data/corrupt when any)
        self.validator = validator  # main process only: the others learn a stop decision by broadcast
        metric = watched_metric(cfg)
        self.watch = Watch(metric, VALIDATION_METRICS[metric], cfg.validation.patience,
                           validator.protocol if validator is not None else "")
        self.stopped: str | None = None  # the reason, when the alarm stopped the run
        self.validated_at: int | None = None  # the step of the latest validation (a resumed end is not redone)
        self.postfix: dict[str, str] = {}  # the latest validation's numbers, shown next to the losses
        self.resumed_from: Path | None = None  # the checkpoint loaded, until train() marks the log

    def _check_ddp_settings(self) -> None:
        """Phases that train different parameters of one module need DDP to find unused ones."""
        if self.acc.num_processes == 1 or self.cfg.train.ddp_find_unused_parameters:
            return
        for module in self.trained:
            sets = {frozenset(id(q) for r in p.phase.modules if self.models.module_of(r) == module
                              for _, q in self.models.trainable_parameters(r)) for p in self.plans}
            if len(sets - {frozenset()}) > 1:
                raise ConfigError(f"train.ddp_find_unused_parameters: phases train different parts of module "
                                  f"{module!r}; set it to true for multi-process training")

    # ---- checkpoints -------------------------------------------------------------------------
    def _resume_hint(self) -> str:
        done = list_checkpoints(self.run_dir)
        if not done:
            return "no earlier checkpoint to resume from"
        return f"last good checkpoint: {done[-1][1]} (--resume latest, e.g. with a lower train.lr)"

    def _diverged(self, what: str) -> DivergedError:
        return DivergedError(f"training diverged: {what} at step {self.step}; nothing was saved; {self._resume_hint()}")

    def _finite_states(self) -> dict:
        """What a checkpoint keeps (``checkpoints.module_states``); a non-finite tensor ends the run."""
        states = checkpoints.module_states(self.models, self.trained)
        bad = checkpoints.first_non_finite(states)
        if bad is not None:
            raise self._diverged(f"{bad} is not finite")
        return states

    def save_checkpoint(self) -> Path:
        """Write checkpoint-<step>; refused (nothing written, nothing pruned) if any saved tensor is not finite."""
        states = self._finite_states()
        counters = {"step": self.step, "phase_steps": self.phase_steps, "batches_drawn": self.drawn,
                    "corrupt_skipped": checkpoints.per_process(self.acc, self.corrupt_skipped)}
        if self.validator is not None:
            counters["validation"] = {**self.watch.as_state(), "validated_at": self.validated_at}
        return checkpoints.save(self.acc, self.run_dir, self.step, states, counters,
                                self.cfg.train.checkpoints_total_limit)

    def load_checkpoint(self, path: Path, verified: bool = False) -> None:
        """Continue from ``path`` (verified first unless ``verified``: ``checkpoints.resume_latest`` did)."""
        state = checkpoints.load(self.acc, path, self.models, self.trained, list(self.phase_steps), verified)
        for opt in self.opts.values():
            keep_implementation(opt)
        self.step, self.drawn = state["step"], state["batches_drawn"]
        self.phase_steps = dict(state["phase_steps"])
        self.corrupt_skipped = checkpoints.own_count(state, "corrupt_skipped", self.acc.process_index)
        self.watch = self.watch.resumed(state.get("validation"))  # absent in older checkpoints: a fresh best
        self.validated_at = (state.get("validation") or {}).get("validated_at")  # read by every process
        self.resumed_from = Path(path)

    # ---- training ----------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        """One record into logs.jsonl and its numbers into the trackers (main process only)."""
        if self.acc.is_main_process:
            append_record(self.run_dir / LOG_FILE, record)
            values = scalars(record)
            if values and self.acc.trackers:
                self.acc.log(values, step=record["step"])

    def validate(self) -> bool:
        """The sample grid, then (with a validator) the metrics; True when the alarm stops the run."""
        self._finite_states()  # diverged weights are reported, not sampled (every process holds the same)
        self.validated_at, stop = self.step, False
        if self.acc.is_main_process:
            with eager_sampling(self.cfg.train.compile):
                with torch.no_grad(), self.acc.autocast():
                    images = self.method.preview(self.models, self.val_batch, self.cfg.validation.seed)
                grid = self.run_dir / "samples" / f"step-{self.step:06d}.png"
                save_grid(images, grid)
                log_grid(self.acc.trackers, grid, self.step)
                if self.validator is not None:
                    stop = self._measure()
        if self.cfg.validation.patience and self.acc.num_processes > 1:
            stop = broadcast_object_list([stop])[0]
        return stop

    def _measure(self) -> bool:
        """Measure, log, keep the best export, update the alarm; True when it fires."""
        v, device = self.cfg.validation, self.acc.device
        # Measuring and exporting draw no randomness the training would see (resume stays bitwise).
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with self.acc.autocast():
                records = self.validator.measure(self.method, self.models, self.step)
            records = [{k: finite_or_none(x) for k, x in r.items()} for r in records]
            for r in records:
                self._log({"step": self.step, "validation": r})
            self.watch = self.watch.observe(records[0].get(self.watch.metric), self.step)
            if v.keep_best and self.watch.best_step == self.step:
                self.validator.keep_best(self.method, self.models, self.step, records[0], self.val_batch["captions"])
        self.postfix = {f"val/{k}": f"{x:.4g}" for k, x in records[0].items()
                        if isinstance(x, float) and k != "seconds"}
        if not self.watch.should_stop:
            return False
        best = self.run_dir / BEST_DIR if v.keep_best and self.watch.best_step is not None else None
        self.stopped = self.watch.stop_reason(self.step, best)
        self._log({"step": self.step, "event": "stopped", "reason": self.stopped, **self.watch.as_state()})
        return True

    def _draw(self, batches) -> dict:
        self.drawn += 1
        batch = next(batches)
        self.corrupt_skipped += take_corrupt(batch)  # this process's count of undecodable samples skipped
        return batch

    def _phase_step(self, plan: PhasePlan, batches, handover: dict) -> dict:
        """One optimizer step of ``plan``'s phase; adds its hand-over to ``handover``."""
        tc, opt, name = self.cfg.train, self.opts[plan.name], plan.name
        freeze_all_but(self.params, name)
        self.models.active = frozenset(plan.phase.modules)
        modules = [self.models.modules[n] for n in self.phase_modules[name]]
        given = dict(handover)  # what earlier phases of this iteration handed over
        opt.zero_grad(set_to_none=True)
        total, logs = 0.0, {}
        for i in range(tc.grad_accum):
            batch = {**select_data(plan.phase.data, lambda: self._draw(batches)), "handover": given}
            with ExitStack() as stack:
                if i < tc.grad_accum - 1:  # no gradient all-reduce until the last micro-batch
                    for m in modules:
                        stack.enter_context(self.acc.no_sync(m))
                with self.acc.autocast():
                    out = self.method.loss(self.models, batch, name, self.step)
                if not torch.isfinite(out.loss):
                    raise self._diverged(f"the {name} phase's loss is {out.loss.item()}")
                self.acc.backward(out.loss / tc.grad_accum)
            total += out.loss.item() / tc.grad_accum
            logs = out.logs
            handover.update({k: v.detach() for k, v in out.handover.items()})
        if plan.max_grad_norm > 0:
            self.acc.clip_grad_norm_(self.params[name], plan.max_grad_norm)
        opt.step()
        self.scheds[name].step()
        opt.zero_grad(set_to_none=True)  # no stale gradients held while other phases run
        self.models.active = frozenset()
        self.phase_steps[name] += 1
        return {f"{name}/loss": total, f"{name}/lr": self.scheds[name].get_last_lr()[0],
                **{f"{name}/{k}": v for k, v in logs.items()}}

    def train(self) -> ModelSet:
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
        if self.acc.log_with:  # main process only (an accelerate main-process method)
            resumed = self.step if self.resumed_from is not None else None
            self.acc.init_trackers(PROJECT, config=hyperparameters(to_dict(self.cfg)),
                                   init_kwargs=init_kwargs(self.cfg.name, self.run_dir, resumed))
        try:
            return self._train()
        finally:
            # Trackers closed here, not by accelerate's end_training: it also destroys the process
            # group, which the command line's export and a second run in the same process still need.
            for tracker in self.acc.trackers:
                tracker.finish()
            self.acc.trackers = []

    def _train(self) -> ModelSet:
        tc = self.cfg.train
        if self.resumed_from is not None:  # read_logs drops what an interrupted attempt logged after this step
            self._log({"event": RESUMED, "step": self.step, "from": str(self.resumed_from)})
            self.resumed_from = None
        batches = iter(self.acc.skip_first_batches(self.loader, self.drawn) if self.drawn else self.loader)
        # closed on any exit, so an error (e.g. a diverged run) prints on a line of its own
        with tqdm(total=tc.steps, initial=self.step, desc=self.cfg.name, disable=not self.acc.is_main_process) as bar:
            latest = {}  # each phase's most recent logs
            losses: dict[str, str] = {}  # shown in the progress bar, with the latest validation's numbers
            t0, logged = time.perf_counter(), self.step
            seconds: dict[str, float] = {}  # time spent in each phase since the last record
            stop = False
            while self.step < tc.steps and not stop:
                handover = {}
                for plan in self.plans:
                    if plan.due(self.step):
                        t = time.perf_counter()
                        for _ in range(plan.repeats):
                            latest[plan.name] = self._phase_step(plan, batches, handover)
                        seconds[plan.name] = seconds.get(plan.name, 0.0) + time.perf_counter() - t
                freeze_all_but(self.params, None)
                for target, source, decay in self.models.ema:
                    ema_update(self.models.modules[target], self.models.modules[source], decay)
                self.step += 1
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    record = {k: v for p in self.plans for k, v in latest.get(p.name, {}).items()}
                    record["step"] = self.step
                    # per iteration of this window (the last window can be shorter than log_every)
                    record["sec_per_step"] = (time.perf_counter() - t0) / (self.step - logged)
                    record.update({f"{n}/sec_per_step": sec / (self.step - logged) for n, sec in seconds.items()})
                    if self.corrupt_skipped:
                        record["data/corrupt"] = self.corrupt_skipped
                    if self.acc.device.type == "cuda":  # this process's peak since the run began
                        record["mem/gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.acc.device) / 2**30
                    t0, logged, seconds = time.perf_counter(), self.step, {}
                    self._log(record)
                    losses = {k: f"{v:.4g}" for k, v in record.items() if k.endswith("loss")}
                    bar.set_postfix({**losses, **self.postfix})
                if tc.validation_every and self.step % tc.validation_every == 0 and self.step < tc.steps:
                    stop = self.validate()  # the alarm: the final checkpoint below is then this step's
                    bar.set_postfix({**losses, **self.postfix})
                if not stop and tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self.step < tc.steps:
                    self.save_checkpoint()
            if not stop and self.validated_at != self.step:  # (a resumed finished run was validated)
                self.validate()  # before the final checkpoint, so that it carries this validation's result
        self.save_checkpoint()
        return self.models
