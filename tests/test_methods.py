"""Every method honours the same contract (the pattern of diffusers' SchedulerCommonTest):
a finite loss per phase, gradients only in the roles the phase optimises (for a LoRA student: only
adapter weights), and determinism under a seed."""
import torch

from fewstep.distill.run_config import parse_config
from fewstep.distill.data import build_dataset, collate
from fewstep.distill.methods.registry import REGISTRY
from fewstep.distill.phases import freeze_all_but
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
        method.setup(models, ds)  # as the loop does after build
        batch = collate([ds[i] for i in range(4)])
        return method, models, batch

    def test_loss_is_finite_and_gradients_reach_only_trainable(self, tmp_path):
        method, models, batch = self.setup(tmp_path)
        networks = list(models.modules.values()) + [models.pipe.vae, models.pipe.text_encoder, models.pipe.unet]
        named = {id(p): (n, p) for m in networks for n, p in m.named_parameters()}
        own = {ph.name: [p for r in ph.modules for _, p in models.trainable_parameters(r)] for ph in method.phases()}
        for phase in method.phases():
            for m in networks:
                m.zero_grad(set_to_none=True)
            freeze_all_but(own, phase.name)  # as the loop runs a phase: every other phase's roles frozen
            torch.manual_seed(0)
            out = method.loss(models, {**batch, "handover": {}}, phase.name, step=0)
            assert out.loss.ndim == 0 and torch.isfinite(out.loss)
            out.loss.backward()
            allowed = {id(p) for r in phase.modules for _, p in models.trainable_parameters(r)}
            assert allowed, f"phase {phase.name} trains nothing"
            with_grad = {i for i, (_, p) in named.items() if p.grad is not None}
            leaked = [named[i][0] for i in with_grad - allowed]
            assert not leaked, f"{len(leaked)} parameters outside phase {phase.name} got gradients, e.g. {leaked[:3]}"
            if self.student.get("kind") == "lora":  # the frozen base UNet must not train, only its adapters
                in_unet = {id(p) for p in models.pipe.unet.parameters()}
                names = [named[i][0] for i in with_grad & in_unet]
                assert names and all(".lora_" in n for n in names), [n for n in names if ".lora_" not in n][:3]
            got = [i for i in with_grad & allowed if named[i][1].grad.abs().sum() > 0]
            assert got, "no trainable parameter received a gradient"

    def test_deterministic_under_a_seed(self, tmp_path):
        losses = []
        for _ in range(2):
            method, models, batch = self.setup(tmp_path)
            torch.manual_seed(7)
            losses.append(method.loss(models, batch, method.phases()[0].name, step=0).loss.item())
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
