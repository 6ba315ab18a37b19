"""The one training loop (accelerate). Nothing here knows any method.

Per step, each of the method's phases runs ``grad_accum`` micro-batches through ``method.loss``,
clips, steps its own optimizer and LR schedule; then EMA pairs are updated. Checkpoints are
accelerate states written to a temporary folder and renamed, so a kill never leaves a checkpoint
that ``--resume latest`` would pick up half-written.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from fewstep.distill.config import RunConfig, save_config
from fewstep.distill.data import build_dataset, collate
from fewstep.distill.methods.base import Method
from fewstep.distill.methods.registry import REGISTRY
from fewstep.distill.modelset import ModelSet, ema_update
from fewstep.distill.sampling import save_grid

CKPT_PREFIX = "checkpoint-"


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


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints (renamed into place) in step order."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for p in root.glob(f"{CKPT_PREFIX}*") if root.is_dir() else []:
        suffix = p.name[len(CKPT_PREFIX):]
        if suffix.isdigit() and (p / "fewstep_state.json").is_file():
            found.append((int(suffix), p))
    return sorted(found)


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


class Trainer:
    def __init__(self, cfg: RunConfig, pipe, accelerator: Accelerator | None = None):
        self.cfg, tc = cfg, cfg.train
        self.run_dir = cfg.run_dir
        self.acc = accelerator or Accelerator(mixed_precision=tc.mixed_precision)
        set_seed(tc.seed, device_specific=True)
        self.method: Method = REGISTRY[cfg.method.name](cfg.method.config, cfg.student)
        self.models: ModelSet = self.method.build(pipe).to(self.acc.device)
        use_xformers_if_available(self.models, self.acc.device)
        names = sorted({n for ph in self.method.phases for n in self.method.trainable(self.models, ph)})
        self.opts, self.scheds = {}, {}
        for ph in self.method.phases:
            params = [p for n in self.method.trainable(self.models, ph) for p in self.models[n].parameters()
                      if p.requires_grad]
            lr = tc.phase_lr.get(ph, tc.lr)
            self.opts[ph] = torch.optim.AdamW(params, lr=lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                              weight_decay=tc.weight_decay)
            self.scheds[ph] = get_scheduler(tc.lr_schedule, self.opts[ph], num_warmup_steps=tc.lr_warmup_steps,
                                            num_training_steps=tc.steps)
        prepared = self.acc.prepare(*[self.models[n] for n in names], *self.opts.values(), *self.scheds.values())
        for n, m in zip(names, prepared):
            self.models[n] = m
        k = len(names)
        self.opts = dict(zip(self.opts, prepared[k:k + len(self.opts)]))
        self.scheds = dict(zip(self.scheds, prepared[k + len(self.opts):]))
        self.trained = names
        for n in sorted(set(self.models.modules) - set(names)):  # EMA copies, statistics
            if any(True for _ in self.models[n].state_dict()):
                self.acc.register_for_checkpointing(self.models[n])
        dataset = build_dataset(cfg.data)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=tc.batch_size, sampler=StreamSampler(len(dataset), cfg.data.source != "procedural",
                                                                     tc.seed),
            collate_fn=collate, num_workers=cfg.data.num_workers, drop_last=True,
            # Its own generator: creating an iterator then draws no global RNG, so a resumed run
            # sees the same noise as an uninterrupted one.
            generator=torch.Generator().manual_seed(tc.seed))
        self.loader = self.acc.prepare(self.loader)
        self.val_batch = self._validation_batch()
        self.step = 0

    def _validation_batch(self) -> dict:
        v = self.cfg.validation
        ds = build_dataset(self.cfg.data, seed=v.seed) if self.cfg.data.source == "procedural" else \
            build_dataset(self.cfg.data)
        items = [ds[i % len(ds)] for i in range(v.num_images)]
        batch = collate(items)
        if v.prompts:
            batch["captions"] = [v.prompts[i % len(v.prompts)] for i in range(v.num_images)]
        return batch

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        root = self.run_dir / "checkpoints"
        final = root / f"{CKPT_PREFIX}{self.step}"
        tmp = root / f".tmp-{CKPT_PREFIX}{self.step}"
        if self.acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        if self.acc.is_main_process:
            (tmp / "fewstep_state.json").write_text(json.dumps({"step": self.step}))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            done = list_checkpoints(self.run_dir)
            for _, old in done[:max(0, len(done) - self.cfg.train.checkpoints_total_limit)]:
                shutil.rmtree(old)
        self.acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        self.acc.load_state(str(path))
        self.step = json.loads((path / "fewstep_state.json").read_text())["step"]

    # ---- training ----------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if self.acc.is_main_process:
            with open(self.run_dir / "logs.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def validate(self) -> None:
        if not self.acc.is_main_process:
            return
        with torch.no_grad():
            images = self.method.preview(self.models, self.val_batch, self.cfg.validation.seed)
        save_grid(images, self.run_dir / "samples" / f"step-{self.step:06d}.png")

    def _phase_step(self, phase: str, batches) -> dict:
        tc, opt = self.cfg.train, self.opts[phase]
        opt.zero_grad(set_to_none=True)
        modules = [self.models[n] for n in self.method.trainable(self.models, phase)]
        total, logs = 0.0, {}
        for i in range(tc.grad_accum):
            batch = next(batches)
            with ExitStack() as stack:
                if i < tc.grad_accum - 1:  # no gradient all-reduce until the last micro-batch
                    for m in modules:
                        stack.enter_context(self.acc.no_sync(m))
                out = self.method.loss(self.models, batch, phase, self.step)
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(f"{phase} loss is {out.loss.item()} at step {self.step}")
                self.acc.backward(out.loss / tc.grad_accum)
            total += out.loss.item() / tc.grad_accum
            logs = out.logs
        if tc.max_grad_norm > 0:
            self.acc.clip_grad_norm_([p for m in modules for p in m.parameters()], tc.max_grad_norm)
        opt.step()
        self.scheds[phase].step()
        return {f"{phase}/loss": total, f"{phase}/lr": self.scheds[phase].get_last_lr()[0],
                **{f"{phase}/{k}": v for k, v in logs.items()}}

    def train(self) -> ModelSet:
        tc = self.cfg.train
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
        loader = self.acc.skip_first_batches(self.loader, self.step * tc.grad_accum * len(self.method.phases)) \
            if self.step else self.loader
        batches = iter(loader)
        bar = tqdm(total=tc.steps, initial=self.step, desc=self.cfg.name, disable=not self.acc.is_main_process)
        t0 = time.perf_counter()
        while self.step < tc.steps:
            record = {}
            for phase in self.method.phases:
                record.update(self._phase_step(phase, batches))
            for target, source, decay in self.models.ema:
                ema_update(self.models[target], self.models[source], decay)
            self.step += 1
            bar.update(1)
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                record["step"] = self.step
                record["sec_per_step"] = (time.perf_counter() - t0) / tc.log_every
                t0 = time.perf_counter()
                self._log(record)
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.endswith("loss")})
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self.step < tc.steps:
                self.save_checkpoint()
            if tc.validation_every and self.step % tc.validation_every == 0 and self.step < tc.steps:
                self.validate()
        bar.close()
        self.save_checkpoint()
        self.validate()
        return self.models
