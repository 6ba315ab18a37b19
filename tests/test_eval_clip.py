"""CLIP score: spec parsing, offline errors, the x100 convention, and the shipped tiny CLIP's quality."""
import json

import pytest
import torch

from fewstep.distill.data.procedural import ProceduralDataset, all_captions
from fewstep.eval import clip as C
from fewstep.eval.tiny_clip import normalise
from fewstep.pipelines.build_tiny_clip import distinct_caption_gallery


@pytest.fixture(scope="module")
def tiny():
    return C.load_clip("embedded")


@pytest.fixture(scope="module")
def held_out():
    """Held-out renders (the tiny CLIP trained on seed 7); 256 with distinct captions."""
    return distinct_caption_gallery(ProceduralDataset(12345), 256)


def test_parse_clip_spec(tmp_path):
    assert C.parse_clip_spec("embedded") == C.ClipSpec(f"local-dir:{C.EMBEDDED_CLIP_DIR}")
    assert C.parse_clip_spec("ViT-g-14:/m/open_clip_pytorch_model.bin") == C.ClipSpec("ViT-g-14", "/m/open_clip_pytorch_model.bin")
    assert C.parse_clip_spec("ViT-B-32:laion2b_s34b_b79k") == C.ClipSpec("ViT-B-32", "laion2b_s34b_b79k")
    assert C.parse_clip_spec(str(tmp_path)) == C.ClipSpec(f"local-dir:{tmp_path}")
    assert C.parse_clip_spec(f"ViT-B-32:{tmp_path}").model == f"local-dir:{tmp_path}"
    assert str(C.parse_clip_spec("ViT-B-32:/a:b.bin")) == "ViT-B-32:/a:b.bin"  # split at the first colon only
    with pytest.raises(C.ClipError, match="names no weights"):
        C.parse_clip_spec("ViT-g-14")
    with pytest.raises(C.ClipError, match="offline"):
        C.parse_clip_spec("hf-hub:laion/CLIP-ViT-g-14-laion2B-s12B-b42K")


def test_pretrained_tag_without_download_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda **k: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(C.ClipError) as e:
        C.load_clip("ViT-g-14:laion2b_s12b_b42k")
    msg = str(e.value)
    assert "never downloads" in msg and "laion/CLIP-ViT-g-14-laion2B-s12B-b42K" in msg and "--clip ViT-g-14:/path" in msg
    with pytest.raises(C.ClipError, match="neither an existing weights file nor a pretrained tag"):
        C.load_clip("ViT-g-14:no_such_tag")
    with pytest.raises(C.ClipError, match="unknown open_clip architecture"):
        C.load_clip("NoSuchNet:/x.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    with pytest.raises(C.ClipError, match="no weights file"):
        C.load_clip(f"local-dir:{tmp_path}")


def test_x100_convention_and_matching_beats_shuffled(tiny, held_out):
    images, captions = held_out
    images, captions = images[:64], captions[:64]
    out = C.clip_score(images, captions, tiny, batch_size=24, return_per_image=True)
    assert out["clip_score_x100"] == pytest.approx(100 * out["clip_score_cosine"])
    assert out["num_images"] == 64 and len(out["per_image"]) == 64 and out["clip_model"] == "embedded:tiny-clip"
    assert out["clip_score_cosine"] == pytest.approx(sum(out["per_image"]) / 64)
    assert -1 <= min(out["per_image"]) and max(out["per_image"]) <= 1
    shuffled = C.clip_score(images, captions[1:] + captions[:1], tiny)
    assert out["clip_score_cosine"] > shuffled["clip_score_cosine"] + 0.1
    # Streaming: the same images fed one at a time give the same score.
    one_by_one = C.clip_score(iter(list(images)), iter(captions), tiny, batch_size=7)
    assert one_by_one["clip_score_cosine"] == pytest.approx(out["clip_score_cosine"], abs=1e-6)
    with pytest.raises(ValueError, match="fewer prompts"):
        C.clip_score(images, captions[:-1], tiny)
    with pytest.raises(ValueError, match="more prompts"):
        C.clip_score(images, captions + ["extra"], tiny)


def test_prefix_is_applied(tiny, held_out):
    images, captions = held_out[0][:8], held_out[1][:8]
    plain = C.clip_score(images, captions, tiny)
    prefixed = C.clip_score(images, captions, tiny, prefix="A photo depicts ")
    assert prefixed["prefix"] == "A photo depicts " and prefixed["clip_score_cosine"] != plain["clip_score_cosine"]


def test_shipped_tiny_clip_retrieval_bar(tiny, held_out):
    acc = C.retrieval_accuracy(tiny, *held_out)
    assert acc["gallery_size"] == 256
    assert acc["text_to_image_top1"] >= 0.90, acc
    cfg = json.loads((C.EMBEDDED_CLIP_DIR / "open_clip_config.json").read_text())
    assert cfg["fewstep_training"]["val_retrieval"]["gallery_size"] == len(all_captions())
    assert cfg["fewstep_training"]["val_retrieval"]["text_to_image_top1"] >= 0.90
    with pytest.raises(ValueError, match="distinct captions"):
        C.retrieval_accuracy(tiny, held_out[0][:2], [held_out[1][0]] * 2)


def test_model_preprocessing_equals_training_normalisation(tiny, held_out):
    # Training normalises tensors directly; scoring goes through open_clip's PIL eval transform.
    from PIL import Image

    im = held_out[0][:4]
    pil = torch.stack([tiny.preprocess(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in im])
    assert torch.allclose(pil, normalise(im), atol=1e-5)


def test_shipped_size_is_small():
    total = sum(p.stat().st_size for p in C.EMBEDDED_CLIP_DIR.iterdir())
    assert total < 5e6


def test_arch_plus_weights_file_spec(tiny, held_out, tmp_path):
    # Register the tiny architecture under a name, then load it as ARCH:/path/to/weights.
    import open_clip

    cfg = json.loads((C.EMBEDDED_CLIP_DIR / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "fewstep-tiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "fewstep-tiny-test.json")
    other = C.load_clip(f"fewstep-tiny-test:{C.EMBEDDED_CLIP_DIR / 'open_clip_model.safetensors'}")
    assert other.name.startswith("fewstep-tiny-test:")
    images, captions = held_out[0][:16], held_out[1][:16]
    a, b = C.clip_score(images, captions, tiny), C.clip_score(images, captions, other)
    assert a["clip_score_cosine"] == pytest.approx(b["clip_score_cosine"], abs=1e-6)
