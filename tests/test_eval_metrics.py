"""FID / KID: independent cross-checks (scipy, torchmetrics), identities, monotonicity, bounded memory,
reference cache and its versioning, degenerate-feature warning."""
import itertools

import numpy as np
import pytest
import torch

from fewstep.distill.data.procedural import ProceduralDataset
from fewstep.eval import distances as D
from fewstep.eval import metrics as M
from fewstep.eval.images import uint8_batches

N = 384  # images per set: > 128 feature dims, so covariances are full rank


class Passthrough(torch.nn.Module):
    """A torchmetrics ``feature`` module whose "images" are already features."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def procedural(seed, n, shift=0):
    """Procedural images as a lazy stream of single uint8 CHW tensors, optionally colour-shifted."""
    ds = ProceduralDataset(seed)
    for i in range(n):
        yield (ds[i]["image"].int() + shift).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def net():
    return M.load_feature_net("embedded")


@pytest.fixture(scope="module")
def ref(net):
    return M.compute_stats(procedural(1, N), net)


def test_fid_matches_independent_scipy_computation(net, ref):
    from tests.oracles import frechet_distance_scipy

    gen_imgs = torch.stack(list(procedural(2, N, shift=20)))
    ref_imgs = torch.stack(list(procedural(1, N)))
    ours = M.fid_kid(gen_imgs, ref, net)
    # Independent path: features in one call, numpy mean/cov, scipy sqrtm.
    fr, fg = net(ref_imgs).double().numpy(), net(gen_imgs).double().numpy()
    expect = frechet_distance_scipy(fr.mean(0), np.cov(fr, rowvar=False), fg.mean(0), np.cov(fg, rowvar=False))
    assert expect > 1.0
    assert abs(ours["fid"] - expect) <= 1e-6 * expect
    assert ours["num_generated"] == ours["num_reference"] == N
    np.testing.assert_allclose(ref.cov().numpy(), np.cov(fr, rowvar=False), rtol=1e-6, atol=1e-6)


def test_fid_of_a_set_with_itself_is_zero(net, ref):
    feats = M.extract_features(procedural(1, N), net, batch_size=100)
    assert abs(D.fid(feats, D.FrechetReference.from_moments(ref.mean(), ref.cov()))) < 1e-4  # round-off of dead dims


def test_fid_and_kid_grow_with_colour_shift(net, ref):
    res = [M.fid_kid(procedural(2, N, shift=s), ref, net) for s in (0, 20, 40, 80)]
    fids = [r["fid"] for r in res]
    assert all(a < b for a, b in itertools.pairwise(fids)), fids
    assert res[-1]["kid"] > res[0]["kid"]


def test_kid_matches_torchmetrics_on_whole_sets(net, ref):
    """torchmetrics with one subset as large as both sets computes the same unbiased MMD^2."""
    from torchmetrics.image.kid import KernelInceptionDistance

    feats = M.extract_features(procedural(2, N, shift=30), net)
    tm = KernelInceptionDistance(feature=Passthrough(net.num_features), subsets=1, subset_size=N)
    tm = tm.set_dtype(torch.float64)
    tm.update(ref.kid_features.double(), real=True)
    tm.update(feats.double(), real=False)
    expect = float(tm.compute()[0])
    assert D.kid(feats, D.KernelReference.from_features(ref.kid_features)) == pytest.approx(expect, rel=1e-9)
    assert expect > 0


def test_kid_weights_leave_out_pairs_of_the_same_image(net):
    """A resample that repeats rows scores only pairs of distinct original images: repeating every image
    twice gives exactly the KID of the set itself."""
    feats = M.extract_features(procedural(3, 60), net).double()
    reference = D.KernelReference.from_features(M.extract_features(procedural(4, 80), net))
    twice = D.kid_weighted(feats, reference, np.full((1, 60), 2.0))[0]
    assert twice == pytest.approx(D.kid(feats, reference), rel=1e-12)
    doubled = torch.cat([feats, feats])  # the same set with each image present twice as separate rows
    assert D.kid(doubled, reference) != pytest.approx(twice, rel=1e-3)


def test_memory_is_bounded_kid_reservoir(net):
    stats = M.compute_stats(procedural(3, 300), net, batch_size=32, kid_max_features=50)
    assert stats.num_images == 300
    assert stats.kid_features.shape == (50, net.num_features)
    assert stats.features_cov_sum.shape == (net.num_features,) * 2  # O(d^2), not O(N)
    # The sample is drawn from the whole stream, not just its first 50 images.
    all_feats = net(torch.stack(list(procedural(3, 300)))).float()
    idx = [int((all_feats - row).abs().sum(1).argmin()) for row in stats.kid_features]
    assert torch.allclose(all_feats[idx], stats.kid_features, atol=1e-4)
    assert len(set(idx)) == 50 and max(idx) >= 50


def test_reservoir_sample_is_uniform():
    means = []
    for seed in range(40):
        r = M._Reservoir(100, 1, seed)
        for start in range(0, 1000, 64):
            r.add(torch.arange(start, min(start + 64, 1000), dtype=torch.float32)[:, None])
        assert r.rows.shape == (100, 1) and r.seen == 1000
        means.append(float(r.rows.mean()))
    # Mean of a uniform 100-of-1000 sample: 499.5, sd ~ 27.4 per draw, ~4.3 over 40 draws.
    assert abs(np.mean(means) - 499.5) < 20


def test_reference_cache_hit_skips_feature_extraction(net, tmp_path):
    calls = []
    hook = net.register_forward_hook(lambda *a: calls.append(1))
    try:
        key = "procedural:seed=4:n=100"
        a = M.compute_reference_stats(procedural(4, 100), net, tmp_path, key, batch_size=25)
        assert len(calls) == 4
        assert len(list(tmp_path.iterdir())) == 1

        def must_not_run():
            raise AssertionError("reference images iterated on a cache hit")
            yield

        b = M.compute_reference_stats(must_not_run(), net, tmp_path, key, batch_size=25)
        assert len(calls) == 4
        assert b.key == key and b.num_images == 100
        assert torch.equal(a.features_cov_sum, b.features_cov_sum) and torch.equal(a.kid_features, b.kid_features)
        M.compute_reference_stats(procedural(5, 50), net, tmp_path, "procedural:seed=5:n=50", batch_size=25)
        assert len(calls) == 6 and len(list(tmp_path.iterdir())) == 2
    finally:
        hook.remove()


def test_cache_file_changes_with_renderer_version_and_feature_network(net, tmp_path):
    """The sweep puts the renderer version into the key; the feature network's weights fingerprint is in
    its identity: changing either never reuses stale statistics."""
    import copy

    from fewstep.eval.features import _state_fingerprint
    from fewstep.pipelines.eval_inputs import reference_source

    _, key = reference_source("procedural", 100, 100, 32)
    assert key.startswith("procedural:renderer=") and ":seed=12345:n=100" in key
    a = M.cache_path(tmp_path, key, net, 10_000)
    assert M.cache_path(tmp_path, key.replace("renderer=", "renderer=9"), net, 10_000) != a
    other = copy.deepcopy(net)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    other.identity = "embedded:classifier-" + _state_fingerprint(other.net) + ":128"  # as load_feature_net names it
    assert other.identity != net.identity and M.cache_path(tmp_path, key, other, 10_000) != a


def test_feature_health_flags_dead_dimensions(net, ref):
    health = M.feature_health(ref)
    var = torch.diagonal(ref.cov())
    assert health["dimension"] == 128 and health["dead_dimensions"] == int((var <= 1e-10 * var.max()).sum())
    assert health["covariance_rank"] <= 128 - health["dead_dimensions"]
    if health["covariance_rank"] < 128:
        assert "rank" in health["warning"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g, dtype=torch.float64)
    full = M.FeatureStats("toy", 500, x.sum(0), x.T @ x, x[:10].float())
    assert M.feature_health(full)["warning"] is None and M.feature_health(full)["covariance_rank"] == 16
    x[:, 3] = 1.5  # a unit that never varies
    dead = M.FeatureStats("toy", 500, x.sum(0), x.T @ x, x[:10].float())
    h = M.feature_health(dead)
    assert h["dead_dimensions"] == 1 and h["covariance_rank"] == 15 and "1 of 16" in h["warning"]


def test_stats_from_other_feature_net_are_rejected(net, ref):
    other = M.FeatureStats("inception-v3-compat:2048", ref.num_images, ref.features_sum, ref.features_cov_sum, ref.kid_features)
    with pytest.raises(M.MetricsError, match="computed with"):
        M.fid_kid(procedural(2, 4), other, net)


def test_feature_net_works_inside_torchmetrics_in_float64():
    from torchmetrics.image.fid import FrechetInceptionDistance

    net = M.load_feature_net("embedded")  # own copy: set_dtype casts it
    fid = FrechetInceptionDistance(feature=net).set_dtype(torch.float64)
    assert next(net.parameters()).dtype == torch.float64
    a, b = torch.stack(list(procedural(1, 160))), torch.stack(list(procedural(2, 160, shift=30)))
    fid.update(a, real=True)
    fid.update(b, real=False)
    direct = float(fid.compute())
    fresh = M.load_feature_net("embedded")
    ours = M.fid_kid(b, M.compute_stats(a, fresh), fresh)
    assert abs(direct - ours["fid"]) <= 1e-3 * direct


def test_inception_without_weights_fails_fast_naming_the_file(tmp_path, monkeypatch):
    import torchmetrics.image.fid as tm_fid

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_build(*a, **k):
        raise AssertionError("the network was built before the weights were checked")

    monkeypatch.setattr(tm_fid.NoTrainInceptionV3, "__init__", no_build)
    with pytest.raises(M.MissingWeightsError) as e:
        M.load_feature_net("inception")
    msg = str(e.value)
    assert M.INCEPTION_WEIGHTS_FILE in msg and str(tmp_path / "torch-home" / "hub" / "checkpoints") in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(M.MissingWeightsError, match="does not exist"):
        M.load_feature_net("inception", weights_path=tmp_path / "nope.pth")


def test_inception_runs_offline_from_a_weights_file(tmp_path, monkeypatch):
    # Random weights with the real layout stand in for the 91 MB file: build once with loading stubbed.
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inc
    from torchmetrics.image.fid import NoTrainInceptionV3

    with monkeypatch.context() as m:
        m.setattr(tf_inc, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tf_inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        torch.manual_seed(0)
        state = NoTrainInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    weights = tmp_path / M.INCEPTION_WEIGHTS_FILE
    torch.save(state, weights)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    net = M.load_feature_net("inception", weights_path=weights)
    assert net.num_features == 2048 and "inception" in net.identity
    feats = net(torch.stack(list(procedural(1, 3))))
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all()
    # The hub-cache location is found without a path.
    (tmp_path / "empty" / "hub" / "checkpoints").mkdir(parents=True)
    weights.rename(tmp_path / "empty" / "hub" / "checkpoints" / M.INCEPTION_WEIGHTS_FILE)
    assert M.inception_weights_path().name == M.INCEPTION_WEIGHTS_FILE


def test_uint8_batches_accepts_common_layouts():
    from PIL import Image

    chw = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    hwc = chw.permute(1, 2, 0).numpy()
    items = [chw, hwc, Image.fromarray(hwc), chw.float() / 255, torch.stack([chw] * 3)]
    out = list(uint8_batches(items, batch_size=2))
    assert [b.shape[0] for b in out] == [2, 2, 2, 1]
    assert all(torch.equal(x, chw) for b in out for x in b)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        list(uint8_batches([chw.float()], 2))


def test_eval_layer_imports_nothing_from_training():
    import ast
    from pathlib import Path

    for path in (Path(__file__).resolve().parents[1] / "eval").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.split(".")[0] in ("distill", "pipelines")
                   or n.startswith(("fewstep.distill", "fewstep.pipelines"))]
            assert not bad, f"{path.name} imports {bad}"
