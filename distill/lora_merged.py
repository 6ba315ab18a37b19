"""peft LoRA layers that run as one merged layer where the adapter takes no gradient.

A LoRA layer computes y = W x + s B(A x) (Hu et al. 2021, Eq. 3): the base matmul plus a narrow chain of
two more. Where the adapter's weights take no gradient (autograd off, as in an LCM-LoRA target forward
or in-training sampling, or an adapter frozen by the running phase) the same output comes from one
layer whose weight is W + s B A, which is peft's ``get_delta_weight``, what its ``merge()`` adds. Here
the merged weight is built for the call and dropped after it: the base weights are never written
(no merge/unmerge rounding creeps into them) and at most one layer's merged weight exists at a time,
so no second copy of the UNet is held.

Which form is cheaper depends on the shapes. Merging costs |W| r multiply-adds per call, once; the
branch costs |A| + |B| per output position (a token of a Linear, a pixel of a Conv2d's output), and
there are batch x positions of those. ``merge_is_cheaper`` decides per layer and call; with static shapes
under ``torch.compile`` that is decided once, at trace time. On the embedded teacher (batch 32, 8x8
latents) every layer merges but the time-embedding projections (one row per image); on SD1.5 at batch 1,
65 of 278 layers merge at 256 px and 129 at 512 px (bench/STEP_OPTIMISATIONS.md).

Anything else (DoRA or other peft variants, dropout, a LoRA bias, mixed dtypes such as bf16 base
weights under fp32 adapters, per-row ``adapter_names``, a layer already merged or switched off) runs
peft's own forward unchanged.
"""
from __future__ import annotations

import types

import torch
from torch import nn

_MARK = "_fewstep_merged_forward"


def install(unet: nn.Module) -> int:
    """Give every peft LoRA Linear / Conv2d layer of ``unet`` the merged no-gradient path (``forward``
    below); layers that have it already are left alone. Returns the number of layers that now have it."""
    from peft.tuners.lora import layer as lora

    n = 0
    for m in unet.modules():
        if type(m) not in (lora.Linear, lora.Conv2d):
            continue
        if not m.__dict__.get(_MARK):
            m.__dict__[_MARK] = True
            m.forward = types.MethodType(forward, m)  # a bound method: deepcopy rebinds it to the copy
        n += 1
    return n


def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A peft LoRA layer's forward: merged (one layer, weight W + sum of s B A) where ``mergeable``,
    otherwise peft's own."""
    adapters = mergeable(self, x, args, kwargs)
    if adapters is None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.get_base_layer()
    weight = self.get_delta_weight(adapters[0])  # no adapter here takes a gradient: sum in place, in one buffer
    for name in adapters[1:]:
        weight.add_(self.get_delta_weight(name))
    weight.add_(base.weight)
    if isinstance(base, nn.Conv2d):
        return base._conv_forward(x, weight, base.bias)
    return nn.functional.linear(x, weight, base.bias)


def mergeable(self, x: torch.Tensor, args: tuple, kwargs: dict) -> list[str] | None:
    """The active adapters to merge into this call, or None where peft's forward must run."""
    if args or kwargs or self.disable_adapters or self.merged:
        return None
    base = self.get_base_layer()
    if type(base) not in (nn.Linear, nn.Conv2d) or getattr(self, "fan_in_fan_out", False):
        return None
    if torch.is_grad_enabled() and base.weight.requires_grad:
        return None  # a trained base: its gradient goes through W itself
    adapters = [a for a in self.active_adapters if a in self.lora_A]
    if not adapters:
        return None
    for a in adapters:
        A, B = self.lora_A[a], self.lora_B[a]
        if (a in self.lora_variant or self.lora_bias.get(a, False) or B.bias is not None
                or not isinstance(self.lora_dropout[a], nn.Identity)):
            return None
        if A.weight.dtype != base.weight.dtype or B.weight.dtype != base.weight.dtype:
            return None
        if torch.is_grad_enabled() and (A.weight.requires_grad or B.weight.requires_grad):
            return None  # the adapter trains: its gradients come cheapest through the branch
    if x.dtype != base.weight.dtype and not torch.is_autocast_enabled(x.device.type):
        return None
    ranks = [self.lora_A[a].weight.shape[0] for a in adapters]
    return adapters if merge_is_cheaper(base, x.shape, ranks) else None


def merge_is_cheaper(base: nn.Module, shape: torch.Size, ranks: list[int]) -> bool:
    """Multiply-adds: building W + s B A for each adapter (|W| r) against running its branch over the
    call's output positions (positions x r x (fan-in + fan-out), fan-in counting a conv's kernel)."""
    w = base.weight
    fan_in = w[0].numel()
    if isinstance(base, nn.Conv2d):
        positions = shape[0] * conv_out_pixels(base, shape[-2:]) if len(shape) == 4 else 0
    else:
        positions = int(torch.Size(shape[:-1]).numel())
    merge = sum(w.numel() * r for r in ranks)
    branch = sum(positions * r * (fan_in + w.shape[0]) for r in ranks)
    return merge < branch


def conv_out_pixels(conv: nn.Conv2d, size: tuple[int, int]) -> int:
    """Output pixels of ``conv`` on an input of spatial ``size`` (nn.Conv2d's shape formula)."""
    if isinstance(conv.padding, str):  # 'same' keeps the size; 'valid' pads nothing
        pad = (0, 0) if conv.padding == "valid" else None
    else:
        pad = conv.padding
    out = 1
    for i, n in enumerate(size):
        if pad is None:
            out *= n
            continue
        k = conv.dilation[i] * (conv.kernel_size[i] - 1) + 1
        out *= (n + 2 * pad[i] - k) // conv.stride[i] + 1
    return out
