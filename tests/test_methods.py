"""Every method honours the same contract (the pattern of diffusers' SchedulerCommonTest):
a finite loss per phase, gradients only in ``trainable()``, and determinism under a seed."""
import torch

from fewstep.distill.run_config import parse_config
from fewstep.distill.data import build_dataset, collate
from fewstep.distill.methods.registry import REGISTRY
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import run_dict


class MethodContract:
    method = ""
    student = {"kind": "full"}
    extra: dict = {}

    def setup(self, tmp_path):
        raw = run_dict(tmp_path, method=self.method)
        raw["method"].update(self.extra)
        raw["student"] = {**self.student, "lora_rank": 4, "lora_alpha": 4}
        cfg = parse_config(raw)
        method = REGISTRY[cfg.method.name](cfg.method.config, cfg.student)
        models = method.build(build_tiny_pipeline(cfg.model.tiny, seed=0))
        ds = build_dataset(cfg.data)
        batch = collate([ds[i] for i in range(4)])
        return method, models, batch

    def test_loss_is_finite_and_gradients_reach_only_trainable(self, tmp_path):
        method, models, batch = self.setup(tmp_path)
        for phase in method.phases:
            for m in list(models.modules.values()) + [models.pipe.vae, models.pipe.text_encoder, models.pipe.unet]:
                m.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            out = method.loss(models, batch, phase, step=0)
            assert out.loss.ndim == 0 and torch.isfinite(out.loss)
            out.loss.backward()
            allowed = {id(p) for n in method.trainable(models, phase) for p in models[n].parameters()}
            everything = {id(p): p for m in list(models.modules.values()) + [models.pipe.vae, models.pipe.text_encoder,
                                                                           models.pipe.unet] for p in m.parameters()}
            leaked = [p for i, p in everything.items() if p.grad is not None and i not in allowed]
            assert not leaked, f"{len(leaked)} parameters outside trainable() got gradients"
            got = [p for i, p in everything.items() if i in allowed and p.grad is not None and p.grad.abs().sum() > 0]
            assert got, "no trainable parameter received a gradient"

    def test_deterministic_under_a_seed(self, tmp_path):
        losses = []
        for _ in range(2):
            method, models, batch = self.setup(tmp_path)
            torch.manual_seed(7)
            losses.append(method.loss(models, batch, method.phases[0], step=0).loss.item())
        assert losses[0] == losses[1]


class TestDenoise(MethodContract):
    method = "denoise"


class TestVae(MethodContract):
    method = "vae"


class TestLcmLora(MethodContract):
    method = "lcm"
    student = {"kind": "lora"}


class TestLcmFull(MethodContract):
    method = "lcm"
    extra = {"target_ema": 0.9}


class TestTscdLora(MethodContract):
    method = "tscd"
    student = {"kind": "lora"}


class TestTscdFromTeacherTrajectories(MethodContract):
    method = "tscd"
    student = {"kind": "lora"}
    extra = {"start": "teacher", "num_ddim_timesteps": 10}
