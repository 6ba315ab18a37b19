"""LoRA layers run merged where their adapter takes no gradient (distill/lora_merged.py): the same
outputs as peft's own forward, the same gradients where the adapter trains (peft's branch runs
then), base weights never written, and the cheaper form chosen by counted multiply-adds."""
import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from fewstep.distill import lora_merged
from fewstep.distill.config import StudentConfig
from fewstep.distill.students import add_lora
from fewstep.pipelines.teacher import load_pipeline

# The merged layer reorders float32 arithmetic ((W + s B A) x against W x + s B (A x)): measured 2e-6 on
# the embedded UNet's outputs (|y| ~ 6); the adapter itself moves them by over 0.1 (asserted below).
ATOL = 1e-5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 12, 3, padding=1)
        self.down = nn.Conv2d(12, 12, 3, stride=2, padding=1)
        self.proj = nn.Linear(12, 16)

    def forward(self, x):
        h = self.down(torch.relu(self.conv(x)))
        return self.proj(h.flatten(2).transpose(1, 2))


def lora_net(seed=0, **config) -> nn.Module:
    """Net with a rank-2 adapter (alpha 6: scale 3) whose B is not zero, so the adapter changes outputs."""
    torch.manual_seed(seed)
    net = Net()
    net = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=6, target_modules=["conv", "down", "proj"],
                                             **config), net)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return net


def count_merges(monkeypatch) -> list:
    """Every layer call that takes the merged path (one delta weight built per adapter)."""
    from peft.tuners.lora import layer as lora

    calls = []
    for cls in (lora.Linear, lora.Conv2d):
        orig = cls.get_delta_weight
        monkeypatch.setattr(cls, "get_delta_weight", lambda self, a, orig=orig: calls.append(a) or orig(self, a))
    return calls


def test_no_grad_output_equals_peft_and_leaves_the_base_weights_alone(monkeypatch):
    peft_net, fast = lora_net(), lora_net()
    assert lora_merged.install(fast) == 3
    before = {n: p.clone() for n, p in fast.named_parameters()}
    calls = count_merges(monkeypatch)
    x = torch.randn(4, 8, 16, 16)  # many positions per layer: all three merge
    with torch.no_grad():
        want, got = peft_net(x), fast(x)
    assert len(calls) == 3
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    for n, p in fast.named_parameters():
        assert torch.equal(p, before[n]), n
    torch.manual_seed(0)
    with torch.no_grad():  # the base alone (the same weights, drawn first): the adapter moves outputs a lot
        assert (Net()(x) - want).abs().max() > 0.1


@pytest.mark.parametrize("trained", ["adapter", "base"])
def test_what_trains_takes_peft_forward_with_the_same_gradients(trained, monkeypatch):
    """The adapter training (the student's own step), or a base trained under a frozen adapter (its
    gradient goes through W itself): peft's forward, the same gradients bit for bit."""
    peft_net, fast = lora_net(), lora_net()
    lora_merged.install(fast)
    for net in (peft_net, fast):
        for n, p in net.named_parameters():
            p.requires_grad_(("lora_" in n) == (trained == "adapter"))
    calls = count_merges(monkeypatch)
    x = torch.randn(2, 8, 16, 16)
    for net in (peft_net, fast):
        net(x).square().mean().backward()
    assert calls == []
    grads = dict(peft_net.named_parameters())
    for n, p in fast.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.equal(p.grad, grads[n].grad), n


def test_frozen_adapter_merges_and_passes_the_input_gradient(monkeypatch):
    """A phase that freezes the adapter but needs d/dx (a fake score judging a generator's sample)."""
    peft_net, fast = lora_net().requires_grad_(False), lora_net().requires_grad_(False)
    lora_merged.install(fast)
    calls = count_merges(monkeypatch)
    xs = [torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_() for _ in range(2)]
    for net, x in zip((peft_net, fast), xs):
        net(x).square().mean().backward()
    assert len(calls) == 3
    torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("case", ["dropout", "disabled", "bf16 base", "adapter_names"])
def test_what_merging_cannot_reproduce_runs_peft_forward(case, monkeypatch):
    kw = {"lora_dropout": 0.5} if case == "dropout" else {}
    peft_net, fast = lora_net(**kw), lora_net(**kw)
    lora_merged.install(fast)
    x = torch.randn(4, 8, 16, 16)
    if case == "bf16 base":  # mixed precision: frozen base in bf16, adapter float32
        for net in (peft_net, fast):
            for n, p in net.named_parameters():
                if "lora_" not in n:
                    p.data = p.data.bfloat16()
        x = x.bfloat16()
    calls = count_merges(monkeypatch)
    with torch.no_grad():
        if case == "disabled":
            for net in (peft_net, fast):
                for m in (net.conv, net.down, net.proj):
                    m.enable_adapters(False)
        if case == "adapter_names":  # peft's per-row adapters (mixed-batch inference)
            want = peft_net.proj(torch.randn(4, 5, 12, generator=torch.Generator().manual_seed(0)),
                                 adapter_names=["default", "__base__", "default", "__base__"])
            got = fast.proj(torch.randn(4, 5, 12, generator=torch.Generator().manual_seed(0)),
                            adapter_names=["default", "__base__", "default", "__base__"])
        else:
            torch.manual_seed(3)  # the same dropout masks on both
            want = peft_net.train()(x)
            torch.manual_seed(3)
            got = fast.train()(x)
    assert calls == []
    assert torch.equal(got, want)


def test_merge_is_chosen_by_counted_multiply_adds():
    lin = nn.Linear(96, 96)
    # merge |W| r = 96*96*16 = 147,456; branch rows * 16 * (96 + 96) = rows * 3,072: merge from 49 rows
    assert lora_merged.merge_is_cheaper(lin, torch.Size([1, 49, 96]), [16])
    assert not lora_merged.merge_is_cheaper(lin, torch.Size([1, 48, 96]), [16])
    # two adapters: both sides double (48 rows tie, and a tie keeps the branch); each adapter's own rank counts
    assert not lora_merged.merge_is_cheaper(lin, torch.Size([2, 24, 96]), [16, 16])
    assert lora_merged.merge_is_cheaper(lin, torch.Size([7, 7, 96]), [16, 8])
    conv = nn.Conv2d(96, 96, 3, stride=2, padding=1)
    # merge 96*96*9 * r; branch pixels * r * (96*9 + 96) = pixels * 960 r: merge from 87 output pixels
    assert lora_merged.merge_is_cheaper(conv, torch.Size([1, 96, 20, 20]), [4])  # 10x10 = 100 out
    assert not lora_merged.merge_is_cheaper(conv, torch.Size([1, 96, 18, 18]), [4])  # 9x9 = 81 out


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Conv2d(3, 5, (3, 1), stride=(1, 2)),
                                  nn.Conv2d(3, 5, 3, padding="same", dilation=2), nn.Conv2d(3, 5, 5, padding="valid"),
                                  nn.Conv2d(3, 5, 3, padding=2, dilation=3)])
def test_conv_output_pixels_match_torch(conv):
    for size in [(7, 9), (8, 8), (13, 5)]:
        out = conv(torch.zeros(1, 3, *size))
        assert lora_merged.conv_out_pixels(conv, size) == out.shape[-2] * out.shape[-1], size


def test_a_deep_copy_runs_its_own_weights():
    fast = lora_net()
    lora_merged.install(fast)
    twin = copy.deepcopy(fast)
    with torch.no_grad():
        for n, p in twin.named_parameters():
            if "lora_B" in n:
                p.mul_(2)
        x = torch.randn(4, 8, 16, 16)
        assert (twin(x) - fast(x)).abs().max() > 0.1
    assert twin.proj.forward.__self__ is twin.proj


def test_embedded_student_target_view_merges(monkeypatch):
    """add_lora installs it: the embedded teacher's LoRA student under no_grad (an LCM-LoRA target) gives
    peft's output, all its 128 layers merged at the training batch but the time-embedding projections
    (32 rows of 192 inputs: their branch is cheaper)."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    cfg = StudentConfig(kind="lora", lora_rank=16, lora_alpha=16)
    fast = add_lora(load_pipeline("tiny-sd").unet, cfg)
    ref = load_pipeline("tiny-sd").unet.requires_grad_(False)
    ref.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                               target_modules=list(fast.peft_config["default"].target_modules)))
    with torch.no_grad():
        for n, p in fast.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(n)))
    set_peft_model_state_dict(ref, get_peft_model_state_dict(fast))
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(32, 4, 8, 8, generator=g), torch.randint(0, 1000, (32,), generator=g), torch.randn(32, 16, 64, generator=g)
    calls = count_merges(monkeypatch)
    with torch.no_grad():
        got, want = fast(x, t, c).sample, ref(x, t, c).sample
        with torch.no_grad():
            ref.disable_adapters()
            base = ref(x, t, c).sample
    temb = [n for n, m in fast.named_modules() if n.endswith("time_emb_proj") and hasattr(m, "lora_A")]
    assert len(temb) > 0 and len(calls) == 128 - len(temb)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert (base - want).abs().max() > 0.1


def test_two_active_adapters_merge_both(monkeypatch):
    nets = []
    for _ in range(2):
        net = lora_net()
        torch.manual_seed(7)
        net = inject_adapter_in_model(LoraConfig(r=3, lora_alpha=3, target_modules=["conv", "proj"]), net,
                                      adapter_name="other")
        with torch.no_grad():
            for n, p in net.named_parameters():
                if "lora_B.other" in n:
                    p.normal_(0, 0.3)
        for m in (net.conv, net.down, net.proj):
            m.set_adapter([a for a in ("default", "other") if a in m.lora_A])
        nets.append(net)
    lora_merged.install(nets[1])
    calls = count_merges(monkeypatch)
    x = torch.randn(4, 8, 16, 16)
    with torch.no_grad():
        want, got = nets[0](x), nets[1](x)
        nets[0].proj.set_adapter("default")
        one = nets[0](x)
    assert sorted(calls) == ["default"] * 3 + ["other"] * 2
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert (one - want).abs().max() > 0.1  # the second adapter counts
