"""Training and inference agree: the grids a consistency student trains on are the timesteps the
exported stock schedulers run."""
import pytest
import torch
from diffusers import LCMScheduler, TCDScheduler

from fewstep.distill import schedules
from fewstep.pipelines.tiny import SD15_SCHEDULE

N = 50


@pytest.mark.parametrize("cls", [LCMScheduler, TCDScheduler])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 16, 50])
def test_consistency_timesteps_equal_stock_schedulers(cls, k):
    sched = cls(**{**SD15_SCHEDULE, "original_inference_steps": N})
    sched.set_timesteps(k)
    assert sched.timesteps.tolist() == schedules.consistency_timesteps(k, N).tolist()


def test_segment_edges_are_on_the_skip_grid_and_nested():
    grid = set(schedules.ddim_skip_grid(N).tolist()) | {0}
    for k in (1, 2, 4, 8):
        edges = schedules.segment_edges(k, N)
        assert set(edges.tolist()) <= grid and edges[-1] == 0 and len(edges) == k + 1
    assert set(schedules.segment_edges(4, N).tolist()) <= set(schedules.segment_edges(8, N).tolist())
    assert set(schedules.segment_edges(2, N).tolist()) <= set(schedules.segment_edges(4, N).tolist())


def test_segment_end_maps_each_point_to_the_next_lower_edge():
    edges = schedules.segment_edges(4, N)  # [999, 759, 499, 259, 0]
    t = torch.tensor([999, 779, 759, 519, 499, 279, 259, 19])
    assert schedules.segment_end(t, edges).tolist() == [759, 759, 499, 499, 259, 259, 0, 0]


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_exported_tscd_scheduler_runs_exactly_the_trained_edges(k):
    from fewstep.distill.config import StudentConfig
    from fewstep.distill.methods.tscd import TSCDConfig, TSCDMethod, Stage

    method = TSCDMethod(TSCDConfig(stages=[Stage(8, 1), Stage(4, 1), Stage(2, 1), Stage(1, 1)]),
                        StudentConfig(kind="lora"))
    recipe = method.recipe(k)
    sched = TCDScheduler(**{**SD15_SCHEDULE, **recipe.scheduler_kwargs})
    sched.set_timesteps(k)
    edges = schedules.segment_edges(k, N)
    assert sched.timesteps.tolist() == edges[:-1].tolist()
    recipe.check_steps(k)
    with pytest.raises(ValueError, match="trained for"):
        recipe.check_steps(3)


@pytest.mark.parametrize("config", ["configs/tiny/tscd_lora.yaml", "configs/sd15/tscd_lora.yaml"])
def test_shipped_tscd_configs_export_schedulers_that_run_their_trained_edges(config):
    from pathlib import Path

    from fewstep.distill.run_config import load_config
    from fewstep.distill.methods.registry import REGISTRY

    cfg = load_config(Path(__file__).resolve().parents[1] / config)
    method = REGISTRY[cfg.method.name](cfg.method.config, cfg.student)
    n = cfg.method.config.num_ddim_timesteps
    for stage in cfg.method.config.stages:
        recipe = method.recipe(stage.segments)
        sched = TCDScheduler(**{**SD15_SCHEDULE, **recipe.scheduler_kwargs})
        sched.set_timesteps(stage.segments)
        assert sched.timesteps.tolist() == schedules.segment_edges(stage.segments, n)[:-1].tolist()
        recipe.check_steps(stage.segments)


def test_consistency_timesteps_rejects_more_steps_than_grid():
    with pytest.raises(ValueError, match="num_steps"):
        schedules.consistency_timesteps(51, 50)


@pytest.mark.parametrize("replay", [0.0, 0.5])
def test_tscd_replay_draws_segment_ends_of_earlier_stages(replay):
    from fewstep.distill.config import StudentConfig
    from fewstep.distill.methods.tscd import TSCDConfig, TSCDMethod, Stage

    method = TSCDMethod(TSCDConfig(stages=[Stage(8, 10), Stage(4, 10), Stage(2, 10)], replay=replay),
                        StudentConfig(kind="lora"))
    t = torch.full((8000,), 999)
    first = method.segment_targets(t, 5, 1000)  # stage 1: only K = 8, replay or not
    assert set(first.tolist()) == {schedules.segment_edges(8, N)[1].item()}
    last = method.segment_targets(t, 25, 1000)  # stage 3 (K = 2)
    ends = {k: schedules.segment_edges(k, N)[1].item() for k in (8, 4, 2)}
    share = {k: (last == e).float().mean().item() for k, e in ends.items()}
    expected = {2: 1 - replay, 4: replay / 2, 8: replay / 2}  # earlier stages share the replayed part
    assert all(abs(share[k] - expected[k]) < 0.03 for k in ends), share


def test_tscd_replay_must_be_a_probability():
    from fewstep.distill.config import StudentConfig
    from fewstep.distill.methods.tscd import TSCDConfig, TSCDMethod

    with pytest.raises(ValueError, match="method.replay"):
        TSCDMethod(TSCDConfig(replay=1.5), StudentConfig(kind="lora"))
