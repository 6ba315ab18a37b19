"""``distill.modelset.ema_update``: target <- decay * target + (1 - decay) * source, checked against the
formula written out per tensor (float64 reference) and on a wrapped source."""
import copy

import torch
from torch import nn

from fewstep.distill.modelset import ema_update


def _nets():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    target = copy.deepcopy(source)
    for p in source.parameters():
        p.data.add_(torch.randn_like(p))
    source[1].running_mean.add_(1.5)
    return target, source


def test_ema_is_the_convex_combination_per_parameter():
    target, source = _nets()
    before = [p.detach().double().clone() for p in target.parameters()]
    ema_update(target, source, 0.9)
    for old, new, s in zip(before, target.parameters(), source.parameters()):
        expected = 0.9 * old + 0.1 * s.detach().double()
        assert torch.allclose(new.double(), expected, atol=1e-6), (new - expected).abs().max()
    assert not torch.equal(before[0], target[0].weight.double())
    # float buffers are copied, not averaged (BatchNorm statistics follow the source)
    assert torch.equal(target[1].running_mean, source[1].running_mean)


def test_ema_through_a_wrapper_and_into_a_float32_copy_of_a_half_source():
    target, source = _nets()
    half = copy.deepcopy(source).to(torch.bfloat16)
    wrapper = nn.Module()
    wrapper.module = half  # what unwrap() strips (DDP keeps the net under .module)
    expected = [0.5 * t.detach() + 0.5 * s.detach().float() for t, s in zip(target.parameters(), half.parameters())]
    ema_update(target, wrapper, 0.5)
    for e, t in zip(expected, target.parameters()):
        assert t.dtype == torch.float32
        assert torch.allclose(t, e, atol=1e-6)
