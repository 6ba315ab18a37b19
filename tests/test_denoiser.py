"""The denoiser adapter: one interface for eps and v teachers; CFG as one batched forward."""
import pytest
import torch

from distill import schedules
from distill.denoiser import Denoiser
from pipelines.tiny import build_tiny_pipeline


@pytest.fixture(params=["epsilon", "v_prediction"])
def denoiser(request, small_arch):
    small_arch.prediction_type = request.param
    pipe = build_tiny_pipeline(small_arch)
    return Denoiser(pipe.unet, pipe.scheduler.config).eval()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    cond, uncond = torch.randn(2, 3, 16, 32, generator=g)
    return x, t, cond, uncond


@torch.no_grad()
def test_x0_and_eps_are_consistent_with_x_t(denoiser):
    x, t, cond, _ = inputs()
    pred = denoiser(x, t, cond)
    alpha, sigma = denoiser.alpha_sigma(t)
    torch.testing.assert_close(alpha * pred.x0 + sigma * pred.eps, x, atol=1e-4, rtol=1e-4)
    back = schedules.output_from_x0_eps(pred.x0, pred.eps, alpha, sigma, denoiser.prediction_type)
    torch.testing.assert_close(back, pred.output, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_batched_cfg_equals_two_forwards(denoiser):
    x, t, cond, uncond = inputs(1)
    w = torch.tensor([1.0, 3.0, 7.5])
    got = denoiser(x, t, cond, uncond=uncond, guidance=w)
    c, u = denoiser(x, t, cond), denoiser(x, t, uncond)
    wb = w.view(-1, 1, 1, 1)
    torch.testing.assert_close(got.eps, u.eps + wb * (c.eps - u.eps), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.x0, u.x0 + wb * (c.x0 - u.x0), atol=1e-4, rtol=1e-4)
    # guidance 1 is the conditional prediction itself
    torch.testing.assert_close(got.x0[0], c.x0[0], atol=1e-4, rtol=1e-4)
