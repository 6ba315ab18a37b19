"""The denoiser adapter: one interface for eps and v teachers; CFG as one batched forward."""
import pytest
import torch

from fewstep.distill import schedules
from fewstep.distill.denoiser import Denoiser
from fewstep.pipelines.tiny import build_tiny_pipeline


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


@torch.no_grad()
@pytest.mark.parametrize("init", ["zeros", "default"])
def test_guidance_embedding_init(small_arch, init):
    """'zeros': the student starts as the teacher for every w; 'default': w is live from step 0."""
    from fewstep.distill.schedules import guidance_embedding
    from fewstep.distill.students import with_guidance_embedding

    unet = build_tiny_pipeline(small_arch).unet.eval()
    torch.manual_seed(0)
    student = with_guidance_embedding(unet, 32, init).eval()
    x, t, cond, _ = inputs()
    ref = unet(x, t, encoder_hidden_states=cond).sample
    outs = [student(x, t, encoder_hidden_states=cond, timestep_cond=guidance_embedding(torch.full((3,), w), 32)).sample
            for w in (1.0, 5.0)]
    if init == "zeros":
        assert all(torch.equal(o, ref) for o in outs)
    else:
        assert (outs[0] - outs[1]).abs().max() > 1e-4 and (outs[0] - ref).abs().max() > 1e-4
    with pytest.raises(ValueError, match="'zeros' or 'default'"):
        with_guidance_embedding(unet, 32, "ones")
