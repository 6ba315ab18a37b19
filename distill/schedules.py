"""Noise schedules, timestep grids and parameterisation conversions (layer 1: pure functions).

Time conventions:
* Diffusion teachers: discrete diffusers timesteps ``t in {0, ..., T-1}`` (``T = 1000``; SD1.x uses
  ``scaled_linear`` betas in [0.00085, 0.012]), ``x_t = alpha_t x0 + sigma_t eps`` with
  ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)`` (DDPM, Ho et al. 2020, Eq. 4);
  ``t = 0`` is the cleanest step, ``t = T-1`` the noisiest.
* Flow students: continuous ``t in [0, 1]``, ``t = 1`` pure noise, ``x_t = (1 - t) x0 + t eps``
  (diffusers ``FlowMatch*`` convention). Nothing here takes flow time; stated so none is mixed up.
No modules, no state; diffusers' DDIM/LCM/TCD schedulers are the reference the tests check.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
    beta_schedule: str = "linear",
) -> Tensor:
    """Cumulative product ``abar_t = prod_{i<=t} (1 - beta_i)`` of a discrete schedule.

    Computed in float32 like diffusers, then widened: a float64 cumprod differs by ~1e-6 relative,
    and dividing by ``alpha_t ~ 0.07`` near ``t = T-1`` turns that into ~1e-4 disagreement with the
    diffusers pipelines the teacher is sampled and evaluated with.

    Args:
        num_train_timesteps: Number of training timesteps ``T``.
        beta_start, beta_end: First and last beta (unused by ``squaredcos_cap_v2``).
        beta_schedule: ``"linear"``, ``"scaled_linear"`` (LDM/SD: linear in sqrt(beta), then
            squared) or ``"squaredcos_cap_v2"`` (cosine).

    Returns:
        float64 tensor ``[T]``; callers cast it to their dtype/device.
    """
    T = num_train_timesteps
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        # Improved DDPM (Nichol & Dhariwal 2021, Eq. 17); cap 0.999 avoids a singular beta = 1.
        def f(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; expected {BETA_SCHEDULES}")
    return torch.cumprod(1.0 - betas.to(torch.float32), dim=0).to(torch.float64)


def alphas_cumprod_from_config(config: Mapping) -> Tensor:
    """``alphas_cumprod`` for a diffusers scheduler config (``scheduler.config`` or its JSON dict).

    Missing keys take diffusers' defaults. Rejects (ValueError) what we cannot reproduce rather
    than approximating it: ``trained_betas``, unknown ``beta_schedule``, ``rescale_betas_zero_snr``.

    Args:
        config: Mapping with diffusers' ``num_train_timesteps``/``beta_*``/... keys.

    Returns:
        float64 tensor ``[num_train_timesteps]``.
    """
    trained = config.get("trained_betas")
    if trained is not None:
        raise ValueError(f"trained_betas is not supported (got {trained!r}); expected None")
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError("rescale_betas_zero_snr=True is not supported")
    return alphas_cumprod(
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
        beta_start=float(config.get("beta_start", 0.0001)),
        beta_end=float(config.get("beta_end", 0.02)),
        beta_schedule=config.get("beta_schedule", "linear"),
    )


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so per-sample values broadcast against a batch.

    Args:
        x: Tensor with ``x.ndim <= ndim``, usually ``[B]``.
        ndim: Target number of dims, e.g. 4 for ``[B, C, H, W]`` latents.

    Returns:
        A view with shape ``x.shape + (1,) * (ndim - x.ndim)``.
    """
    if x.ndim > ndim:
        raise ValueError(f"cannot append dims: x has {x.ndim} dims, more than ndim={ndim}")
    return x.reshape(*x.shape, *([1] * (ndim - x.ndim)))


def alpha_sigma(alphas_cumprod: Tensor, t: Tensor, ndim: int = 4) -> tuple[Tensor, Tensor]:
    """``(alpha_t, sigma_t) = (sqrt(abar_t), sqrt(1 - abar_t))`` at integer timesteps.

    Negative ``t`` raises: indexing would silently wrap to ``abar[T-1]``. (Every jump fewstep trains
    lands on ``t >= 0``: the skip grid clamps at 0 and segments end at 0.)

    Args:
        alphas_cumprod: ``[T]`` schedule; results have its dtype.
        t: Integer timesteps in ``[0, T-1]``, any shape (usually ``[B]``).
        ndim: Dims of the batch to broadcast against (4 gives ``[B, 1, 1, 1]`` for ``t: [B]``).

    Returns:
        ``(alpha_t, sigma_t)`` on ``t``'s device, each ``append_dims(..., ndim)``.
    """
    t = torch.as_tensor(t)
    if bool((t < 0).any()):
        raise ValueError("alpha_sigma got negative timesteps; timesteps run from 0 to T-1")
    abar = alphas_cumprod.to(t.device)[t.long()]
    return append_dims(abar.sqrt(), ndim), append_dims((1.0 - abar).sqrt(), ndim)


def x0_eps_from_output(
    output: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, prediction_type: str
) -> tuple[Tensor, Tensor]:
    """Recover ``(x0, eps)`` from a model output, given ``x_t = alpha_t x0 + sigma_t eps``.

    Coefficients are cast to ``x_t``'s dtype so the float64 schedule does not promote the batch.

    Args:
        output: Model output.
        x_t: The noisy input the model saw.
        alpha_t, sigma_t: Broadcastable coefficients from :func:`alpha_sigma`.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (x0 prediction).

    Returns:
        ``(x0, eps)``.
    """
    a, s = alpha_t.to(x_t.dtype), sigma_t.to(x_t.dtype)
    if prediction_type == "epsilon":
        return (x_t - s * output) / a, output  # DDIM (Song et al. 2021) Eq. 12, "predicted x0"
    if prediction_type == "sample":
        return output, (x_t - a * output) / s
    if prediction_type == "v_prediction":
        # v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4). Inverting via alpha^2 + sigma^2 = 1
        # avoids dividing by alpha or sigma, each of which nears 0 at one end of the schedule.
        return a * x_t - s * output, a * output + s * x_t
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected {PREDICTION_TYPES}")


def output_from_x0_eps(
    x0: Tensor, eps: Tensor, alpha_t: Tensor, sigma_t: Tensor, prediction_type: str
) -> Tensor:
    """Inverse of :func:`x0_eps_from_output`: what a ``prediction_type`` model should output.

    Args:
        x0, eps: Clean sample and noise.
        alpha_t, sigma_t: Broadcastable coefficients.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.

    Returns:
        ``eps``, ``v = alpha eps - sigma x0`` or ``x0``, in ``x0``'s dtype.
    """
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return alpha_t.to(x0.dtype) * eps - sigma_t.to(x0.dtype) * x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected {PREDICTION_TYPES}")


def ddim_step(x0: Tensor, eps: Tensor, alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """Deterministic DDIM jump to ``s``: ``x_s = alpha_s x0 + sigma_s eps`` (DDIM Eq. 12, eta = 0).

    Args:
        x0, eps: Predicted clean sample and noise.
        alpha_s, sigma_s: Coefficients at ``s``.

    Returns:
        ``x_s`` in ``x0``'s dtype.
    """
    return alpha_s.to(x0.dtype) * x0 + sigma_s.to(x0.dtype) * eps


def ddim_jump(x0: Tensor, eps: Tensor, alphas_cumprod: Tensor, s: Tensor) -> Tensor:
    """A prediction ``(x0, eps)`` moved along its DDIM path to timestep(s) ``s`` (DDIM Eq. 12, eta = 0).

    The one "jump to s" of the consistency family: the teacher's solver step t -> s (LCM Sec. 4.3),
    a multistep student's jump to its segment edge (phased consistency models, Wang et al. 2024,
    Eq. 6), and TCD / DDIM sampling with eta 0 between grid points.

    Args:
        x0, eps: Predicted clean sample and noise, ``[B, ...]``.
        alphas_cumprod: ``[T]`` schedule.
        s: Target timesteps in ``[0, T-1]``, ``[B]`` (or one per batch, broadcast).

    Returns:
        ``x_s = alpha_s x0 + sigma_s eps`` in ``x0``'s dtype.
    """
    alpha_s, sigma_s = alpha_sigma(alphas_cumprod, s, x0.ndim)
    return ddim_step(x0, eps, alpha_s, sigma_s)


def _check_num_steps(num_steps: int, num_train_timesteps: int) -> None:
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps={num_steps} must be in [1, {num_train_timesteps}]")


def ddim_skip_grid(num_ddim_timesteps: int = 50, num_train_timesteps: int = 1000) -> Tensor:
    """LCM's DDIM-solver grid ``t_n = (n + 1) k - 1``, ``k = T // N`` (Luo et al. 2023, Sec. 4.3).

    [19, 39, ..., 999] for N = 50, where ``LCMScheduler(original_inference_steps=N)`` samples from:
    the student is trained exactly where it will be run.

    Args:
        num_ddim_timesteps: ``N``.
        num_train_timesteps: ``T``.

    Returns:
        LongTensor ``[N]``, ascending.
    """
    _check_num_steps(num_ddim_timesteps, num_train_timesteps)
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * k - 1


def previous_on_grid(t: Tensor, k: int) -> Tensor:
    """The point one skipping step below ``t`` on :func:`ddim_skip_grid`: ``s = max(t - k, 0)``.

    The lowest point ``k - 1`` would map to -1; clamping to 0 (as LCM distillation does) gives a
    target where the boundary condition makes ``f(x, 0) = x`` exact.

    Args:
        t: Integer timesteps, any shape.
        k: Skipping interval ``T // N``.

    Returns:
        LongTensor shaped like ``t``.
    """
    return (torch.as_tensor(t).long() - k).clamp(min=0)


def consistency_scalings(
    t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[Tensor, Tensor]:
    """Boundary-condition scalings of ``f(x, t) = c_skip(t) x + c_out(t) F(x, t)``.

    Consistency Models (Song et al. 2023, Sec. 3 / App. C): ``c_skip = sd^2 / (u^2 + sd^2)``,
    ``c_out = u sd / sqrt(u^2 + sd^2)``. LCM (Luo et al. 2023) sets ``u = t * timestep_scaling`` on
    the discrete timestep and, like ``LCMScheduler``, drops ``c_out``'s ``sd`` factor.
    ``c_skip(0) = 1, c_out(0) = 0`` gives ``f(x, 0) = x``; the factor 10 fades the skip term by
    ``t = 1`` (c_skip ~ 0.0025), so elsewhere ``f`` is just the x0 prediction.

    Args:
        t: Timesteps, any shape; integer input is computed in float64.
        sigma_data: ``sd``.
        timestep_scaling: Discrete timestep to ``u`` multiplier.

    Returns:
        ``(c_skip, c_out)`` shaped like ``t`` (:func:`append_dims` them to broadcast).
    """
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    u = t * timestep_scaling
    denom = u**2 + sigma_data**2
    return sigma_data**2 / denom, u / denom.sqrt()


def consistency_function(
    z: Tensor, x0: Tensor, t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> Tensor:
    """The consistency function ``f(z, t) = c_skip(t) z + c_out(t) x0(z, t)``.

    Consistency Models (Song et al. 2023, Eq. 5 / App. C) parameterised as in LCM (Luo et al. 2023,
    Eq. 9) on an x0 prediction, with :func:`consistency_scalings`: ``f(z, 0) = z`` exactly. It is
    both the student/target output of LCM training and ``LCMScheduler``'s ``denoised``.

    Args:
        z: Noisy latents at ``t``, ``[B, ...]``.
        x0: The network's clean-sample prediction at ``(z, t)``.
        t: Timesteps ``[B]``.
        sigma_data, timestep_scaling: As in :func:`consistency_scalings`.

    Returns:
        ``f(z, t)`` in ``z``'s dtype.
    """
    c_skip, c_out = (append_dims(c, z.ndim).to(z.dtype) for c in consistency_scalings(t, sigma_data, timestep_scaling))
    return c_skip * z + c_out * x0


def consistency_timesteps(num_steps: int, num_ddim_timesteps: int = 50, num_train_timesteps: int = 1000) -> Tensor:
    """Inference timesteps of a consistency student: ``num_steps`` points of :func:`ddim_skip_grid`.

    Evenly spaced indices into the descending skip grid, ``floor(i N / K)`` for i < K: the same
    timesteps ``LCMScheduler`` and ``TCDScheduler`` (``original_inference_steps=N``) run, so the
    segment edges a multistep student trains on are exactly where the stock schedulers evaluate it
    ([999, 759, 499, 259] for K=4, N=50).

    Args:
        num_steps: ``K``, at most ``N``.
        num_ddim_timesteps: ``N``.
        num_train_timesteps: ``T``.

    Returns:
        LongTensor ``[K]``, descending.
    """
    if not 1 <= num_steps <= num_ddim_timesteps:
        raise ValueError(f"num_steps must be in 1..{num_ddim_timesteps} (the DDIM grid size), got {num_steps}")
    grid = ddim_skip_grid(num_ddim_timesteps, num_train_timesteps).flip(0)
    idx = torch.arange(num_steps, dtype=torch.long) * num_ddim_timesteps // num_steps
    return grid[idx]


def segment_edges(num_segments: int, num_ddim_timesteps: int = 50, num_train_timesteps: int = 1000) -> Tensor:
    """Boundaries of a trajectory split into K segments, descending, ending at 0.

    Segment i covers ``(edges[i + 1], edges[i]]``; a multistep consistency student maps any point of
    it to ``edges[i + 1]`` (Hyper-SD TSCD / phased consistency). The upper edges are
    :func:`consistency_timesteps`, so K-step TCD/LCM sampling visits exactly these points.

    Returns:
        LongTensor ``[K + 1]``.
    """
    top = consistency_timesteps(num_segments, num_ddim_timesteps, num_train_timesteps)
    return torch.cat([top, torch.zeros(1, dtype=torch.long)])


def segment_end(t: Tensor, edges: Tensor) -> Tensor:
    """For each timestep, the lower edge of the segment containing it (``edges`` from
    :func:`segment_edges`); t exactly on an upper edge belongs to the segment below that edge."""
    t = torch.as_tensor(t).long()
    lower = edges.to(t.device)
    # the largest edge strictly below t (edges descend; the final 0 catches everything > 0)
    below = lower[None, :] < t.reshape(-1, 1)
    first = below.float().argmax(dim=1)
    return lower[first].reshape(t.shape)


def guidance_embedding(w: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of the guidance scale w (LCM, Luo et al. 2023, Sec. 4.2).

    The formula diffusers' LCM pipelines use for ``timestep_cond``: w scaled by 1000, ``dim // 2``
    geometric frequencies from 1 to 1/10000, sin then cos (one zero column pads an odd ``dim``).

    Args:
        w: Guidance scales ``[B]`` (LCM form: the pipeline's ``guidance_scale - 1``).
        dim: Embedding width, the UNet's ``time_cond_proj_dim``.

    Returns:
        float32 tensor ``[B, dim]`` on ``w``'s device.
    """
    w = w.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([emb.sin(), emb.cos()], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb
