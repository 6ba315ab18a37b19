"""Registry of training methods: config name -> Method class (a plain dict, no import strings)."""
from distill.methods.base import LossOutput, Method
from distill.methods.denoise import DenoiseMethod
from distill.methods.lcm import LCMMethod
from distill.methods.tscd import TSCDMethod
from distill.methods.vae import VaeMethod

REGISTRY: dict[str, type[Method]] = {
    "denoise": DenoiseMethod,
    "lcm": LCMMethod,
    "tscd": TSCDMethod,
    "vae": VaeMethod,
}

__all__ = ["REGISTRY", "LossOutput", "Method"]
