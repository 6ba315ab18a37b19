"""Score-distillation math as pure functions: the denoising loss that trains a score network, and
DMD's distribution-matching gradient with its stop-gradient generator loss."""
from __future__ import annotations

import torch

from fewstep.distill import schedules


def denoising_loss(output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor,
                   sigma: torch.Tensor, prediction_type: str, weight: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Denoising score matching in the network's own parameterisation (DDPM's simple loss, Ho et al.
    2020, Eq. 14; v as in Salimans & Ho 2022, Sec. 4): mean of ``weight * (output - target)^2``.

    Args:
        output: What the network returned for ``x_t = alpha x0 + sigma noise``.
        x0, noise: The clean sample and the noise that made ``x_t``.
        alpha, sigma: Broadcastable schedule coefficients at the sample's timestep.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        weight: Per-sample multiplier (e.g. ``denoise.snr_weight``); 1 for the plain loss.

    Returns:
        Scalar float32 loss.
    """
    target = schedules.output_from_x0_eps(x0, noise, alpha, sigma, prediction_type)
    return (weight * (output.float() - target.float()) ** 2).mean()


def dmd_gradient(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """The distribution-matching gradient on the generator's sample (DMD, Yin et al. 2024, Eq. 7, with
    DMD2's x0 form, Yin et al. 2024b, Sec. 3):

        grad = (x0_fake - x0_real) / mean_{c,h,w} |x0 - x0_real|       (per sample)

    The difference of the fake and real scores, written on their x0 predictions at the same noisy
    point, normalised per sample so its scale does not depend on t. Computed in float32 (the
    difference of two close predictions loses its digits in half precision).

    Args:
        x0: Generator samples ``[B, ...]`` (no gradient needed).
        real_x0: The teacher's (CFG) x0 prediction at the re-noised sample.
        fake_x0: The fake score's x0 prediction at the same point.

    Returns:
        float32 gradient shaped like ``x0``; zero where the two scores agree.
    """
    x0, real, fake = x0.detach().float(), real_x0.detach().float(), fake_x0.detach().float()
    dims = tuple(range(1, x0.ndim))
    weight = 1.0 / (x0 - real).abs().mean(dim=dims, keepdim=True)
    return (fake - real) * weight


def stop_gradient_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 ||x0 - sg(x0 - grad)||^2`` (mean over elements): its gradient with respect to ``x0`` is
    ``grad`` divided by the element count, so backpropagation carries ``grad`` into the generator
    (DMD, Yin et al. 2024, Eq. 7-8; SwiftBrush, Nguyen & Tran 2024, Eq. 6)."""
    x0 = x0.float()
    return 0.5 * torch.mean((x0 - (x0 - grad).detach()) ** 2)


def vsd_gradient(eps_real: torch.Tensor, eps_fake: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The variational score distillation gradient on the generator's sample (ProlificDreamer, Wang et
    al. 2023, Eq. 8; SwiftBrush, Nguyen & Tran 2024, Eq. 6):

        grad = w(t) (eps_teacher(x_t) - eps_fake(x_t)),    w(t) = sigma_t^2

    With x0 = (x_t - sigma eps) / alpha this is sigma alpha (x0_fake - x0_real): DMD's direction with
    a fixed per-timestep weight instead of DMD's per-sample normalisation. Computed in float32.

    Args:
        eps_real: The teacher's (CFG) noise prediction at the re-noised sample.
        eps_fake: The fake score's noise prediction at the same point.
        sigma: Broadcastable sigma_t of that point.
    """
    return sigma.float() ** 2 * (eps_real.detach().float() - eps_fake.detach().float())


def sid_loss(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor, alpha: float) -> tuple[torch.Tensor, int]:
    """The score-identity generator loss (SiD, Zhou et al. 2024, Eq. 23; SiD-LSG 2025, Eq. 9), per sample

        L = (y_r - y_f) . ((y_r - x0) - alpha (y_r - y_f)) / mean|x0 - y_r|
          = (1 - alpha) ||y_r - y_f||^2 + (y_r - y_f) . (y_f - x0)      (before normalising)

    with y_r, y_f the teacher's and the fake score's x0 predictions at the re-noised x0. Unlike DMD
    and VSD, gradients flow through both predictions (their networks frozen, their inputs not), so
    nothing here is detached except the normaliser. Samples with a non-finite term are masked out
    (SiD does the same) and counted.

    Returns:
        (float32 mean over the finite samples of the per-sample mean over elements; 0 with a graph
        if none is finite, the number of masked samples).
    """
    x0, real, fake = x0.float(), real_x0.float(), fake_x0.float()
    dims = tuple(range(1, x0.ndim))
    finite = torch.isfinite(x0).all(dim=dims) & torch.isfinite(real).all(dim=dims) & torch.isfinite(fake).all(dim=dims)
    masked = int((~finite).sum())
    x0, real, fake = x0[finite], real[finite], fake[finite]
    if len(x0) == 0:
        return x0_graph_zero(real_x0), masked
    with torch.no_grad():
        norm = (x0 - real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-5)
    diff = real - fake
    per_sample = (diff * ((real - x0) - alpha * diff) / norm).mean(dim=dims)
    return per_sample.mean(), masked


def x0_graph_zero(t: torch.Tensor) -> torch.Tensor:
    """A zero loss still attached to ``t``'s graph (backward then gives zero gradients, not an error)."""
    return t.float().nan_to_num(0.0, 0.0, 0.0).sum() * 0.0
