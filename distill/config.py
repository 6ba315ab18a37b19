"""Typed run configuration: YAML in, dataclasses out, resolved YAML saved next to every run.

Every key is checked against the dataclass fields before any work starts: an unknown key names
itself and the allowed keys, an ill-typed value names its key, the expected type and what came.
Each numeric field carries its allowed range next to it (``ranged``), checked by ``from_dict`` for
every dataclass it builds; no float may be NaN or infinite.
The method section is typed by the method's own config class in ``run_config`` (which knows the
registry), so this module imports no method.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from fewstep.distill.files import atomic_write


class ConfigError(ValueError):
    """A config problem the user can fix; the message names the key or file."""


class DivergedError(FloatingPointError):
    """Training produced a non-finite loss or weights; nothing was saved. The message names the step
    and the last good checkpoint (a user error: lower the learning rate and resume)."""


RANGE = "fewstep_range"  # dataclass field metadata key
MAX_LR = 1e3  # no AdamW run wants more; far larger values overflow float32 inside torch's optimizer step


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field: bounds (None: unbounded), each closed or open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = ""  # a noun for the message, e.g. "a timestep"

    def describe(self) -> str:
        what = f"{self.what} " if self.what else ""
        if self.low is not None and self.high is not None:
            return (f"{what}in {'(' if self.low_open else '['}{self.low}, {self.high}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{what}{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{what}{'<' if self.high_open else '<='} {self.high}"
        return f"{what or 'a '}finite number"

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, key: str, value: float) -> None:
        """Raise a one-line :class:`ConfigError` naming ``key``, the range and ``value`` if it is outside."""
        if not self.contains(value):
            rule = "a finite number" if not math.isfinite(value) else self.describe()
            raise ConfigError(f"{key}: must be {rule}, got {value}")


def bounds(*, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           what: str = "") -> Range:
    """A :class:`Range` from ``ge``/``gt`` (low bound) and ``le``/``lt`` (high bound)."""
    return Range(gt if gt is not None else ge, lt if lt is not None else le, gt is not None, lt is not None, what)


def ranged(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **limits: Any) -> Any:
    """A dataclass field with its allowed range (``bounds`` keywords); a list or mapping field's range
    holds for each item. ``from_dict`` checks it."""
    return field(default=default, default_factory=factory, metadata={RANGE: bounds(**limits)})


def field_range(cls: type, name: str) -> Range | None:
    """The range written next to field ``name`` of dataclass ``cls`` (None if it has none)."""
    return next(f.metadata.get(RANGE) for f in dataclasses.fields(cls) if f.name == name)


def check_range(rng: Range, value: Any, key: str) -> None:
    """Check ``value`` (a number, None, or a list / mapping of numbers) against ``rng``."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_range(rng, v, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_range(rng, v, f"{key}.{k}")
    elif isinstance(value, (int, float)):
        rng.check(key, value)


def check_ranges(obj: Any, prefix: str) -> None:
    """Check every ranged field of the dataclass instance ``obj`` (and of dataclasses nested in it), for
    settings built in code rather than through ``from_dict``: a method constructed directly checks too."""
    for f in dataclasses.fields(obj):
        value, where = getattr(obj, f.name), f"{prefix}.{f.name}"
        if RANGE in f.metadata:
            check_range(f.metadata[RANGE], value, where)
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                check_ranges(item, f"{where}[{i}]" if item is not value else where)


@dataclass
class TinyArch:
    """Architecture of a fresh tiny Stable-Diffusion pipeline (only for training an embedded teacher)."""

    resolution: int = ranged(32, ge=8)  # image side in pixels
    text_hidden: int = ranged(64, ge=1)  # CLIP text encoder width (= UNet cross-attention dim)
    text_layers: int = ranged(2, ge=1)
    text_heads: int = ranged(4, ge=1)
    max_length: int = ranged(16, ge=3)  # tokenizer model_max_length, BOS and EOS included
    vae_channels: list[int] = ranged(factory=lambda: [16, 32, 32], ge=1)  # 3 blocks: f=4
    latent_channels: int = ranged(4, ge=1)
    unet_channels: list[int] = ranged(factory=lambda: [48, 96, 96], ge=1)
    unet_layers_per_block: int = ranged(1, ge=1)
    unet_attention_head_dim: int = ranged(8, ge=1)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"


@dataclass
class ModelConfig:
    # diffusers pipeline dir or hub id (org/name: the local Hugging Face cache first, then the hub unless
    # HF_HUB_OFFLINE is set); the teacher / starting point
    pretrained: str | None = None
    revision: str | None = None  # hub ids only: a branch, tag or commit hash of the repo (None: main)
    variant: str | None = None  # weight files of this variant, e.g. "fp16": unet/*.fp16.safetensors (loaded as fp32)
    tiny: TinyArch | None = None  # build a fresh tiny pipeline instead of loading one
    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # override (new teachers only)

    def __post_init__(self):
        for key in ("revision", "variant"):  # they select files of model.pretrained; alone they would do nothing
            value = getattr(self, key)
            if value is not None and (not value.strip() or self.pretrained is None):
                raise ConfigError(f"model.{key}: {'empty' if not value.strip() else 'set without model.pretrained'} "
                                  "(it picks the files of the teacher model.pretrained names)")


@dataclass
class StudentConfig:
    kind: Literal["full", "lora"] = "full"  # what is trained: the whole UNet or a peft LoRA on it
    lora_rank: int = ranged(64, ge=1, le=1024)
    lora_alpha: float = ranged(64.0, gt=0)
    lora_targets: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                                 "ff.net.2", "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv",
                                 "upsamplers.0.conv", "time_emb_proj"])
    # LoRA students: start the adapter from an exported LoRA (a folder with pytorch_lora_weights.safetensors
    # of the same rank and targets on the same base), e.g. a consistency student refined by score
    # distillation (Hyper-SD's order); None: peft's fresh initialisation
    init_lora: str | None = None


@dataclass
class DataConfig:
    # prompts: captions only, no images; webdataset: tar shards (distill.data.shards); cache: the latents and
    # text embeddings `fewstep cache` wrote (distill.data.cache)
    source: Literal["procedural", "imagefolder", "prompts", "webdataset", "cache"] = "procedural"
    # procedural, prompts without path: the split's seed; imagefolder, prompts file, webdataset, cache: shuffle seed
    seed: int = ranged(0, ge=0)
    # imagefolder: folder with images and metadata.jsonl; prompts: a .txt or .jsonl; webdataset: tar files, brace
    # patterns (shard-{0000..0099}.tar) and "::"-separated lists; cache: the folder `fewstep cache --out` wrote
    path: str | None = None
    caption_column: str = "text"  # imagefolder: the caption key in metadata.jsonl; prompts: in the .jsonl
    resolution: int = ranged(32, ge=8)  # imagefolder, webdataset: images are resized and centre-cropped to this
    num_workers: int = ranged(0, ge=0)
    image_key: str = "jpg;png;jpeg;webp"  # webdataset: the image member's extension, the first present of these
    caption_key: str = "txt"  # webdataset: the caption member's extension (UTF-8 text)
    shuffle_buffer: int = ranged(1000, ge=0)  # webdataset: samples in the shuffle buffer; 0 or 1: shard order only
    min_size: int | None = ranged(None, ge=1)  # webdataset: drop images whose short side is smaller (pixels)
    max_aspect: float | None = ranged(None, ge=1.0)  # webdataset: drop images with long side / short side above this
    # webdataset: undecodable images are skipped and counted (logged as data/corrupt); above this fraction of the
    # samples read (judged after shards.MIN_SEEN of them) the run stops naming the shard
    max_corrupt_fraction: float = ranged(0.01, ge=0.0, le=1.0)


LR_SCHEDULES = Literal["constant", "constant_with_warmup", "cosine", "linear"]


def schedule_name(schedule: str, warmup_steps: int) -> str:
    """The diffusers ``get_scheduler`` name that honours ``lr_warmup_steps``: its ``constant`` schedule
    ignores warm-up, so ``constant`` with a warm-up runs as ``constant_with_warmup`` (the knob never
    silently does nothing)."""
    return "constant_with_warmup" if schedule == "constant" and warmup_steps else schedule


@dataclass
class PhaseConfig:
    """Settings of one phase of a method (``train.phases.<phase name>``); unset ones come from the
    method's own defaults for that phase, then from ``train.*``."""

    lr: float | None = ranged(None, ge=0.0, le=MAX_LR)
    adam_beta1: float | None = ranged(None, ge=0.0, lt=1.0)
    adam_beta2: float | None = ranged(None, ge=0.0, lt=1.0)
    weight_decay: float | None = ranged(None, ge=0.0)
    lr_schedule: LR_SCHEDULES | None = None
    lr_warmup_steps: int | None = ranged(None, ge=0)  # in this phase's own optimizer steps
    max_grad_norm: float | None = ranged(None, ge=0.0)  # 0 disables clipping
    every: int | None = ranged(None, ge=1)  # the phase runs on iterations i with i % every == 0 (default 1)
    # optimizer steps per iteration it runs on, e.g. 5 for a critic (TTUR; default 1)
    repeats: int | None = ranged(None, ge=1)


@dataclass
class TrainConfig:
    # iterations; each runs every phase that is due (one optimizer step each by default)
    steps: int = ranged(1000, ge=1)
    batch_size: int = ranged(32, ge=1)  # per process, per micro-batch
    grad_accum: int = ranged(1, ge=1)
    lr: float = ranged(1e-4, gt=0, le=MAX_LR)
    phase_lr: dict[str, float] = ranged(factory=dict, ge=0.0, le=MAX_LR)  # per-phase lr (older form of phases.<name>.lr)
    phases: dict[str, PhaseConfig] = field(default_factory=dict)  # per-phase optimizer settings and update rate
    lr_schedule: LR_SCHEDULES = "constant"
    # linear warm-up; with "constant" the run is diffusers' "constant_with_warmup"
    lr_warmup_steps: int = ranged(0, ge=0)
    adam_beta1: float = ranged(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = ranged(0.999, ge=0.0, lt=1.0)
    weight_decay: float = ranged(0.0, ge=0.0)
    max_grad_norm: float = ranged(1.0, ge=0.0)  # 0 disables clipping
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # also the dtype frozen networks are stored in
    # activation checkpointing of every trained network (diffusers' enable_gradient_checkpointing; the
    # text encoder: transformers'): its blocks keep only their inputs and recompute the rest in the backward,
    # less peak memory for about one more forward of time (bench/PERFORMANCE.md); distill.loop.checkpoint_activations
    gradient_checkpointing: bool = False
    # torch.compile (inductor, static shapes) of every UNet the run calls, in place before the first step:
    # each distinct call (batch size, grad mode, adapter state) compiles once, minutes on a CPU, then runs
    # faster: the embedded LCM-LoRA step ~1.35x on an AVX2 CPU, only 3-10 % on an AVX-512 one, whose eager
    # kernels are already fast (bench/REFERENCE_LCM.md, "With a compiled UNet"); distill.loop.compile_unets
    compile: bool = False
    # every network of the run (UNets, GAN heads) in channels_last memory format, before compiling: conv
    # weights and activations NHWC, oneDNN's preferred layout on CPUs (and cuDNN's under bf16/fp16). The same
    # math, different float32 rounding; the compiled LCM-LoRA step on the embedded teacher 1 % faster on an
    # AVX-512 CPU, eager no faster (bench/STEP_OPTIMISATIONS.md); distill.loop.channels_last
    channels_last: bool = False
    # torch.optim.AdamW's implementation: "fused" (one kernel over all tensors), "foreach" (multi-tensor ops),
    # "for-loop" (ops per tensor, torch's CPU default); "auto": fused where every trained tensor is a float
    # tensor on CPU or CUDA, else torch's own choice. Same math; fused took a tiny LoRA student's step from
    # 22 to 4 ms on a CPU core (bench/PERFORMANCE.md, "AdamW implementation"); distill.phases.adamw_flags
    adamw_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    ddp_find_unused_parameters: bool = False  # DDP: needed when phases train different adapters of one UNet
    ddp_static_graph: bool = False  # DDP: the same parameters are used in every iteration
    seed: int = ranged(0, ge=0)
    log_every: int = ranged(10, ge=1)
    # experiment trackers (through accelerate) besides logs.jsonl: losses, lr, seconds per phase, validation
    # metrics and sample grids; tensorboard writes runs/<name>/tensorboard; `pip install fewstep[tracking]`
    report_to: Literal["none", "tensorboard", "wandb", "all"] = "none"
    checkpoint_every: int = ranged(500, ge=0)  # 0: only at the end
    checkpoints_total_limit: int = ranged(3, ge=1)  # the newest (the final one at the end) is always kept
    validation_every: int = ranged(500, ge=0)  # 0: only at the end


# The metrics a validation can watch, and whether higher is better (the direction of "best").
VALIDATION_METRICS = {"all": True, "clip": True, "fid": False}


@dataclass
class ValidationConfig:
    """The sample grid every ``train.validation_every`` steps and at the end, and the quality signal
    measured alongside it (``pipelines.validation``; best export and early-stop alarm in ``distill.watch``)."""

    prompts: list[str] = field(default_factory=list)  # grid prompts; empty: captions from the data source
    num_images: int = ranged(16, ge=1)  # images in the grid
    seed: int = ranged(1234, ge=0)
    # Metrics at every validation, prompt i with seed i each time (paired): FID and CLIP score (eval.features,
    # eval.clip, eval.reference), and attribute accuracy "all" on procedural prompts; off: grids only
    metrics: bool = True
    num_prompts: int = ranged(256, ge=2)  # images per step count per validation (FID needs 2)
    # student step counts to measure; empty: the smallest of eval.steps, else of the trained ones, else the recipe's
    steps: list[int] = ranged(factory=list, ge=1)
    # the watched metric (at the first of the step counts): best/ and patience follow it; fid: lower is better;
    # None: "all" on procedural prompts, else "fid"
    metric: Literal["all", "fid", "clip"] | None = None
    keep_best: bool = True  # write the export of the best validation so far to runs/<name>/best (metrics only)
    patience: int = ranged(0, ge=0)  # stop after this many validations in a row worse than the best; 0: never


@dataclass
class EvalConfig:
    """The evaluation sweep ``fewstep train`` runs after export (``fewstep eval --run`` reads it too)."""

    enabled: bool = False  # evaluate runs/<name>/export into runs/<name>/eval after training
    steps: list[int] = ranged(factory=list, ge=1)  # student steps; empty: those of 1, 2, 4, 8 it was trained for
    teacher_steps: list[int] = ranged(factory=lambda: [25, 50], ge=1)  # DDIM steps of the teacher; max: speedup base
    # per (model, steps) row; FID falls as the count grows, so compare equal counts only
    num_images: int = ranged(1000, ge=2)
    guidance: float | None = None  # student guidance_scale; None: the export's recipe
    teacher_guidance: float | None = None  # None: the teacher's fewstep_recipe.json, else diffusers' 7.5
    features: Literal["embedded", "inception"] = "embedded"  # FID/KID feature network
    inception_weights: str | None = None  # weights-inception-2015-12-05-6726825d.pth (else torch hub's cache)
    clip: str = "embedded"  # CLIP-score model spec (eval.clip.parse_clip_spec): embedded tiny CLIP or a local one
    reference: str = "procedural"  # FID reference: held-out procedural scenes (seed 12345) or an image folder
    batch_size: int = ranged(64, ge=1)  # images per pipeline call while generating


@dataclass
class MethodSpec:
    name: str  # registry key
    config: Any  # the method's own typed config dataclass


@dataclass
class RunConfig:
    name: str
    method: MethodSpec
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def procedural_validation(cfg: RunConfig) -> bool:
    """Whether validation metrics run on procedural captions (which carry attribute labels): the
    procedural source, or the prompts source without a file (its prompts are the procedural captions)."""
    return cfg.data.source == "procedural" or (cfg.data.source == "prompts" and not cfg.data.path)


def watched_metric(cfg: RunConfig) -> str:
    """``validation.metric``, or its default for the run's data source."""
    return cfg.validation.metric or ("all" if procedural_validation(cfg) else "fid")


def check_trained_steps(key: str, steps: list[int], trained: list[int] | None) -> None:
    """``key``'s step counts must be ones the student is trained for (``trained`` None: any)."""
    untrained = [s for s in steps if trained is not None and s not in trained]
    if untrained:
        few = trained if len(trained) <= 10 else f"1..{max(trained)}"
        raise ConfigError(f"{key}: the student is trained for {few} steps, not {untrained}")


def validation_steps(cfg: RunConfig, trained: list[int] | None) -> list[int] | None:
    """``validation.steps``, else the smallest of ``eval.steps`` (those trained), else the smallest trained
    count (the cheapest, and the one a few-step student is most often used at), else None (the recipe's)."""
    if cfg.validation.steps:
        return list(cfg.validation.steps)
    pool = [s for s in cfg.eval.steps if trained is None or s in trained] or trained
    return [min(pool)] if pool else None


def check_validation(cfg: RunConfig) -> None:
    """Settings of ``validation`` that depend on other sections (no model or file is needed)."""
    v = cfg.validation
    if not v.metrics:
        if v.patience:
            raise ConfigError(f"validation.patience: {v.patience} needs validation.metrics: true (the alarm watches "
                              "a metric)")
        return
    if v.metric == "all" and not procedural_validation(cfg):
        raise ConfigError(f"validation.metric: 'all' (attribute accuracy) needs procedural prompts, but data.source "
                          f"is {cfg.data.source!r}{' with a file' if cfg.data.path else ''}; use 'fid' or 'clip'")
    if v.patience and not cfg.train.validation_every:
        raise ConfigError(f"validation.patience: {v.patience} needs train.validation_every > 0 (a run that validates "
                          "only at its end cannot stop early)")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (recursively) and return it typed."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not fit {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; expected {_type_name(tp)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return _finite_float(value, key)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _finite_float(value: int | float | str, key: str) -> float:
    """``value`` as a finite float (YAML reads 1e-4 as a string); NaN and infinities name the key."""
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{key}: expected float, got {value!r} ({type(value).__name__})") from None
    if not math.isfinite(number):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    return number


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys, ill-typed and out-of-range values by name."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"unknown key '{where}'; allowed keys here: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        where = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], where)
            if RANGE in f.metadata:
                check_range(f.metadata[RANGE], kwargs[f.name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{where}'")
    return cls(**kwargs)


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML of ``path`` (None-safe: an empty file is ``{}``); a missing file or bad YAML is a
    :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{p}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def to_dict(cfg: RunConfig) -> dict:
    """The resolved config as plain data (what ``save_config`` writes)."""
    out = dataclasses.asdict(dataclasses.replace(cfg, method=MethodSpec(cfg.method.name, None)))
    out["method"] = {"name": cfg.method.name, **dataclasses.asdict(cfg.method.config)}
    return out


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (a reader never sees half a config)."""
    atomic_write(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
