"""Multistep / trajectory-segmented consistency distillation (Hyper-SD TSCD, phased consistency, MLCM).

The PF-ODE trajectory is split into K segments at ``schedules.segment_edges(K)``. Within its
segment, the student maps a point z_t straight to the segment's lower edge e by a DDIM jump from
its own (x0, eps) prediction (phased consistency models, Wang et al. 2024, Eq. 6). The target is
the teacher's one DDIM skip step t -> s followed by the target network's jump s -> e; when s is
already the edge, the target is the teacher's point itself (the boundary condition):

    pred   = DDIM_{t->e}(theta(z_t, t))
    target = z_s                        if s == e
             DDIM_{s->e}(target(z_s, s)) otherwise,   z_s = DDIM_{t->s}(teacher_cfg(z_t, t))

Hyper-SD (Ren et al. 2024, Sec. 3.1) trains progressively with fewer segments (8 -> 4 -> 2 -> 1),
each stage continuing the same LoRA; K-step TCD / DDIM sampling at the edges then reproduces the
student's jumps exactly, so one unified LoRA serves 8, 4, 2 and 1 steps. MLCM (Xie et al. 2024)
trains on states of the teacher's own trajectories instead of noised data: ``start: teacher``.
"""
from __future__ import annotations

import torch

from fewstep.distill import rng, schedules
from fewstep.distill.methods.base import LossOutput, Method, Recipe, pipeline_with
from fewstep.distill.methods.common import distance, grid_batch, guided_teacher, noised
from fewstep.distill.methods.settings import Stage, TSCDConfig
from fewstep.distill.modelset import ModelSet, unwrap
from fewstep.distill.students import EXPORTED_ROLE, build_students


class TSCDMethod(Method):
    Config = TSCDConfig

    def build(self, pipe) -> ModelSet:
        return build_students(pipe, self.student_config, target_ema=self.config.target_ema)

    def stage_at(self, step: int) -> Stage:
        """The stage a global step belongs to; past the last stage, the last one."""
        return self.config.stages[self._stage_index(step)]

    def _stage_index(self, step: int) -> int:
        end = 0
        for i, st in enumerate(self.config.stages):
            end += st.steps
            if step < end:
                return i
        return len(self.config.stages) - 1

    def segment_targets(self, t: torch.Tensor, step: int, num_train_timesteps: int) -> torch.Tensor:
        """Each sample's segment end: the current stage's, or with probability ``replay`` (and a stage
        before this one) that of an earlier stage drawn uniformly."""
        cfg = self.config
        i = self._stage_index(step)

        def ends(k):
            return schedules.segment_end(t, schedules.segment_edges(k, cfg.num_ddim_timesteps, num_train_timesteps))

        e = ends(cfg.stages[i].segments)
        if cfg.replay <= 0 or i == 0:
            return e
        earlier = torch.stack([ends(st.segments) for st in cfg.stages[:i]])
        pick = rng.randint(0, i, len(t), t.device)
        take = rng.rand(len(t), t.device) < cfg.replay
        return torch.where(take, earlier.gather(0, pick[None]).squeeze(0), e)

    @torch.no_grad()
    def _teacher_state(self, models, latents, t, cond, uncond, w):
        """z_t on the teacher's own trajectory: the guided DDIM solver from pure noise at the top of
        the skip grid down to each sample's t (MLCM's training points)."""
        abar = unwrap(models["teacher"]).alphas_cumprod
        T, n = abar.shape[0], self.config.num_ddim_timesteps
        grid = schedules.ddim_skip_grid(n, T).flip(0).to(latents.device)
        z = rng.randn_like(latents)
        for cur, nxt in zip(grid[:-1], grid[1:]):
            active = t < cur
            if not active.any():
                break
            pred = guided_teacher(models, z, cur.expand(len(z)), cond, uncond, w)
            z_next = schedules.ddim_jump(pred.x0, pred.eps, abar, nxt.expand(len(z)))
            z = torch.where(schedules.append_dims(active, z.ndim), z_next, z)
        return z

    def loss(self, models: ModelSet, batch: dict, phase: str, step: int) -> LossOutput:
        cfg = self.config
        stage = self.stage_at(step)
        den, latents, cond, uncond, t, s = grid_batch(models, batch, cfg.num_ddim_timesteps)
        b, dev = latents.shape[0], latents.device
        abar = den.alphas_cumprod
        e = self.segment_targets(t, step, abar.shape[0])
        w = rng.rand(b, dev) * (cfg.w_max - cfg.w_min) + cfg.w_min
        if cfg.start == "teacher":
            z_t = self._teacher_state(models, latents, t, cond, uncond, w)
        else:
            z_t = noised(den, latents, t)

        def jump(pred, to):  # a prediction's DDIM jump to timestep(s) ``to``
            return schedules.ddim_jump(pred.x0, pred.eps, abar, to)

        online = jump(models["student"](z_t, t, cond), e)
        with torch.no_grad():
            z_s = jump(guided_teacher(models, z_t, t, cond, uncond, w), s)
            target = torch.where(schedules.append_dims(s == e, z_s.ndim), z_s, jump(models["target"](z_s, s, cond), e))
        loss = distance(online, target, cfg.loss, cfg.huber_c)
        return LossOutput(loss, {"segments": float(stage.segments)})

    def recipe(self, steps: int | None = None) -> Recipe:
        """TCDScheduler (eta 0, the pipeline default) evaluates exactly the trained edges."""
        trained = sorted({st.segments for st in self.config.stages})
        return Recipe("TCDScheduler", {"original_inference_steps": self.config.num_ddim_timesteps},
                      steps or self.config.sample_steps, 1.0, trained_steps=trained)

    def to_pipeline(self, models: ModelSet):
        return pipeline_with(models, unet=models[EXPORTED_ROLE].unet), self.recipe()
