"""Registry of training methods: config name -> Method class (a plain dict, no import strings).

Importing this builds every method (torch, diffusers); the settings alone are in ``settings``.
"""
from fewstep.distill.methods.base import Method
from fewstep.distill.methods.denoise import DenoiseMethod
from fewstep.distill.methods.dmd import DMDMethod
from fewstep.distill.methods.lcm import LCMMethod
from fewstep.distill.methods.settings import CONFIGS
from fewstep.distill.methods.sid import SiDMethod
from fewstep.distill.methods.tscd import TSCDMethod
from fewstep.distill.methods.vae import VaeMethod
from fewstep.distill.methods.vsd import VSDMethod

REGISTRY: dict[str, type[Method]] = {
    "denoise": DenoiseMethod,
    "dmd": DMDMethod,
    "lcm": LCMMethod,
    "sid": SiDMethod,
    "tscd": TSCDMethod,
    "vae": VaeMethod,
    "vsd": VSDMethod,
}
assert all(REGISTRY[k].Config is CONFIGS[k] for k in CONFIGS) and set(REGISTRY) == set(CONFIGS)
