"""Every numeric setting has a range next to its field, checked before any model loads, and nothing
non-finite is ever saved (issue 11). Commands run in-process through ``main()`` like test_cli."""
import dataclasses
import typing

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fewstep.distill import config as C
from fewstep.distill.methods.settings import CONFIGS
from fewstep.distill.runlog import read_logs
from fewstep.pipelines import judge_config as J
from tests.conftest import run_dict
from tests.test_cli import fewstep, one_clear_line

# (method, --set KEY=VALUE, what the one line must say)
BAD_CONFIG = [
    ("denoise", "train.steps=0", "train.steps: must be >= 1, got 0"),
    ("denoise", "train.batch_size=-2", "train.batch_size: must be >= 1"),
    ("denoise", "train.grad_accum=0", "train.grad_accum: must be >= 1"),
    ("denoise", "train.lr=-1.0", "train.lr: must be in (0, 1000.0], got -1.0"),
    ("denoise", "train.lr=1e39", "train.lr: must be in (0, 1000.0], got 1e+39"),
    ("denoise", "train.lr=.nan", "train.lr: must be a finite number"),
    ("denoise", "train.lr=.inf", "train.lr: must be a finite number"),
    ("denoise", "train.adam_beta1=1.0", "train.adam_beta1: must be in [0.0, 1.0)"),
    ("denoise", "train.adam_beta2=-0.1", "train.adam_beta2: must be in [0.0, 1.0)"),
    ("denoise", "train.weight_decay=-1", "train.weight_decay: must be >= 0.0"),
    ("denoise", "train.max_grad_norm=.nan", "train.max_grad_norm: must be a finite number"),
    ("denoise", "train.seed=-1", "train.seed: must be >= 0"),
    ("denoise", "train.log_every=0", "train.log_every: must be >= 1"),
    ("denoise", "train.checkpoint_every=-1", "train.checkpoint_every: must be >= 0"),
    ("denoise", "train.checkpoints_total_limit=0", "train.checkpoints_total_limit: must be >= 1, got 0"),
    ("denoise", "train.validation_every=-5", "train.validation_every: must be >= 0"),
    ("denoise", "train.lr_warmup_steps=-1", "train.lr_warmup_steps: must be >= 0"),
    ("denoise", "train.phase_lr.student=.nan", "train.phase_lr.student: must be a finite number"),
    ("denoise", "train.phases.student.every=0", "train.phases.student.every: must be >= 1"),
    ("denoise", "student.lora_rank=0", "student.lora_rank: must be in [1, 1024], got 0"),
    ("denoise", "student.lora_rank=4096", "student.lora_rank: must be in [1, 1024], got 4096"),
    ("denoise", "student.lora_alpha=0", "student.lora_alpha: must be > 0"),
    ("denoise", "validation.num_images=0", "validation.num_images: must be >= 1"),
    ("denoise", "eval.num_images=1", "eval.num_images: must be >= 2"),
    ("denoise", "eval.batch_size=0", "eval.batch_size: must be >= 1"),
    ("denoise", "eval.steps=[1,0]", "eval.steps[1]: must be >= 1, got 0"),
    ("denoise", "data.resolution=4", "data.resolution: must be >= 8"),
    ("denoise", "data.num_workers=-1", "data.num_workers: must be >= 0"),
    ("denoise", "method.caption_dropout=1.5", "method.caption_dropout: must be in [0.0, 1.0]"),
    ("denoise", "method.ema_decay=1.0", "method.ema_decay: must be in [0.0, 1.0)"),
    ("lcm", "method.num_ddim_timesteps=0", "method.num_ddim_timesteps: must be in [1, 1000]"),
    ("lcm", "method.num_ddim_timesteps=1001", "method.num_ddim_timesteps: must be in [1, 1000]"),
    ("lcm", "method.w_min=-1", "method.w_min: must be >= 0.0"),
    ("lcm", "method.huber_c=0", "method.huber_c: must be > 0"),
    ("lcm", "method.target_ema=1", "method.target_ema: must be in [0.0, 1.0)"),
    ("lcm", "method.sample_guidance=.inf", "method.sample_guidance: must be a finite number"),
    ("lcm", "method.w_min=20", "method.w_min (20.0) is above method.w_max"),  # a cross-field rule: check()
    ("tscd", "method.replay=1.5", "method.replay: must be a probability in [0.0, 1.0]"),
    ("tscd", "method.stages=[{segments: 0, steps: 5}]", "method.stages[0].segments: must be >= 1"),
    ("dmd", "method.t_max=1000", "method.t_max: must be a timestep in [0, 1000)"),
    ("dmd", "method.fake_steps_per_generator=0", "method.fake_steps_per_generator: must be >= 1"),
]


@pytest.mark.parametrize("method,assignment,needle", BAD_CONFIG, ids=[f"{c[0]}:{c[1]}" for c in BAD_CONFIG])
def test_out_of_range_config_is_one_line_before_any_work(tmp_path, capsys, method, assignment, needle):
    raw = run_dict(tmp_path, method=method)
    raw["model"] = {"pretrained": str(tmp_path / "no-such-teacher")}  # never reached
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    one_clear_line(fewstep(capsys, "train", path, "--set", assignment), needle)
    assert not (tmp_path / "runs").exists()


NO_PIPE = "/nonexistent/pipeline"  # reached only if a flag slipped through
BAD_FLAGS = [
    (["sample", "--steps", "0"], "--steps: must be >= 1, got 0"),
    (["sample", "--steps", "-3"], "--steps: must be >= 1, got -3"),
    (["sample", "--num-images", "0"], "--num-images: must be >= 1"),
    (["sample", "--guidance", "nan"], "--guidance: must be a finite number"),
    (["sample", "--seed", "-1"], "--seed: must be >= 0, got -1"),
    (["sample", "--scheduler", "StableDiffusionPipeline"], "--scheduler StableDiffusionPipeline: not a diffusers"),
    (["sample", "--scheduler", "NoSuchScheduler"], "--scheduler NoSuchScheduler: not a diffusers"),
    (["eval", "--steps", "1,,2"], "--steps '1,,2': expected comma-separated integers"),
    (["eval", "--steps", ""], "--steps '': expected comma-separated integers"),
    (["eval", "--steps", "0,4"], "--steps: must be >= 1, got 0"),
    (["eval", "--steps", "1", "--teacher-steps", "4,,8"], "--teacher-steps '4,,8'"),
    (["eval", "--steps", "1", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["eval", "--steps", "1", "--num-images", "1"], "--num-images: must be >= 2"),
    (["eval", "--steps", "1", "--guidance", "inf"], "--guidance: must be a finite number"),
    (["eval", "--steps", "1", "--device", "bogus"], "--device bogus: expected auto, cpu, cuda, cuda:N or mps"),
    (["eval", "--steps", "1", "--device", "cuda:x"], "--device cuda:x"),
]


@pytest.mark.parametrize("args,needle", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_out_of_range_flags_are_one_line_before_any_model(tmp_path, capsys, args, needle):
    out = tmp_path / "x.png"
    extra = ["--prompt", "x", "--out", out] if args[0] == "sample" else ["--out", tmp_path / "eval"]
    one_clear_line(fewstep(capsys, args[0], "--pipeline", NO_PIPE, *args[1:], *extra), needle)
    assert not out.exists() and not (tmp_path / "eval").exists()


def _numeric_fields(cls, seen=None):
    """(class, field) of every int / float (or list / mapping / optional of them) field, nested included."""
    seen = seen if seen is not None else set()
    if cls in seen:
        return
    seen.add(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        leaves = {a for a in _flatten(tp)}
        for sub in leaves:
            if dataclasses.is_dataclass(sub):
                yield from _numeric_fields(sub, seen)
        if leaves & {int, float}:
            yield cls, f


def _flatten(tp):
    args = typing.get_args(tp)
    if not args or typing.get_origin(tp) is typing.Literal:
        yield tp
    for a in args:
        yield from _flatten(a)


UNBOUNDED = {"guidance", "teacher_guidance", "sample_guidance", "real_guidance"}  # any finite value is a scale


def test_every_numeric_field_has_a_range():
    roots = [C.RunConfig, C.PhaseConfig, *CONFIGS.values(), J.ClassifierBuildConfig, J.TinyClipBuildConfig]
    missing = [f"{cls.__name__}.{f.name}" for root in roots for cls, f in _numeric_fields(root)
               if C.RANGE not in f.metadata and f.name not in UNBOUNDED]
    assert not missing, missing


def _run_keys():
    """(method, "section.key") of every numeric key of a run config: the shared sections under the
    denoise method, each method's own section under that method."""
    sections = {C.TrainConfig: "train", C.StudentConfig: "student", C.DataConfig: "data",
                C.ValidationConfig: "validation", C.EvalConfig: "eval"}
    keys = {("denoise", f"{sections[cls]}.{f.name}") for cls, f in _numeric_fields(C.RunConfig) if cls in sections}
    keys |= {(name, f"method.{f.name}") for name, cls in CONFIGS.items() for owner, f in _numeric_fields(cls)
             if owner is cls}
    return sorted(keys)


@pytest.mark.parametrize("value", [-1, 0, float("nan"), 1e30, "x"], ids=str)
def test_any_value_of_any_numeric_key_is_accepted_or_one_config_error(tmp_path, value):
    """A fuzz over every numeric key: the typed config and preflight either accept the value or
    raise ConfigError naming the key; nothing else (no TypeError, no torch error) escapes."""
    from fewstep.distill.loop import preflight
    from fewstep.distill.run_config import parse_config

    keys = _run_keys()
    assert len(keys) > 80  # the walk found the sections
    accepted = []
    for method, key in keys:
        raw = run_dict(tmp_path, method=method)
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
        try:
            preflight(parse_config(raw))
            accepted.append(name)
        except C.ConfigError as e:
            assert key in str(e) or section in str(e), (key, str(e))
    if value == "x" or value != value:  # text or NaN: no numeric key takes it
        assert accepted == []
    elif value == -1:  # negative: only a guidance scale may be
        assert set(accepted) <= UNBOUNDED, accepted


def test_judge_config_ranges_name_file_and_key(tmp_path):
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump({"lr": float("nan")}))
    with pytest.raises(C.ConfigError, match=r"clip.yaml: lr: must be a finite number"):
        J.load_build_config(path, J.TinyClipBuildConfig)
    path.write_text(yaml.safe_dump({"model": {"vision_layers": [1, 0, 1, 1]}}))
    with pytest.raises(C.ConfigError, match=r"model.vision_layers\[1\]: must be >= 1, got 0"):
        J.load_build_config(path, J.TinyClipBuildConfig)


# ---- nothing non-finite is saved ------------------------------------------------------------------
@pytest.mark.parametrize("poison_at,needle", [(2, "the student phase's loss is nan at step 3"),
                                              (3, "is not finite at step 4")])
def test_diverged_run_saves_nothing_and_keeps_the_good_checkpoint(tmp_path, capsys, monkeypatch, poison_at, needle):
    """NaN weights after iteration ``poison_at``: the loss check (next iteration) or the final save's
    weight check stops the run with one line; checkpoint-2 survives, no later one appears."""
    from fewstep.distill.loop import Trainer

    original = Trainer._phase_step

    def poisoned(self, plan, batches, handover):
        logs = original(self, plan, batches, handover)
        if self.step == poison_at:
            with torch.no_grad():
                self.params[plan.name][0].fill_(float("nan"))
        return logs

    monkeypatch.setattr(Trainer, "_phase_step", poisoned)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(run_dict(tmp_path, steps=4, checkpoint_every=2)))
    result = fewstep(capsys, "train", path)
    one_clear_line(result, needle)
    run = tmp_path / "runs" / "t"
    assert "checkpoint-2" in result[1] and "training diverged" in result[1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert not (run / "export").exists()
    for f in (run / "checkpoints" / "checkpoint-2").glob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(f).values()), f
    read_logs(run, strict=True)  # no NaN or Infinity logged


def test_fp16_on_cpu_is_one_line_before_any_model(tmp_path, capsys, monkeypatch):
    """accelerate has no fp16 autocast on CPU; the frozen networks would be half and the step float."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    raw = run_dict(tmp_path)
    raw["model"] = {"pretrained": str(tmp_path / "no-such-teacher")}  # never reached
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    one_clear_line(fewstep(capsys, "train", path, "--set", "train.mixed_precision=fp16"),
                   "train.mixed_precision: fp16 needs a CUDA GPU")
    assert not (tmp_path / "runs").exists()
