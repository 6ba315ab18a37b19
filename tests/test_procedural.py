"""The embedded procedural domain: deterministic, rich enough, captions agree with labels."""
import numpy as np
import pytest

from fewstep.distill.data.procedural import (ATTRIBUTES, BACKGROUNDS, ProceduralDataset, all_captions, caption, labels_from_caption,
                                     render, sample_scene, vocabulary)


def test_same_seed_same_scene_different_seed_different_scene():
    a, b = ProceduralDataset(0), ProceduralDataset(0)
    for i in (0, 1, 17, 10_000):
        assert a[i]["caption"] == b[i]["caption"]
        assert np.array_equal(a[i]["image"].numpy(), b[i]["image"].numpy())
    other = ProceduralDataset(1)
    diff = sum(not np.array_equal(a[i]["image"].numpy(), other[i]["image"].numpy()) for i in range(20))
    assert diff == 20


def test_vocabulary_sizes_and_distinct_captions():
    assert len(ATTRIBUTES["color"]) >= 8 and len(ATTRIBUTES["shape"]) >= 4
    assert len(ATTRIBUTES["background"]) >= 3 and len(ATTRIBUTES["size"]) == 2 and len(ATTRIBUTES["position"]) >= 3
    caps = all_captions()
    assert len(set(caps)) == len(caps) >= 500
    assert caption(sample_scene(0, 0)) in caps
    assert "," in caps[0] and set(caps[0].replace(",", " ").split()) <= set(vocabulary())


def test_labels_match_caption_and_image_content():
    ds = ProceduralDataset(3)
    for i in range(50):
        item = ds[i]
        assert labels_from_caption(item["caption"]) == item["labels"].tolist()
        img = item["image"].numpy().transpose(1, 2, 0).astype(int)
        scene = sample_scene(3, i)
        corner = img[0, 0]  # shapes never reach the top-left pixel
        assert np.abs(corner - np.array(BACKGROUNDS[
            scene.background])).max() <= 1
        # the shape's mass lies on the captioned side
        fg = np.abs(img - corner).sum(-1) > 60
        cx = np.nonzero(fg)[1].mean()
        expect = {"left": (0, 13), "center": (12, 20), "right": (19, 32)}[scene.position]
        assert expect[0] <= cx <= expect[1], (item["caption"], cx)


def test_large_shapes_cover_more_than_small():
    sizes = {"small": [], "large": []}
    for i in range(200):
        s = sample_scene(5, i)
        img = render(s).astype(int)
        sizes[s.size].append((np.abs(img - img[0, 0]).sum(-1) > 60).sum())
    assert min(sizes["large"]) > max(sizes["small"])


def test_bad_caption_is_reported():
    with pytest.raises(ValueError, match="color"):
        labels_from_caption("a small triangle on the left, gray background")
