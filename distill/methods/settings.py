"""The typed settings of every method, in a module that imports nothing heavy.

Each method's hyperparameters are a dataclass here (a comment per field) with a ``check()`` that
rejects values the method or its export cannot honour, naming the key; each numeric field's own
range is written next to it (``ranged``) and checked while the section is typed. ``run_config`` types and
checks the ``method:`` section from ``CONFIGS`` before torch or diffusers are imported, so a config
mistake costs a fraction of a second; each method class in this package points at its config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fewstep.distill.config import ConfigError, ranged


@dataclass
class DenoiseConfig:
    caption_dropout: float = ranged(0.1, ge=0.0, le=1.0)  # fraction of captions replaced by "" (unconditional training)
    train_text_encoder: bool = True  # a fresh teacher learns its text encoder jointly
    ema_decay: float = ranged(0.0, ge=0.0, lt=1.0)  # > 0: keep and export an EMA of the trained weights
    weighting: Literal["native", "snr", "snr+1"] = "native"  # loss weight per timestep, see snr_weight
    sample_steps: int = ranged(25, ge=1)  # recipe of the exported teacher
    sample_guidance: float = 3.0

    def check(self) -> None:
        pass


@dataclass
class VaeConfig:
    kl_weight: float = ranged(1e-6, ge=0.0)
    l1_weight: float = ranged(1.0, ge=0.0)
    mse_weight: float = ranged(1.0, ge=0.0)
    stats_momentum: float = ranged(0.99, ge=0.0, lt=1.0)  # running estimate of the latent variance
    edge_weight: float = ranged(10.0, ge=0.0)  # extra loss weight near edges (0: plain mean); see edge_weights
    edge_threshold: float = ranged(0.1, ge=0.0)  # summed |RGB difference| (pixels in [-1, 1]) that marks an edge

    def check(self) -> None:
        pass


def check_guidance_range(w_min: float, w_max: float) -> None:
    """The teacher guidance w ~ U[w_min, w_max] of the consistency methods needs w_min <= w_max."""
    if w_min > w_max:
        raise ConfigError(f"method.w_min ({w_min}) is above method.w_max ({w_max})")


@dataclass
class LCMConfig:
    # N of the teacher's DDIM skip grid; the exported scheduler uses it too
    num_ddim_timesteps: int = ranged(50, ge=1, le=1000)
    w_min: float = ranged(3.0, ge=0.0)  # teacher guidance in LCM form cond + w (cond - uncond), w ~ U[w_min, w_max]
    w_max: float = ranged(15.0, ge=0.0)
    loss: Literal["huber", "l2"] = "huber"
    huber_c: float = ranged(0.001, gt=0)  # pseudo-Huber sqrt(d^2 + c^2) - c
    timestep_scaling: float = ranged(10.0, gt=0)  # as LCMScheduler
    sigma_data: float = ranged(0.5, gt=0)
    target_ema: float = ranged(0.95, ge=0.0, lt=1.0)  # full students: EMA decay of the target network
    w_embedding_dim: int = ranged(256, ge=1)  # full students: time_cond_proj_dim of the guidance embedding
    w_embedding_init: Literal["zeros", "default"] = "zeros"  # its projection: zeros, or PyTorch's Linear init
    sample_steps: int = ranged(4, ge=1)  # recipe of the export
    sample_guidance: float = 8.0  # full students only (w = guidance - 1 is embedded); LoRA students use 1

    def check(self) -> None:
        # diffusers' LCMScheduler hard-codes sigma_data = 0.5 in its boundary scalings: a student trained
        # with another value would ship as a different model from the one trained.
        if self.sigma_data != 0.5:
            raise ConfigError(f"method.sigma_data: LCMScheduler (the export's scheduler) fixes it at 0.5, "
                              f"got {self.sigma_data}")
        check_guidance_range(self.w_min, self.w_max)


@dataclass
class Stage:
    segments: int = ranged(ge=1)  # K: the trajectory is split into K segments (K-step sampling)
    steps: int = ranged(ge=1)  # optimizer steps spent in this stage


@dataclass
class TSCDConfig:
    stages: list[Stage] = field(default_factory=lambda: [Stage(8, 500), Stage(4, 500), Stage(2, 500), Stage(1, 500)])
    num_ddim_timesteps: int = ranged(50, ge=1, le=1000)  # N of the teacher's DDIM skip grid
    w_min: float = ranged(2.0, ge=0.0)  # teacher CFG in LCM form, w ~ U[w_min, w_max] (standard scale 1 + w)
    w_max: float = ranged(2.0, ge=0.0)
    loss: Literal["huber", "l2"] = "huber"
    huber_c: float = ranged(0.001, gt=0)
    target_ema: float = ranged(0.0, ge=0.0, lt=1.0)  # full students: EMA target decay (0: online student under no_grad)
    start: Literal["data", "teacher"] = "data"  # z_t from noised data, or from the teacher's trajectory (MLCM)
    # Replay: the probability that a sample takes its K from an earlier stage (uniformly) instead of
    # the current one, so the last (1-segment) stage does not overwrite what the 8/4/2-segment
    # stages taught. 0 = Hyper-SD's strictly sequential stages; fewstep's tiny config uses 0.3.
    replay: float = ranged(0.0, ge=0.0, le=1.0, what="a probability")
    sample_steps: int = ranged(4, ge=1)  # default steps of the exported recipe

    def check(self) -> None:
        for st in self.stages:
            if not 1 <= st.segments <= self.num_ddim_timesteps:
                raise ConfigError(f"method.stages: {st.segments} segments need 1..method.num_ddim_timesteps "
                                  f"({self.num_ddim_timesteps}) skip-grid points")
        check_guidance_range(self.w_min, self.w_max)


@dataclass
class ScoreConfig:
    """What every score-distillation method (methods.generator) reads."""

    # K: the generator's steps, at LCMScheduler's timesteps for original_inference_steps = K (999 for
    # K = 1; 999, 749, 499, 249 for K = 4); K > 1 trains with backward simulation (DMD2 Sec. 4.5)
    generator_steps: int = ranged(1, ge=1, le=1000)
    # the timestep a 1-step generator is told its pure-noise input sits at (DMD2's SDXL 1-step model:
    # 399, "conditioning_timestep"); 999 = T - 1 is the schedule's own end. With an eps teacher the x0
    # of a step at t divides by sqrt(alpha_bar_t) (0.068 at 999, 0.65 at 399 on SD's schedule), so a
    # lower timestep amplifies the generator's errors less. Exported as a one-step DDIMScheduler on the
    # teacher's betas cut at t (methods.generator.one_step_ddim): its x0, which the generator's
    # LCM-style boundary form c_skip z + c_out x0 equals to < 1e-6 only from t = 100 up
    generator_timestep: int = ranged(999, ge=100, lt=1000, what="a timestep")
    # TTUR: fake-score optimizer steps per generator step (DMD2 Sec. 4.2: 5-10; SiD: 1)
    fake_steps_per_generator: int = ranged(1, ge=1)
    # the fake score's training samples: "fresh" generator samples per fake step (DMD2), or the
    # generator phase's own samples of the iteration, re-noised each fake step ("handover": cheaper)
    fake_samples: Literal["fresh", "handover"] = "fresh"
    real_guidance: float = ranged(3.0, ge=0.0, le=100.0)  # teacher CFG scale of the real score, uncond + s (cond - uncond)
    fake_guidance: float = ranged(1.0, ge=0.0, le=100.0)  # CFG scale of the fake score where it is evaluated (1: none)
    fake_train_guidance: float = ranged(1.0, ge=0.0, le=100.0)  # CFG scale of the fake score's prediction in its own loss
    # fraction of the fake score's training captions replaced by "" (SiD-LSG: 0.1), so its unconditional
    # branch is trained too: a guided fake score (fake_guidance / fake_train_guidance != 1) needs it
    fake_caption_dropout: float = ranged(0.0, ge=0.0, le=1.0, what="a probability")
    # the fake score's denoising-loss weight per timestep (methods.denoise.snr_weight): "native" is the
    # plain loss of its prediction type (eps: SNR on x0, almost nothing at high t); the embedded teacher
    # was trained with "snr+1", and an eps fake score trained natively fits the generator's samples worse
    # than the teacher itself at t >= 650 (bench/score_fit.py)
    fake_weighting: Literal["native", "snr", "snr+1"] = "native"
    # the score timestep t ~ U[t_min, t_max] (DMD2: 0.02 T .. 0.98 T; SwiftBrush: 20 .. 980)
    t_min: int = ranged(20, ge=0, lt=1000, what="a timestep")
    t_max: int = ranged(980, ge=0, lt=1000, what="a timestep")
    ema_decay: float = ranged(0.0, ge=0.0, lt=1.0)  # > 0: a full generator ships its EMA
    # the fake score: 0 = the student's kind (a LoRA student's fake score is a second adapter of its
    # rank; a full student's a full copy of the teacher); > 0 = a LoRA of this rank on the frozen
    # teacher whatever the student (SwiftBrush: rank 64, alpha 108, on to_q and to_v)
    fake_lora_rank: int = ranged(0, ge=0, le=1024)
    fake_lora_alpha: float = ranged(0.0, ge=0.0)  # 0: equal to the rank
    fake_lora_targets: list[str] = field(default_factory=list)  # empty: the student's student.lora_targets
    # the adversarial term (DMD2 Sec. 4.3; SiDA for SiD): a classifier head on the fake score's bottleneck
    # features of noised generator samples vs noised real images; 0: off. It needs a data source with
    # images at the generator's size.
    gan_weight: float = ranged(0.0, ge=0.0)  # generator's non-saturating loss weight (DMD2 SDXL 5e-3)
    gan_head_weight: float = ranged(0.01, ge=0.0)  # the head's loss weight in the fake-score phase (DMD2 1e-2)

    def check(self) -> None:
        if self.t_min >= self.t_max:
            raise ConfigError(f"method.t_min ({self.t_min}) must be below method.t_max ({self.t_max})")
        if self.generator_timestep != 999 and self.generator_steps != 1:
            raise ConfigError(f"method.generator_timestep ({self.generator_timestep}): only a 1-step generator can move "
                              f"its timestep (a stock scheduler runs a {self.generator_steps}-step generator at "
                              f"999 first); set method.generator_steps: 1 or leave it at 999")
        if (self.fake_guidance != 1 or self.fake_train_guidance != 1) and self.fake_caption_dropout == 0:
            raise ConfigError("method.fake_caption_dropout: a guided fake score (fake_guidance or fake_train_guidance "
                              "!= 1) needs an unconditional branch trained on empty captions; set it > 0 (SiD-LSG: 0.1)")


@dataclass
class DMDConfig(ScoreConfig):
    fake_steps_per_generator: int = ranged(5, ge=1)  # DMD2: 5 (SD1.5 launch scripts: 10)
    # DMD's regression term (DMD, Yin et al. 2024, Eq. 9): the 1-step generator from the noise of
    # teacher (noise, sample) pairs, pulled toward the teacher's samples (latent MSE where DMD uses
    # LPIPS); 0: off. The pairs are made once before training from the data's first captions.
    regression_weight: float = ranged(0.0, ge=0.0)
    regression_pairs: int = ranged(256, ge=1, le=100000)  # how many pairs
    regression_teacher_steps: int = ranged(25, ge=1, le=1000)  # DDIM (trailing) steps of the teacher's samples


@dataclass
class VSDConfig(ScoreConfig):
    real_guidance: float = ranged(4.5, ge=0.0, le=100.0)  # SwiftBrush: 4.5


@dataclass
class SiDConfig(ScoreConfig):
    # alpha of the score-identity loss (SiD, Zhou et al. 2024, Eq. 23): 1.2 for EDM, 1 in SiD-LSG's SD runs
    alpha: float = ranged(1.2, ge=0.0, le=10.0)
    # SiD-LSG's long-and-short guidance: kappa_1 (fake_train_guidance), kappa_2 = kappa_3 (fake_guidance),
    # kappa_4 (real_guidance); the SD1.5 runs use 2 for all
    real_guidance: float = ranged(2.0, ge=0.0, le=100.0)
    fake_guidance: float = ranged(2.0, ge=0.0, le=100.0)
    fake_train_guidance: float = ranged(2.0, ge=0.0, le=100.0)
    fake_caption_dropout: float = ranged(0.1, ge=0.0, le=1.0, what="a probability")


# config name -> settings class (the method classes: methods.REGISTRY, under the same names)
CONFIGS: dict[str, type] = {"denoise": DenoiseConfig, "dmd": DMDConfig, "lcm": LCMConfig, "sid": SiDConfig,
                            "tscd": TSCDConfig, "vae": VaeConfig, "vsd": VSDConfig}
