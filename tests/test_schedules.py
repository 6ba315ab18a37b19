"""distill.schedules against diffusers' schedulers as the independent reference."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

from fewstep.distill import schedules as S

T = 1000
SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
STEP_COUNTS = [1, 2, 3, 4, 7, 8, 25, 48, 50]


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


def test_unknown_prediction_type_and_spacing_named():
    x = torch.zeros(1, 1, 1, 1)
    a = torch.ones(1, 1, 1, 1)
    with pytest.raises(ValueError, match="x_start"):
        S.x0_eps_from_output(x, x, a, a, "x_start")
    with pytest.raises(ValueError, match="x_start"):
        S.output_from_x0_eps(x, x, a, a, "x_start")
    with pytest.raises(ValueError, match="sideways"):
        S.inference_timesteps(4, "sideways")


def test_alpha_sigma_shapes_and_final():
    abar = S.alphas_cumprod(T, **SD15)
    t = torch.tensor([0, 500, 999])
    a, s = S.alpha_sigma(abar, t)
    assert a.shape == s.shape == (3, 1, 1, 1) and a.dtype == torch.float64
    torch.testing.assert_close((a**2 + s**2).flatten(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(a.flatten(), abar[t].sqrt())
    assert S.append_dims(torch.ones(2), 4).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="alpha_sigma_prev"):
        S.alpha_sigma(abar, torch.tensor([-1]))
    s_ = torch.tensor([-1, -20, 0, 999])
    a1, s1 = S.alpha_sigma_prev(abar, s_, set_alpha_to_one=True, ndim=1)
    a0, _ = S.alpha_sigma_prev(abar, s_, set_alpha_to_one=False, ndim=1)
    assert a1.tolist()[:2] == [1.0, 1.0] and s1.tolist()[:2] == [0.0, 0.0]
    torch.testing.assert_close(a0, abar[[0, 0, 0, 999]].sqrt())
    torch.testing.assert_close(a1[2:], abar[[0, 999]].sqrt())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 25, 50])
def test_ddim_step_matches_diffusers_sd15(prediction_type, n):
    sched = DDIMScheduler(
        **SD15, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type=prediction_type,
    )
    sched.set_timesteps(n)
    abar = S.alphas_cumprod_from_config(sched.config)
    g = torch.Generator().manual_seed(n)
    for t in sched.timesteps.tolist():
        x_t = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        out = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        ref = sched.step(out, t, x_t)
        tt = torch.full((2,), t)
        a_t, s_t = S.alpha_sigma(abar, tt)
        x0, eps = S.x0_eps_from_output(out, x_t, a_t, s_t, prediction_type)
        a_s, s_s = S.alpha_sigma_prev(abar, tt - T // n, set_alpha_to_one=False)
        x_s = S.ddim_step(x0, eps, a_s, s_s)
        assert (x0 - ref.pred_original_sample).abs().max() <= 1e-5, t
        assert (x_s - ref.prev_sample).abs().max() <= 1e-5, t


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


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_timestep_grids_match_ddim(spacing, steps_offset):
    sched = DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset)
    fn = {
        "leading": S.timesteps_leading,
        "trailing": S.timesteps_trailing,
        "linspace": S.timesteps_linspace,
    }[spacing]
    kw = {"steps_offset": steps_offset} if spacing == "leading" else {}
    for n in list(range(1, 51)) + [96, 112, 500, 999, 1000]:
        sched.set_timesteps(n)
        ours = S.inference_timesteps(n, spacing, T, steps_offset)
        assert ours.dtype == torch.long
        assert torch.equal(ours, sched.timesteps), (spacing, n)
        assert torch.equal(fn(n, T, **kw), ours)
        assert (ours[:-1] > ours[1:]).all()


# EulerDiscreteScheduler's own numpy call emits a DeprecationWarning under numpy 2; not ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_timestep_grids_match_euler(spacing):
    sched = EulerDiscreteScheduler(**SD15, timestep_spacing=spacing, steps_offset=1)
    for n in STEP_COUNTS:
        sched.set_timesteps(n)
        ours = S.inference_timesteps(n, spacing, T, steps_offset=1)
        assert torch.equal(ours.float(), sched.timesteps), (spacing, n)


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
