"""The object-count check: clean procedural scenes hold one object, composites of two scenes are judged wrong."""
import dataclasses

import numpy as np
import pytest
import torch

from fewstep.distill.data.procedural import render, sample_scene
from fewstep.eval.objects import all_attributes_right, count_objects

CLEAN_SEED, LEFT_SEED, RIGHT_SEED = 31337, 5151, 6161  # held-out splits, none used for training or judges
N = 500


def composite(i: int, small: bool = False) -> tuple[np.ndarray, list[int]]:
    """Scene A on the left and scene B on the right of A's background; A's labels (what its caption says)."""
    a = dataclasses.replace(sample_scene(LEFT_SEED, i), position="left")
    b = dataclasses.replace(sample_scene(RIGHT_SEED, i), position="right", background=a.background)
    if small:
        a, b = dataclasses.replace(a, size="small"), dataclasses.replace(b, size="small")
    image, other = render(a).astype(np.int16), render(b).astype(np.int16)
    plain = render(dataclasses.replace(b, dx=100.0)).astype(np.int16)  # B moved off the canvas: bare background
    where = np.abs(other - plain).max(-1) > 0
    image[where] = other[where]
    return image.astype(np.uint8), a.labels()


@pytest.fixture(scope="module")
def clean():
    scenes = [sample_scene(CLEAN_SEED, i) for i in range(N)]
    return np.stack([render(s) for s in scenes]), np.array([s.labels() for s in scenes])


@pytest.fixture(scope="module")
def judge():
    from fewstep.eval.classifier import load_classifier, predict
    from fewstep.eval.features import DEFAULT_CLASSIFIER_DIR

    clf = load_classifier(DEFAULT_CLASSIFIER_DIR)
    return lambda images, labels: (predict(clf, torch.from_numpy(images).permute(0, 3, 1, 2)).numpy() == labels)


def test_clean_scenes_count_one_object(clean):
    images, _ = clean
    counts = count_objects(images)
    agreement = float(np.mean(counts == 1))
    print(f"object count agrees with the renderer on {agreement:.3f} of {N} clean held-out scenes")
    assert agreement >= 0.99
    assert count_objects(np.full((2, 32, 32, 3), 128, np.uint8)).tolist() == [0, 0]  # empty scenes


def test_two_object_composites_are_judged_wrong(clean, judge):
    images, labels = clean
    pairs = [composite(i) for i in range(N)]
    comp = np.stack([p[0] for p in pairs])
    comp_labels = np.array([p[1] for p in pairs])
    counts = count_objects(comp)
    classifier_credit = float(judge(comp, comp_labels).all(1).mean())
    verdict = all_attributes_right(judge(comp, comp_labels), counts)
    clean_verdict = all_attributes_right(judge(images, labels), count_objects(images))
    print(f"two-object composites: counted >= 2 in {np.mean(counts >= 2):.3f}; the classifier alone credits "
          f"{classifier_credit:.3f}, with the count check {verdict.mean():.3f}; clean scenes credited "
          f"{clean_verdict.mean():.3f}")
    assert np.mean(counts >= 2) >= 0.85  # the rest are pairs whose objects touch and merge into one blob
    assert not verdict[counts >= 2].any()  # every composite seen as two objects is judged wrong
    assert verdict.mean() <= 0.15 and clean_verdict.mean() >= 0.99
    separated = np.stack([composite(i, small=True)[0] for i in range(100)])  # small objects never touch
    assert (count_objects(separated) == 2).all()


def test_count_ignores_noise_and_border_touching_objects():
    rng = np.random.default_rng(0)
    noisy = render(sample_scene(CLEAN_SEED, 0)).astype(np.int16)
    noisy = np.clip(noisy + rng.normal(0, 8, noisy.shape), 0, 255).astype(np.uint8)  # mild sampler noise
    speck = render(sample_scene(CLEAN_SEED, 1)).copy()
    speck[2, 2] = 255 - speck[2, 2]  # a single stray pixel is not an object
    edge = render(dataclasses.replace(sample_scene(CLEAN_SEED, 2), size="large", position="left", dx=-1.0, scale=1.1))
    assert count_objects(np.stack([noisy, speck, edge])).tolist() == [1, 1, 1]
    nchw = torch.from_numpy(np.stack([noisy, speck])).permute(0, 3, 1, 2)
    assert count_objects(nchw).tolist() == [1, 1]  # torch NCHW batches are read the same way
