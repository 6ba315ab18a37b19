"""The score-distillation math, each function against a hand computation or an independent form:
the denoising loss, DMD's gradient, VSD's gradient, the SiD loss (and its masking), the GAN losses,
and the generator's timesteps against diffusers' LCMScheduler."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewstep.distill import schedules
from fewstep.distill.methods.gan import gan_losses
from fewstep.distill.methods.generator import generator_timesteps
from fewstep.distill.methods.score import denoising_loss, dmd_gradient, sid_loss, stop_gradient_loss, vsd_gradient


def test_dmd_gradient_against_a_hand_computed_case():
    x0 = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    real = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0]]).reshape(2, 1, 2, 2)
    fake = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, -1.0]]).reshape(2, 1, 2, 2)
    # sample 0: mean|x0 - real| = 2.5, fake - real = 1  -> 0.4 everywhere
    # sample 1: mean|x0 - real| = 1,   fake - real = (1, 1, 0, 0)
    want = torch.tensor([[0.4, 0.4, 0.4, 0.4], [1.0, 1.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    grad = dmd_gradient(x0, real, fake)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, want)
    assert torch.equal(dmd_gradient(x0, real, real), torch.zeros_like(x0))  # fake == real: nothing to move
    half = dmd_gradient(x0.bfloat16(), real.bfloat16(), fake.bfloat16())
    assert half.dtype == torch.float32  # computed in float32 whatever the networks ran in
    # the stop-gradient loss carries exactly `grad` (over the element count) into x0
    x = x0.clone().requires_grad_(True)
    stop_gradient_loss(x, grad).backward()
    torch.testing.assert_close(x.grad, grad / x0.numel())


def test_denoising_loss_is_the_plain_loss_in_each_parameterisation():
    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    alpha = torch.tensor([0.9, 0.5, 0.1]).reshape(3, 1, 1, 1)
    sigma = (1 - alpha**2).sqrt()
    torch.testing.assert_close(denoising_loss(out, x0, noise, alpha, sigma, "epsilon"), ((out - noise) ** 2).mean())
    v = alpha * noise - sigma * x0
    torch.testing.assert_close(denoising_loss(out, x0, noise, alpha, sigma, "v_prediction"), ((out - v) ** 2).mean())
    w = torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1)
    torch.testing.assert_close(denoising_loss(out, x0, noise, alpha, sigma, "sample", w),
                               (w * (out - x0) ** 2).mean())


def test_vsd_gradient_is_dmds_direction_with_weight_sigma_alpha():
    """sigma^2 (eps_real - eps_fake) written on x0 predictions at the same x_t is
    sigma alpha (x0_fake - x0_real): the same direction as DMD's, a different weight."""
    g = torch.Generator().manual_seed(1)
    x_t, eps_r, eps_f = (torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    abar = schedules.alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear").double()
    t = torch.tensor([20, 500, 980])
    alpha, sigma = schedules.alpha_sigma(abar, t)
    x0_r, x0_f = (x_t - sigma * eps_r) / alpha, (x_t - sigma * eps_f) / alpha
    grad = vsd_gradient(eps_r, eps_f, sigma)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad.double(), sigma * alpha * (x0_f - x0_r), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad[0], (sigma[0] ** 2 * (eps_r[0] - eps_f[0])).float())


def test_sid_loss_equals_its_expanded_form_and_differentiates_through_both_scores():
    g = torch.Generator().manual_seed(2)
    x0, real, fake = (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    alpha = 1.2
    loss, masked = sid_loss(x0, real, fake, alpha)
    assert masked == 0
    # (1 - alpha) ||r - f||^2 + (r - f) . (f - x0), per sample over mean|x0 - r|, mean over elements
    d = (real - fake).float()
    norm = (x0.float() - real.float()).abs().mean(dim=(1, 2, 3), keepdim=True).detach()
    want = (((1 - alpha) * d * d + d * (fake.float() - x0.float())) / norm).mean(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (x0, real, fake))
    # alpha = 1 leaves only (r - f) . (f - x0): zero where the fake score already sits on x0
    same = torch.randn(1, 3, 4, 4, generator=g)
    other = torch.randn(1, 3, 4, 4, generator=g)
    assert sid_loss(same, other, same, 1.0)[0].item() == pytest.approx(0.0, abs=1e-7)


def test_sid_loss_masks_and_counts_non_finite_samples():
    g = torch.Generator().manual_seed(3)
    x0, real, fake = (torch.randn(3, 2, 2, 2, generator=g) for _ in range(3))
    bad = real.clone()
    bad[1, 0, 0, 0] = float("nan")
    loss, masked = sid_loss(x0, bad, fake, 1.2)
    assert masked == 1 and torch.isfinite(loss)
    keep = torch.tensor([0, 2])
    torch.testing.assert_close(loss, sid_loss(x0[keep], real[keep], fake[keep], 1.2)[0])
    x = x0.clone().requires_grad_(True)
    none, masked = sid_loss(x, torch.full_like(real, float("inf")), fake, 1.2)
    assert masked == 3 and none.item() == 0.0


def test_gan_losses_are_the_non_saturating_logistic_losses():
    fake, real = torch.tensor([0.0, 2.0]), torch.tensor([1.0, -1.0])
    gen, head = gan_losses(fake, real)
    sp = lambda v: torch.log1p(torch.exp(torch.tensor(v)))  # noqa: E731
    torch.testing.assert_close(gen, (sp(0.0) + sp(-2.0)) / 2)
    torch.testing.assert_close(head, (sp(0.0) + sp(2.0)) / 2 + (sp(-1.0) + sp(1.0)) / 2)
    assert gan_losses(fake)[1] is None
    torch.testing.assert_close(gen, F.softplus(-fake).mean())


@pytest.mark.parametrize("k,want", [(1, [999]), (2, [999, 499]), (4, [999, 749, 499, 249])])
def test_generator_runs_where_the_exported_scheduler_evaluates(k, want):
    import diffusers

    sched = diffusers.LCMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   original_inference_steps=k)
    sched.set_timesteps(k)
    assert sched.timesteps.tolist() == generator_timesteps(k).tolist() == want


@pytest.mark.parametrize("t0", [399, 199, 100])
def test_a_one_step_generator_at_its_own_timestep_is_one_ddim_step_there(t0):
    """The stock DDIMScheduler of :func:`one_step_ddim` evaluates the UNet at t0 and returns its x0
    (the update to alpha_bar 1), which is the generator's output there."""
    import diffusers

    from fewstep.distill import schedules
    from fewstep.distill.methods.generator import one_step_ddim

    teacher = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                      clip_sample=True, steps_offset=1)
    sched = diffusers.DDIMScheduler.from_config(teacher.config, **one_step_ddim(t0, teacher.betas))
    sched.set_timesteps(1)
    assert sched.timesteps.tolist() == generator_timesteps(1, first=t0).tolist() == [t0]
    assert torch.equal(sched.alphas_cumprod, teacher.alphas_cumprod[:t0 + 1])
    g = torch.Generator().manual_seed(t0)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    abar = teacher.alphas_cumprod[t0]
    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    torch.testing.assert_close(sched.step(eps, t0, x).prev_sample, x0, atol=1e-6, rtol=1e-6)
    t = torch.full((2,), t0)  # the generator's LCM-style boundary form, c_skip(t0) ~ 0
    torch.testing.assert_close(schedules.consistency_function(x, x0, t), x0, atol=1e-5, rtol=0)


def test_only_a_one_step_generator_moves_its_timestep():
    assert generator_timesteps(1, first=999).tolist() == [999]
    with pytest.raises(ValueError, match="only a 1-step generator"):
        generator_timesteps(4, first=399)
