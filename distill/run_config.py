"""Reading a run config: the typed sections of ``config`` plus the method section, typed by the
registered method's own config class. It sits above both ``config`` and ``methods`` (methods import
config), so no import circle is needed to close.
"""
from __future__ import annotations

from pathlib import Path


from fewstep.distill.config import ConfigError, MethodSpec, RunConfig, apply_override, from_dict, read_yaml
from fewstep.distill.methods.settings import CONFIGS


def parse_config(data: dict) -> RunConfig:
    """Type a raw config mapping, resolving the method section through the registry."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping at top level")
    data = dict(data)
    method_raw = data.pop("method", None)
    if not isinstance(method_raw, dict) or "name" not in method_raw:
        raise ConfigError(f"missing 'method.name'; available methods: {', '.join(sorted(CONFIGS))}")
    method_raw = dict(method_raw)
    name = method_raw.pop("name")
    if name not in CONFIGS:
        raise ConfigError(f"method.name: unknown method {name!r}; available: {', '.join(sorted(CONFIGS))}")
    method_cfg = from_dict(CONFIGS[name], method_raw, "method")
    data["method"] = {"name": name, "config": None}
    cfg = from_dict(RunConfig, data)
    cfg.method = MethodSpec(name, method_cfg)
    if cfg.model.pretrained is None and cfg.model.tiny is None:
        raise ConfigError("model: set model.pretrained (a diffusers pipeline) or model.tiny (a fresh tiny pipeline)")
    if cfg.model.pretrained is not None and cfg.model.tiny is not None:
        raise ConfigError("model: model.pretrained and model.tiny are both set; give one (a fresh tiny pipeline "
                          "ignores the teacher)")
    if not cfg.name or cfg.name in (".", "..") or "/" in cfg.name or "\\" in cfg.name:
        raise ConfigError(f"name: {cfg.name!r} must be a plain folder name (the run folder is output_dir/name)")
    method_cfg.check()
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config file, apply ``--set`` overrides, and type it."""
    data = read_yaml(path)
    for o in overrides:
        apply_override(data, o)
    return parse_config(data)
