"""The networks of one run, by role: named modules (trainable or frozen) and views of them.

A method builds a ModelSet and calls roles by name (``models["student"](...)``,
``models["teacher"](...)``), whatever the student kind and the distribution strategy:

* a *module* is a network the run owns (the loop prepares, casts and checkpoints modules);
* a *view* is a role that is another module seen differently: with one peft adapter active (two
  adapters on one frozen UNet as ``student`` and ``fake_score``), with its adapters off (the
  teacher of a LoRA student is its base weights) or as it is (an alias).

While a phase runs, the loop sets ``active`` to the roles that phase optimises: only those are
called through their accelerate/DDP wrapper; every other role runs on the plain module, so a frozen
network never takes part in a gradient all-reduce. EMA pairs (target <- source, decay) are
declared here and updated by the loop, in one place.
"""
from __future__ import annotations

import copy
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from fewstep.distill import rng


@dataclass(frozen=True)
class View:
    """A role seen through another module: ``adapter`` active, ``base`` (all adapters off), or as is."""

    module: str  # the module it runs
    adapter: str | None = None  # the peft adapter to activate for the call
    base: bool = False  # run with every adapter switched off


class ModelSet:
    def __init__(self, pipe):
        self.pipe = pipe  # the loaded diffusers pipeline: tokenizer, frozen components, scheduler config
        self.modules: dict[str, nn.Module] = {}
        self.views: dict[str, View] = {}
        self.ema: list[tuple[str, str, float]] = []  # (target name, source name, decay)
        self.active: frozenset[str] = frozenset()  # roles the running phase optimises (set by the loop)
        self.device = torch.device("cpu")

    def __getitem__(self, name: str):
        if name in self.modules:
            m = self.modules[name]
            if name not in self.active or m is unwrap(m):
                return unwrap(m)
            return Prepared(m)
        if name not in self.views:
            raise KeyError(f"no role {name!r} in this run; roles: {', '.join(self.roles())}")
        view = self.views[name]
        m = self.modules[view.module]
        return BoundView(m if name in self.active else unwrap(m), view)

    def __setitem__(self, name: str, module: nn.Module) -> None:
        self.views.pop(name, None)
        self.modules[name] = module

    def __contains__(self, name: str) -> bool:
        return name in self.modules or name in self.views

    def roles(self) -> list[str]:
        return [*self.modules, *self.views]

    def add_view(self, name: str, module: str, adapter: str | None = None, base: bool = False) -> None:
        """Register role ``name`` as ``module`` with ``adapter`` active (or ``base``: no adapter)."""
        if module not in self.modules:
            raise KeyError(f"view {name!r}: no module {module!r}")
        self.views[name] = View(module, adapter, base)

    def module_of(self, role: str) -> str:
        """The module a role runs (itself, for a module)."""
        return self.views[role].module if role in self.views else role

    def trainable_parameters(self, role: str) -> list[tuple[str, nn.Parameter]]:
        """(name in its module, parameter) that ``role`` trains: the module's parameters that require
        grad, or for an adapter view only that adapter's. Read once, before phases freeze anything."""
        view = self.views.get(role)
        params = unwrap(self.modules[self.module_of(role)]).named_parameters()
        if view is None:
            return [(n, p) for n, p in params if p.requires_grad]
        if view.adapter is None:
            return []  # a base or alias view trains nothing of its own
        pattern = re.compile(rf"\.lora_[A-Za-z_]+\.{re.escape(view.adapter)}(\.|$)")
        return [(n, p) for n, p in params if p.requires_grad and pattern.search(n)]

    @property
    def scheduler_config(self) -> dict:
        return dict(self.pipe.scheduler.config)

    def add_ema(self, target: str, source: str, decay: float) -> None:
        """Register a frozen copy of ``source`` that tracks it with exponential moving average."""
        ema = copy.deepcopy(self.modules[source]).requires_grad_(False).eval()
        self.modules[target] = ema
        self.ema.append((target, source, decay))

    def to(self, device: torch.device) -> "ModelSet":
        self.device = torch.device(device)
        for m in self.modules.values():
            m.to(device)
        for name in ("vae", "text_encoder"):
            getattr(self.pipe, name).to(device)
        return self

    def cast_frozen(self, dtype: torch.dtype, trained: set[int]) -> int:
        """Store frozen networks (teacher, VAE, text encoder, a LoRA's base weights) in ``dtype``, as
        mixed-precision training runs them; parameters in ``trained`` (ids) and EMA copies stay
        float32. Buffers are left alone (the noise schedule keeps its precision). Returns the count."""
        ema = {t for t, _, _ in self.ema}
        nets = [m for n, m in self.modules.items() if n not in ema]
        nets += [self.pipe.vae, self.pipe.text_encoder, self.pipe.unet]
        seen, n = set(), 0
        for net in nets:
            for p in unwrap(net).parameters():
                if id(p) in seen or id(p) in trained or not p.is_floating_point():
                    continue
                seen.add(id(p))
                p.data = p.data.to(dtype)
                n += 1
        return n

    def text_encoder(self) -> nn.Module:
        return self["text_encoder"] if "text_encoder" in self.modules else self.pipe.text_encoder

    def encode_text(self, captions: list[str], encoder: nn.Module | None = None) -> torch.Tensor:
        """Token-level text embeddings [B, L, D] as SD's UNet consumes them (last hidden state). A caption
        that carries its embedding (``data.cache.CachedCaption``, from ``fewstep cache``) is not encoded
        again, unless the text encoder is trained or another encoder is given."""
        if encoder is None and "text_encoder" not in self.modules and any(hasattr(c, "embedding") for c in captions):
            return self._with_cached(captions)
        tok = self.pipe.tokenizer(captions, padding="max_length", truncation=True,
                                  max_length=self.pipe.tokenizer.model_max_length, return_tensors="pt")
        encoder = encoder if encoder is not None else self.text_encoder()
        return encoder(tok.input_ids.to(self.device))[0]

    def _with_cached(self, captions: list[str]) -> torch.Tensor:
        """Cached embeddings where captions carry them; the others (e.g. "" of caption dropout) encoded."""
        rest = [c for c in captions if not hasattr(c, "embedding")]
        fresh = iter(self.encode_text(rest)) if rest else iter(())
        dtype = self.pipe.text_encoder.dtype  # what the encoder would have returned
        return torch.stack([c.embedding.to(self.device, dtype) if hasattr(c, "embedding") else next(fresh)
                            for c in captions])

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents, sampled from the VAE posterior as SD training does. Cached
        posteriors (``data.cache.LatentMoments``) are sampled the same way, without running the VAE."""
        vae = self.pipe.vae
        moments = getattr(pixels, "moments", None)
        dist = (DiagonalGaussianDistribution(moments.to(self.device, vae.dtype)) if moments is not None
                else vae.encode(pixels.to(self.device, vae.dtype)).latent_dist)
        # contiguous: noise drawn with randn_like follows the latents' memory layout, which would otherwise
        # depend on the VAE's conv backend (oneDNN on CPU returns channels-last); one layout keeps the draws
        # of encoded and cached latents (data.cache) the same
        # the posterior sample's noise through distill.rng (the same per sample however the batch is split
        # over processes) unless a generator is given
        sample = dist.sample(generator) if generator is not None else dist.mean + dist.std * rng.randn_like(dist.mean)
        return (sample * vae.config.scaling_factor).float().contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [-1, 1]."""
        vae = self.pipe.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float().clamp(-1, 1)


class Prepared:
    """A module role called through its DDP (or other) wrapper while its phase runs; attribute access
    (schedule, ``parameters()``, ...) reaches the plain module, which ``unwrap`` returns."""

    def __init__(self, wrapper: nn.Module):
        self.module = wrapper

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(unwrap(self.module), name)


class BoundView:
    """A view resolved to its network: calling it switches the adapters for the call only.

    Carries the Denoiser's schedule attributes, so a method reads ``alphas_cumprod`` from any role.
    ``unet`` is the shared network itself, whose adapters other roles switch per call.
    """

    def __init__(self, net: nn.Module, view: View):
        self.net, self.view = net, view

    def __call__(self, *args, **kwargs):
        with adapters_as(self.unet, self.view):
            return self.net(*args, **kwargs)

    @property
    def denoiser(self) -> nn.Module:
        return unwrap(self.net)

    @property
    def unet(self) -> nn.Module:
        return self.denoiser.unet

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.denoiser.alphas_cumprod

    @property
    def prediction_type(self) -> str:
        return self.denoiser.prediction_type

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.denoiser.alpha_sigma(t)


@contextmanager
def adapters_as(unet: nn.Module, view: View) -> Iterator[None]:
    """Run ``unet`` with the view's adapter active (or none), then put back what was active.

    peft's switches also flip ``requires_grad`` of adapter weights; the flags are put back at once,
    so the phase's freezing holds during the call (a frozen adapter gets no gradient).
    """
    if view.adapter is None and not view.base:
        yield
        return
    if view.base:  # the LoRA teacher, once a step: flip peft's per-layer switch only
        layers = [m for m in tuner_layers(unet) if not m.disable_adapters]
        for m in layers:
            m._disable_adapters = True
        try:
            yield
        finally:
            for m in layers:
                m._disable_adapters = False
        return
    before = unet.active_adapters()
    if list(before) == [view.adapter]:
        yield  # already the one active adapter
        return
    lora = [p for n, p in unet.named_parameters() if ".lora_" in n]
    flags = [p.requires_grad for p in lora]

    def restore_flags():
        for p, f in zip(lora, flags):
            p.requires_grad_(f)

    unet.set_adapter(view.adapter)
    restore_flags()
    try:
        yield
    finally:
        unet.set_adapter(before)
        restore_flags()


def tuner_layers(unet: nn.Module) -> list[nn.Module]:
    """peft's adapter layers of ``unet`` (``BaseTunerLayer``), found again only when its set of adapters
    changes: walking every module costs ~5 ms a call on the embedded teacher.

    The base view sets each layer's ``_disable_adapters``, the flag peft's own ``disable_adapters``
    property returns and every LoRA forward reads. diffusers' ``disable_adapters()`` reaches the same flag
    through peft's ``enable_adapters(False)``, which also rewrites ``requires_grad`` of every adapter
    weight (put back after the call): 35 ms a call against 1.1 ms on an idle core (bench/adapter_switch.py).
    tests/test_phases.py checks the teacher view against a fresh UNet, so a renamed flag fails there."""
    key = tuple(getattr(unet, "peft_config", None) or ())
    cached = unet.__dict__.get("_fewstep_tuner_layers")
    if cached is None or cached[0] != key:
        from peft.tuners.tuners_utils import BaseTunerLayer
        cached = (key, [m for m in unet.modules() if isinstance(m, BaseTunerLayer)])
        unet.__dict__["_fewstep_tuner_layers"] = cached
    return cached[1]


def unwrap(module):
    """The plain module under DDP / FSDP / torch.compile wrappers."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or module._orig_mod
    return module


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameters and float buffers."""
    targets = list(target.parameters())
    sources = [s.detach().to(t.dtype) for t, s in zip(targets, unwrap(source).parameters())]
    # one multi-tensor kernel per chunk on CUDA instead of one launch per parameter (~700 for SD1.5's UNet);
    # per tensor the same lerp, so CPU results are unchanged
    torch._foreach_lerp_(targets, sources, 1.0 - decay)
    for t, s in zip(target.buffers(), unwrap(source).buffers()):
        if t.dtype.is_floating_point:
            t.copy_(s)
