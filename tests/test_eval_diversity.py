"""Precision / recall against torch-fidelity and a brute force, per-prompt diversity, and a collapsed model
caught by both (scored through eval.scoring, paired against a healthy one)."""
import numpy as np
import pytest
import torch

from fewstep.eval import diversity as V


def test_precision_recall_match_brute_force_and_torch_fidelity():
    from torch_fidelity.metric_prc import prc_features_to_metric

    from tests.oracles import precision_recall_brute_force

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=g, dtype=torch.float64)
    fake = torch.randn(250, 16, generator=g, dtype=torch.float64) * 0.7 + 0.4  # narrower and shifted
    in_real, in_gen = V.precision_recall_indicators(fake, real, k=3)
    tf = prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=10_000, save_cpu_ram=False,
                                verbose=False)
    assert float(in_real.double().mean()) == pytest.approx(tf["precision"], abs=1e-6)  # its mean is float32
    assert float(in_gen.double().mean()) == pytest.approx(tf["recall"], abs=1e-6)
    assert 0.05 < tf["recall"] < 0.95 and 0.05 < tf["precision"] < 1.0  # neither trivially 0 nor 1
    small_real, small_fake = real[:25].numpy(), fake[:20].numpy()
    p, r = V.precision_recall_indicators(torch.from_numpy(small_fake), torch.from_numpy(small_real), k=3)
    assert (float(p.double().mean()), float(r.double().mean())) == pytest.approx(
        precision_recall_brute_force(small_fake, small_real, k=3), abs=1e-12)


def test_kth_neighbour_radius_skips_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert V.kth_neighbour_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert V.kth_neighbour_radii(x, k=3).tolist() == [7.0, 6.0, 4.0, 7.0]
    with pytest.raises(ValueError, match="more than 3"):
        V.kth_neighbour_radii(x[:3], k=3)


def test_per_prompt_diversity_is_the_mean_pairwise_distance():
    feats = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]],  # distances 5, 0, 5 -> mean 10/3
                          [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])  # one image for every seed -> 0
    assert V.per_prompt_diversity(feats).tolist() == pytest.approx([10 / 3, 0.0])


def test_a_collapsed_model_is_flagged_by_diversity_and_recall():
    """A "model" that ignores its seed (the same image for every seed of a prompt) against one whose
    images vary with the seed like real scenes: both render the prompts' attributes correctly."""
    from fewstep.distill.data.procedural import ProceduralDataset
    from fewstep.eval.metrics import compute_stats, extract_features, load_feature_net
    from fewstep.eval.scoring import Bootstrap, Reference, RowSamples, score, versus
    from fewstep.pipelines.eval_inputs import procedural_prompts, real_image

    n, prompts_div, seeds = 300, 12, 8
    net = load_feature_net("embedded")
    prompts = procedural_prompts(n)
    healthy = torch.stack([real_image(p, i) for i, p in enumerate(prompts)])  # jitter varies with seed i
    collapsed = torch.stack([real_image(p, 0) for p in prompts])  # every seed gives the same render
    div_prompts = prompts[:prompts_div]
    healthy_div = torch.stack([real_image(p, 10_000 + k) for p in div_prompts for k in range(seeds)])
    collapsed_div = torch.stack([real_image(p, 0) for p in div_prompts for _ in range(seeds)])
    ref = Reference.build(compute_stats((ProceduralDataset(12345)[i]["image"] for i in range(2000)), net), n)
    boot = Bootstrap.create(n, n, prompts_div, num=200)

    def row(images, div):
        feats = extract_features(images, net)
        return score(RowSamples(feats, diversity_features=extract_features(div, net).reshape(prompts_div, seeds, -1)),
                     ref, boot)

    good, bad = row(healthy, healthy_div), row(collapsed, collapsed_div)
    assert bad.values["diversity"] == 0.0 and good.values["diversity"] > 1.0
    assert bad.values["recall"] < good.values["recall"]
    diff = versus(bad, good)
    assert diff["diversity"]["hi"] < 0 and diff["recall"]["hi"] < 0  # both resolved, not noise
    print({k: (round(good.values[k], 3), round(bad.values[k], 3)) for k in good.values})
