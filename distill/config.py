"""Typed run configuration: YAML in, dataclasses out, resolved YAML saved next to every run.

Every key is checked against the dataclass fields before any work starts: an unknown key names
itself and the allowed keys, an ill-typed value names its key, the expected type and what came.
The method section is typed by the method's own config class in ``run_config`` (which knows the
registry), so this module imports no method.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from fewstep.distill.files import atomic_write


class ConfigError(ValueError):
    """A config problem the user can fix; the message names the key or file."""


@dataclass
class TinyArch:
    """Architecture of a fresh tiny Stable-Diffusion pipeline (only for training an embedded teacher)."""

    resolution: int = 32  # image side in pixels
    text_hidden: int = 64  # CLIP text encoder width (= UNet cross-attention dim)
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16  # tokenizer model_max_length, BOS and EOS included
    vae_channels: list[int] = field(default_factory=lambda: [16, 32, 32])  # 3 blocks: f=4
    latent_channels: int = 4
    unet_channels: list[int] = field(default_factory=lambda: [48, 96, 96])
    unet_layers_per_block: int = 1
    unet_attention_head_dim: int = 8
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"


@dataclass
class ModelConfig:
    pretrained: str | None = None  # diffusers pipeline dir or hub id; the teacher / starting point
    tiny: TinyArch | None = None  # build a fresh tiny pipeline instead of loading one
    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # override (new teachers only)


@dataclass
class StudentConfig:
    kind: Literal["full", "lora"] = "full"  # what is trained: the whole UNet or a peft LoRA on it
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                                 "ff.net.2", "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv",
                                 "upsamplers.0.conv", "time_emb_proj"])


@dataclass
class DataConfig:
    source: Literal["procedural", "imagefolder", "prompts"] = "procedural"  # prompts: captions only, no images
    seed: int = 0  # procedural, prompts without path: the split's seed; imagefolder, prompts file: shuffle seed
    path: str | None = None  # imagefolder: folder with images and metadata.jsonl; prompts: a .txt or .jsonl
    caption_column: str = "text"  # imagefolder: the caption key in metadata.jsonl; prompts: in the .jsonl
    resolution: int = 32  # imagefolder: images are resized and centre-cropped to this
    num_workers: int = 0


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

    lr: float | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    weight_decay: float | None = None
    lr_schedule: LR_SCHEDULES | None = None
    lr_warmup_steps: int | None = None  # in this phase's own optimizer steps
    max_grad_norm: float | None = None  # 0 disables clipping
    every: int | None = None  # the phase runs on iterations i with i % every == 0 (default 1)
    repeats: int | None = None  # optimizer steps per iteration it runs on, e.g. 5 for a critic (TTUR; default 1)


@dataclass
class TrainConfig:
    steps: int = 1000  # iterations; each runs every phase that is due (one optimizer step each by default)
    batch_size: int = 32  # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    phase_lr: dict[str, float] = field(default_factory=dict)  # per-phase lr (older form of phases.<name>.lr)
    phases: dict[str, PhaseConfig] = field(default_factory=dict)  # per-phase optimizer settings and update rate
    lr_schedule: LR_SCHEDULES = "constant"
    lr_warmup_steps: int = 0  # linear warm-up; with "constant" the run is diffusers' "constant_with_warmup"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # also the dtype frozen networks are stored in
    ddp_find_unused_parameters: bool = False  # DDP: needed when phases train different adapters of one UNet
    ddp_static_graph: bool = False  # DDP: the same parameters are used in every iteration
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 3
    validation_every: int = 500  # 0: only at the end


@dataclass
class ValidationConfig:
    prompts: list[str] = field(default_factory=list)  # empty: captions from the data source
    num_images: int = 16
    seed: int = 1234


@dataclass
class EvalConfig:
    """The evaluation sweep ``fewstep train`` runs after export (``fewstep eval --run`` reads it too)."""

    enabled: bool = False  # evaluate runs/<name>/export into runs/<name>/eval after training
    steps: list[int] = field(default_factory=list)  # student steps; empty: those of 1, 2, 4, 8 it was trained for
    teacher_steps: list[int] = field(default_factory=lambda: [25, 50])  # DDIM steps of the teacher; max: speedup base
    num_images: int = 1000  # per (model, steps) row; FID falls as the count grows, so compare equal counts only
    guidance: float | None = None  # student guidance_scale; None: the export's recipe
    teacher_guidance: float | None = None  # None: the teacher's fewstep_recipe.json, else diffusers' 7.5
    features: Literal["embedded", "inception"] = "embedded"  # FID/KID feature network
    inception_weights: str | None = None  # weights-inception-2015-12-05-6726825d.pth (else torch hub's cache)
    clip: str = "embedded"  # CLIP-score model spec (eval.clip.parse_clip_spec): embedded tiny CLIP or a local one
    reference: str = "procedural"  # FID reference: held-out procedural scenes (seed 12345) or an image folder
    batch_size: int = 64  # images per pipeline call while generating


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
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and ill-typed values by name."""
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
