"""Starting a LoRA student from an exported LoRA (``student.init_lora``): the file fewstep (or
diffusers) writes, ``pytorch_lora_weights.safetensors``, loaded into the student's peft adapter."""
from __future__ import annotations

from pathlib import Path

from fewstep.distill.config import ConfigError

LORA_FILE = "pytorch_lora_weights.safetensors"


def init_lora_file(path: str) -> Path:
    """The weights file ``student.init_lora`` names (a folder holding it, or the file itself); a
    missing one is a ConfigError naming the key, raised before any model is loaded."""
    p = Path(path).expanduser()
    f = p / LORA_FILE if p.is_dir() else p
    if not f.is_file():
        raise ConfigError(f"student.init_lora: {f} not found (give an export folder holding {LORA_FILE}, or the file)")
    return f


def load_into_adapter(unet, path: str, adapter: str) -> int:
    """Copy the LoRA weights of ``path`` into ``unet``'s peft adapter ``adapter``; every adapter
    weight must be matched with the same shape (rank, targets), else a ConfigError names the key.
    Returns the number of tensors loaded."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = {k.removeprefix("unet."): v for k, v in load_file(str(init_lora_file(path))).items()}
    own = {n for n, _ in unet.named_parameters() if f".{adapter}." in n and ".lora_" in n}
    fix = "use the rank, alpha and targets it was trained with"
    try:
        result = set_peft_model_state_dict(unet, state, adapter_name=adapter)
    except RuntimeError as err:  # shape mismatch: another rank
        first = str(err).split("\n")[1].strip() if "\n" in str(err) else str(err)
        raise ConfigError(f"student.init_lora: {path} does not fit the student's adapter ({first}); {fix}") from None
    missing = [k for k in getattr(result, "missing_keys", []) if f".{adapter}." in k and ".lora_" in k]
    if missing or len(state) != len(own):
        raise ConfigError(f"student.init_lora: {path} does not fit the student's adapter ({len(state)} tensors for "
                          f"{len(own)} adapter weights{', e.g. missing ' + missing[0] if missing else ''}); {fix}")
    return len(state)
