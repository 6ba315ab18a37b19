"""The teacher-training loss weighting: 'snr+1' on an eps network is exactly the v loss."""
import torch

from fewstep.distill import schedules
from fewstep.distill.methods.denoise import snr_weight


def test_snr_plus_one_on_eps_equals_v_loss_and_native_is_one():
    abar = schedules.alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear")
    t = torch.tensor([0, 250, 999])
    alpha, sigma = schedules.alpha_sigma(abar, t)
    g = torch.Generator().manual_seed(0)
    x0, eps, eps_hat = (torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = alpha * x0 + sigma * eps
    x0_hat, _ = schedules.x0_eps_from_output(eps_hat, x_t, alpha, sigma, "epsilon")
    v_hat = schedules.output_from_x0_eps(x0_hat, eps_hat, alpha, sigma, "v_prediction")
    v = schedules.output_from_x0_eps(x0, eps, alpha, sigma, "v_prediction")
    weighted_eps = snr_weight("snr+1", "epsilon", alpha, sigma) * (eps_hat - eps) ** 2
    torch.testing.assert_close(weighted_eps, (v_hat - v) ** 2)
    assert torch.equal(snr_weight("native", "epsilon", alpha, sigma), torch.ones_like(alpha))
    assert torch.allclose(snr_weight("snr+1", "v_prediction", alpha, sigma), torch.ones_like(alpha))
    # the high-noise end gets ~200x the eps weight
    assert snr_weight("snr+1", "epsilon", alpha, sigma)[-1].item() > 100
