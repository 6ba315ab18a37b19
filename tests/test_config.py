from pathlib import Path

import pytest

from fewstep.distill.config import ConfigError, save_config, to_dict
from fewstep.distill.run_config import load_config, parse_config
from tests.conftest import run_dict


def test_parse_types_method_section(tmp_path):
    raw = run_dict(tmp_path)
    raw["method"].update(caption_dropout=0.2, ema_decay=0.99)
    cfg = parse_config(raw)
    assert cfg.method.name == "denoise"
    assert cfg.method.config.caption_dropout == 0.2
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.tiny.unet_channels == [16, 32]


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["train"].update(lrr=1), "unknown key 'train.lrr'"),
    (lambda d: d["train"].update(steps="many"), "train.steps: expected int"),
    (lambda d: d["train"].update(mixed_precision="fp8"), "train.mixed_precision: 'fp8' is not allowed"),
    (lambda d: d["method"].update(caption_dropot=0.1), "unknown key 'method.caption_dropot'"),
    (lambda d: d["method"].update(name="nope"), "unknown method 'nope'"),
    (lambda d: d.pop("name"), "missing required key 'name'"),
    (lambda d: d.update(model={}), "model.pretrained"),
])
def test_bad_config_names_the_key(tmp_path, mutate, needle):
    raw = run_dict(tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError, match=None) as e:
        parse_config(raw)
    assert needle in str(e.value)


def test_unknown_key_lists_allowed_keys(tmp_path):
    raw = run_dict(tmp_path)
    raw["train"]["lrr"] = 1
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert "batch_size" in str(e.value) and "lr," in str(e.value)


def test_yaml_overrides_and_round_trip(tmp_path):
    import yaml
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(run_dict(tmp_path)))
    cfg = load_config(path, ["train.lr=3e-4", "method.ema_decay=0.5", "data.seed=7"])
    assert cfg.train.lr == 3e-4 and cfg.method.config.ema_decay == 0.5 and cfg.data.seed == 7
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.lr"])


RUN_CONFIGS = sorted(p for p in __import__("pathlib").Path(__file__).resolve().parents[1].glob("configs/*/*.yaml")
                     if p.parent.name != "accelerate")  # launcher configs: tests/test_accelerate_configs.py


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_run_configs_parse(path):
    cfg = load_config(path)
    assert cfg.name and cfg.train.steps > 0


def test_constant_schedule_honours_its_warmup():
    """diffusers' 'constant' ignores num_warmup_steps; fewstep's 'constant' with a warm-up warms up."""
    import torch
    from diffusers.optimization import get_scheduler

    from fewstep.distill.config import schedule_name

    def lrs(schedule, warmup):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = get_scheduler(schedule_name(schedule, warmup), opt, num_warmup_steps=warmup, num_training_steps=20)
        out = []
        for _ in range(6):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    assert lrs("constant", 4) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert lrs("constant", 0) == [1.0] * 6
    assert schedule_name("cosine", 4) == "cosine"


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("configs/tiny/*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_tiny_configs_pass_preflight(path):
    """Phases, data source and eval step lists of every embedded-default config hold before any model loads.
    A config that starts from another run's export (student.init_lora) names that export while it is
    missing, and passes without it."""
    from fewstep.distill.loop import preflight

    cfg = load_config(path)
    if cfg.student.init_lora and not Path(cfg.student.init_lora).exists():
        with pytest.raises(ConfigError, match="student.init_lora"):
            preflight(cfg)
        cfg = load_config(path, ["student.init_lora=null"])
    assert preflight(cfg)
