"""distill.schedules against diffusers' schedulers as the independent reference."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler, TCDScheduler

from fewstep.distill import schedules as S

T = 1000
SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.mark.parametrize(
    "kwargs",
    [
        SD15,
        dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear"),
        dict(beta_schedule="squaredcos_cap_v2"),
    ],
    ids=["scaled_linear", "linear", "squaredcos_cap_v2"],
)
def test_alphas_cumprod_matches_diffusers(kwargs):
    ref = DDIMScheduler(num_train_timesteps=T, **kwargs).alphas_cumprod.double()
    ours = S.alphas_cumprod(T, **kwargs)
    assert ours.dtype == torch.float64 and ours.shape == (T,)
    assert (ours - ref).abs().max() <= 1e-6
    from_cfg = S.alphas_cumprod_from_config(dict(DDIMScheduler(**kwargs).config))
    assert torch.equal(from_cfg, ours)


def test_config_rejections_name_the_value():
    with pytest.raises(ValueError, match="cosine_v9"):
        S.alphas_cumprod(beta_schedule="cosine_v9")
    with pytest.raises(ValueError, match="cosine_v9"):
        S.alphas_cumprod_from_config({"beta_schedule": "cosine_v9"})
    with pytest.raises(ValueError, match="trained_betas"):
        S.alphas_cumprod_from_config({"trained_betas": [0.1, 0.2]})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        S.alphas_cumprod_from_config({"rescale_betas_zero_snr": True})


def test_unknown_prediction_type_named():
    x = torch.zeros(1, 1, 1, 1)
    a = torch.ones(1, 1, 1, 1)
    with pytest.raises(ValueError, match="x_start"):
        S.x0_eps_from_output(x, x, a, a, "x_start")
    with pytest.raises(ValueError, match="x_start"):
        S.output_from_x0_eps(x, x, a, a, "x_start")


def test_alpha_sigma_shapes_and_final():
    abar = S.alphas_cumprod(T, **SD15)
    t = torch.tensor([0, 500, 999])
    a, s = S.alpha_sigma(abar, t)
    assert a.shape == s.shape == (3, 1, 1, 1) and a.dtype == torch.float64
    torch.testing.assert_close((a**2 + s**2).flatten(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(a.flatten(), abar[t].sqrt())
    assert S.append_dims(torch.ones(2), 4).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="negative"):
        S.alpha_sigma(abar, torch.tensor([-1]))


def _model_outputs(sched, n, prediction_type, seed):
    """(t, x_t, model output) at each of the scheduler's timesteps, random but fixed."""
    g = torch.Generator().manual_seed(seed)
    for t in sched.timesteps.tolist():
        yield t, torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64), \
            torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 25, 50])
def test_ddim_jump_matches_diffusers_ddim_sd15(prediction_type, n):
    # SD1.x ships set_alpha_to_one=False: DDIM's last step (to t - T/n < 0) uses abar[0], which is
    # the jump to timestep 0.
    sched = DDIMScheduler(
        **SD15, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type=prediction_type,
    )
    sched.set_timesteps(n)
    abar = S.alphas_cumprod_from_config(sched.config)
    for t, x_t, out in _model_outputs(sched, n, prediction_type, n):
        ref = sched.step(out, t, x_t)
        tt = torch.full((2,), t)
        a_t, s_t = S.alpha_sigma(abar, tt)
        x0, eps = S.x0_eps_from_output(out, x_t, a_t, s_t, prediction_type)
        x_s = S.ddim_jump(x0, eps, abar, (tt - T // n).clamp(min=0))
        assert (x0 - ref.pred_original_sample).abs().max() <= 1e-5, t
        assert (x_s - ref.prev_sample).abs().max() <= 1e-5, t


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_ddim_jump_is_tcd_step_with_eta_zero(prediction_type, n):
    """TCDScheduler with eta 0 (what the exported TSCD pipelines run) jumps to the next edge, the last
    step to timestep 0: exactly a student's jump to its segment end."""
    sched = TCDScheduler(**SD15, prediction_type=prediction_type, original_inference_steps=50)
    sched.set_timesteps(n)
    abar = S.alphas_cumprod_from_config(sched.config)
    edges = sched.timesteps.tolist()[1:] + [0]
    for (t, x_t, out), e in zip(_model_outputs(sched, n, prediction_type, 10 + n), edges):
        ref = sched.step(out, t, x_t, eta=0.0).prev_sample
        tt = torch.full((2,), t)
        a_t, s_t = S.alpha_sigma(abar, tt)
        x0, eps = S.x0_eps_from_output(out, x_t, a_t, s_t, prediction_type)
        assert (S.ddim_jump(x0, eps, abar, torch.full((2,), e)) - ref).abs().max() <= 1e-5, t


@pytest.mark.parametrize("n", [1, 2, 4])
def test_consistency_function_is_lcm_schedulers_denoised(n):
    sched = LCMScheduler(**SD15, original_inference_steps=50)
    sched.set_timesteps(n)
    abar = S.alphas_cumprod_from_config(sched.config)
    for t, x_t, out in _model_outputs(sched, n, "epsilon", 20 + n):
        ref = sched.step(out, t, x_t, generator=torch.Generator().manual_seed(0)).denoised
        tt = torch.full((2,), t)
        a_t, s_t = S.alpha_sigma(abar, tt)
        x0, _ = S.x0_eps_from_output(out, x_t, a_t, s_t, "epsilon")
        # diffusers' float32 schedule: ~1e-7 relative (x0 reaches ~30 at t = 999)
        torch.testing.assert_close(S.consistency_function(x_t, x0, tt), ref, rtol=1e-6, atol=1e-6, msg=str(t))
    # the boundary condition: at t = 0 the function returns its input, whatever the prediction
    z, x0 = torch.randn(2, 2, 4, 4, 4, dtype=torch.float64)
    assert torch.equal(S.consistency_function(z, x0, torch.zeros(2, dtype=torch.long)), z)


def test_guidance_embedding_matches_lcm_pipeline():
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 1.5, 7.0])
    for dim in (32, 33, 256):
        ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        torch.testing.assert_close(S.guidance_embedding(w, dim), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_output_round_trip_and_dtype(prediction_type):
    abar = S.alphas_cumprod(T, **SD15)
    t = torch.tensor([1, 250, 999])
    a, s = S.alpha_sigma(abar, t)
    g = torch.Generator().manual_seed(0)
    out, x_t = torch.randn(2, 3, 3, 4, 4, generator=g, dtype=torch.float64)
    x0, eps = S.x0_eps_from_output(out, x_t, a, s, prediction_type)
    back = S.output_from_x0_eps(x0, eps, a, s, prediction_type)
    torch.testing.assert_close(back, out, rtol=0, atol=1e-10)
    # x_t is reproduced by the recovered pair, whatever the parameterisation.
    torch.testing.assert_close(S.ddim_step(x0, eps, a, s), x_t, rtol=0, atol=1e-10)
    # float32 inputs stay float32 even though the schedule is float64.
    x0_32, eps_32 = S.x0_eps_from_output(out.float(), x_t.float(), a, s, prediction_type)
    assert x0_32.dtype == eps_32.dtype == torch.float32
    assert S.output_from_x0_eps(x0_32, eps_32, a, s, prediction_type).dtype == torch.float32


def test_ddim_step_with_true_x0_eps_lands_on_forward_noise():
    abar = S.alphas_cumprod(T, **SD15)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 4, 8, 8, generator=g, dtype=torch.float64)
    t, s = torch.tensor([999, 500, 260, 40]), torch.tensor([759, 250, 0, 20])
    a_t, s_t = S.alpha_sigma(abar, t)
    a_s, s_s = S.alpha_sigma(abar, s)
    x_t = a_t * x0 + s_t * eps
    for p in ["epsilon", "v_prediction", "sample"]:
        target = S.output_from_x0_eps(x0, eps, a_t, s_t, p)
        x0_hat, eps_hat = S.x0_eps_from_output(target, x_t, a_t, s_t, p)
        x_s = S.ddim_step(x0_hat, eps_hat, a_s, s_s)
        torch.testing.assert_close(x_s, a_s * x0 + s_s * eps, rtol=0, atol=1e-10)


def test_ddim_skip_grid_and_lcm_timesteps():
    grid = S.ddim_skip_grid(50, T)
    assert grid.dtype == torch.long and len(grid) == 50
    assert grid.tolist() == list(range(19, 1000, 20))
    lcm = LCMScheduler(**SD15, original_inference_steps=50)
    for n in [1, 2, 4, 8]:
        lcm.set_timesteps(n)
        assert set(lcm.timesteps.tolist()) <= set(grid.tolist())
    k = T // 50
    assert S.previous_on_grid(grid, k).tolist() == [0] + grid[:-1].tolist()


def test_consistency_scalings_match_lcm():
    c_skip, c_out = S.consistency_scalings(torch.tensor(0))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    lcm = LCMScheduler(**SD15)
    ts = [0, 1, 2, 5, 19, 39, 259, 499, 999]
    c_skip, c_out = S.consistency_scalings(torch.tensor(ts))
    for i, t in enumerate(ts):
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(t)
        assert abs(c_skip[i].item() - ref_skip) <= 1e-12, t
        assert abs(c_out[i].item() - ref_out) <= 1e-12, t
    c32 = S.consistency_scalings(torch.tensor([3.0]))[0]
    assert c32.dtype == torch.float32
