"""``train.compile``: the run's UNets are compiled in place (state-dict keys and the module objects the
roles share stay as they are), and a compiled LCM-LoRA step gives the eager step's loss and gradients.

The test compiles with dynamo's ``aot_eager`` backend: the same graph capture, guards and autograd split
as inductor, without its C++ code generation, which takes 5-10 minutes for the very small UNet's three
graphs on a 2-core runner. Inductor's speed and its agreement with eager are measured by the benchmark
in bench/REFERENCE_LCM.md ("With a compiled UNet"), where the compiled run's losses match the eager run's."""
import pytest
import torch

from fewstep.distill.loop import Trainer
from fewstep.distill.run_config import parse_config
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import lcm_step, run_dict


def make_trainer(tmp_path, compile_unets):
    raw = run_dict(tmp_path, method="lcm", steps=1, checkpoint_every=0, compile=compile_unets)
    raw["student"] = {"kind": "lora", "lora_rank": 4, "lora_alpha": 4}
    cfg = parse_config(raw)
    trainer = Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0))
    with torch.no_grad():  # a live adapter (peft starts B at zero), so the A factors get gradients too
        g = torch.Generator().manual_seed(0)
        for n, p in trainer.models.modules["unet"].unet.named_parameters():
            if ".lora_B." in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return trainer


@pytest.fixture
def aot_eager(monkeypatch):
    """nn.Module.compile with the arguments fewstep passes, on the aot_eager backend; records them."""
    calls, inner = [], torch.nn.Module.compile

    def compile_(module, **kwargs):
        calls.append((type(module).__name__, kwargs))
        inner(module, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


def test_compiled_lcm_lora_step_equals_the_eager_one(tmp_path, aot_eager):
    from torch._dynamo.utils import counters

    eager = make_trainer(tmp_path / "eager", False)
    assert aot_eager == []
    compiled = make_trainer(tmp_path / "compiled", True)
    assert aot_eager == [("UNet2DConditionModel", {"dynamic": False})]  # the one shared UNet, static shapes
    unet = compiled.models.modules["unet"].unet
    assert eager.models.modules["unet"].unet._compiled_call_impl is None
    assert unet._compiled_call_impl is not None
    assert compiled.models["teacher"].unet is compiled.models["target"].unet is unet  # one UNet, views of it
    assert list(unet.state_dict()) == list(eager.models.modules["unet"].unet.state_dict())
    loss_e, grads_e = lcm_step(eager)
    loss_c, grads_c = lcm_step(compiled)
    # a compiler may reorder float32 arithmetic: rounding-level differences only
    assert loss_c == pytest.approx(loss_e, rel=1e-4)
    for a, b in zip(grads_c, grads_e):  # elementwise, next to the tensor's own scale
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())
    # the compiled graphs ran (a silent fall back to eager would leave dynamo's counters at zero)
    assert counters["stats"]["unique_graphs"] >= 3  # student with grad, target and teacher without


def test_sampling_of_a_compiled_run_compiles_nothing(tmp_path, aot_eager):
    """The validation grid (and the export's, through the same ``eager_sampling``) runs eagerly: its batch
    shapes would each compile a graph of their own, used for a handful of calls."""
    from torch._dynamo.utils import counters

    trainer = make_trainer(tmp_path, True)
    lcm_step(trainer)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 3
    trainer.validate()
    assert (tmp_path / "runs" / "t" / "samples" / "step-000000.png").is_file()
    assert counters["stats"]["unique_graphs"] == graphs
    with torch.no_grad():  # the same sampling outside the stance does compile (so the count above can move)
        trainer.method.preview(trainer.models, trainer.val_batch, 0)
    assert counters["stats"]["unique_graphs"] > graphs
