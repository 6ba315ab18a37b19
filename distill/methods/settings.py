"""The typed settings of every method, in a module that imports nothing heavy.

Each method's hyperparameters are a dataclass here (a comment per field) with a ``check()`` that
rejects values the method or its export cannot honour, naming the key. ``run_config`` types and
checks the ``method:`` section from ``CONFIGS`` before torch or diffusers are imported, so a config
mistake costs a fraction of a second; each method class in this package points at its config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fewstep.distill.config import ConfigError


@dataclass
class DenoiseConfig:
    caption_dropout: float = 0.1  # fraction of captions replaced by "" (unconditional training)
    train_text_encoder: bool = True  # a fresh teacher learns its text encoder jointly
    ema_decay: float = 0.0  # > 0: keep and export an EMA of the trained weights
    weighting: Literal["native", "snr", "snr+1"] = "native"  # loss weight per timestep, see snr_weight
    sample_steps: int = 25  # recipe of the exported teacher
    sample_guidance: float = 3.0

    def check(self) -> None:
        pass


@dataclass
class VaeConfig:
    kl_weight: float = 1e-6
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    stats_momentum: float = 0.99  # running estimate of the latent variance
    edge_weight: float = 10.0  # extra loss weight near edges (0: plain mean); see edge_weights
    edge_threshold: float = 0.1  # summed |RGB difference| (pixels in [-1, 1]) that marks an edge

    def check(self) -> None:
        pass


@dataclass
class LCMConfig:
    num_ddim_timesteps: int = 50  # N of the teacher's DDIM skip grid; the exported scheduler uses it too
    w_min: float = 3.0  # teacher guidance in LCM form cond + w (cond - uncond), w ~ U[w_min, w_max]
    w_max: float = 15.0
    loss: Literal["huber", "l2"] = "huber"
    huber_c: float = 0.001  # pseudo-Huber sqrt(d^2 + c^2) - c
    timestep_scaling: float = 10.0  # as LCMScheduler
    sigma_data: float = 0.5
    target_ema: float = 0.95  # full students: EMA decay of the target network
    w_embedding_dim: int = 256  # full students: time_cond_proj_dim of the guidance embedding
    w_embedding_init: Literal["zeros", "default"] = "zeros"  # its projection: zeros, or PyTorch's Linear init
    sample_steps: int = 4  # recipe of the export
    sample_guidance: float = 8.0  # full students only (w = guidance - 1 is embedded); LoRA students use 1

    def check(self) -> None:
        # diffusers' LCMScheduler hard-codes sigma_data = 0.5 in its boundary scalings: a student trained
        # with another value would ship as a different model from the one trained.
        if self.sigma_data != 0.5:
            raise ConfigError(f"method.sigma_data: LCMScheduler (the export's scheduler) fixes it at 0.5, "
                                    f"got {self.sigma_data}")
        if self.w_min > self.w_max:
            raise ConfigError(f"method.w_min ({self.w_min}) is above method.w_max ({self.w_max})")


@dataclass
class Stage:
    segments: int  # K: the trajectory is split into K segments (K-step sampling)
    steps: int  # optimizer steps spent in this stage


@dataclass
class TSCDConfig:
    stages: list[Stage] = field(default_factory=lambda: [Stage(8, 500), Stage(4, 500), Stage(2, 500), Stage(1, 500)])
    num_ddim_timesteps: int = 50  # N of the teacher's DDIM skip grid
    w_min: float = 2.0  # teacher CFG in LCM form, w ~ U[w_min, w_max] (standard scale 1 + w)
    w_max: float = 2.0
    loss: Literal["huber", "l2"] = "huber"
    huber_c: float = 0.001
    target_ema: float = 0.0  # full students: EMA target decay (0: online student under no_grad)
    start: Literal["data", "teacher"] = "data"  # z_t from noised data, or from the teacher's trajectory (MLCM)
    # Replay: the probability that a sample takes its K from an earlier stage (uniformly) instead of
    # the current one, so the last (1-segment) stage does not overwrite what the 8/4/2-segment
    # stages taught. 0 = Hyper-SD's strictly sequential stages; fewstep's tiny config uses 0.3.
    replay: float = 0.0
    sample_steps: int = 4  # default steps of the exported recipe

    def check(self) -> None:
        for st in self.stages:
            if not 1 <= st.segments <= self.num_ddim_timesteps:
                raise ConfigError(f"method.stages: {st.segments} segments need 1..method.num_ddim_timesteps "
                                        f"({self.num_ddim_timesteps}) skip-grid points")
        if not 0.0 <= self.replay <= 1.0:
            raise ConfigError(f"method.replay must be a probability in [0, 1], got {self.replay}")
        if self.w_min > self.w_max:
            raise ConfigError(f"method.w_min ({self.w_min}) is above method.w_max ({self.w_max})")


@dataclass
class DMDConfig:
    fake_steps_per_generator: int = 5  # TTUR: fake-score optimizer steps per generator step (DMD2 Sec. 4.2)
    real_guidance: float = 3.0  # teacher CFG scale of the real score, uncond + s (cond - uncond); the tiny teacher's best
    t_min: int = 20  # the DMD gradient's timestep t ~ U[t_min, t_max] (DMD2: 0.02 T .. 0.98 T)
    t_max: int = 980

    def check(self) -> None:
        if self.fake_steps_per_generator < 1:
            raise ConfigError(f"method.fake_steps_per_generator: must be >= 1 (fake-score steps per generator step), "
                              f"got {self.fake_steps_per_generator}")
        for key in ("t_min", "t_max"):
            if not 0 <= getattr(self, key) < 1000:
                raise ConfigError(f"method.{key}: must be a timestep in [0, 1000), got {getattr(self, key)}")
        if self.t_min >= self.t_max:
            raise ConfigError(f"method.t_min ({self.t_min}) must be below method.t_max ({self.t_max})")


# config name -> settings class (the method classes: methods.REGISTRY, under the same names)
CONFIGS: dict[str, type] = {"denoise": DenoiseConfig, "dmd": DMDConfig, "lcm": LCMConfig, "tscd": TSCDConfig,
                            "vae": VaeConfig}
