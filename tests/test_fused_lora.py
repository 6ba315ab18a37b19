"""``fewstep sample`` and ``fewstep eval`` fuse a LoRA export into its base: the same images as the
adapter loaded unfused (as the export's model card loads it), with no peft layer left to slow each
UNet call."""
import numpy as np
import pytest
import torch

from fewstep.distill.sampling import Recipe
from fewstep.pipelines.evaluate import ModelEntry, load_entry
from fewstep.pipelines.sample import load_for_sampling
from fewstep.pipelines.teacher import load_pipeline
from tests.conftest import SMALL_ARCH

PROMPTS = ["a large red circle on the left, gray background", "a small blue cross on the right, white background"]
STEPS = 2
# fp32 throughout. Fusing only reorders the arithmetic (W x + s B (A x) becomes (W + s B A) x), so the
# two pipelines differ by float32 rounding, measured 1e-6 at most on images in [0, 1]; the LoRA itself
# moves them by 4e-2 (over 1e-2 asserted below), so a fuse at the wrong scale, one undone, or one that
# drops the text encoder's LoRA lands far outside 1e-5.
ATOL = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A fresh very small base, and on it two LoRAs with alpha != rank (a scale applied twice or not at
    all shows): a fewstep export (UNet only) and a plain diffusers file with a text-encoder LoRA too."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from fewstep.distill.config import TinyArch
    from fewstep.pipelines.export import export_lora
    from fewstep.pipelines.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("fused")
    base = root / "base"
    build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=5).save_pretrained(base)
    pipe = load_pipeline(str(base))
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    te_config = LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "v_proj"])
    # peft directly: transformers' own add_adapter wants peft >= 0.22, though loading does not
    inject_adapter_in_model(te_config, pipe.text_encoder)
    torch.manual_seed(0)
    with torch.no_grad():  # peft starts B at zero; make the student really differ from its base
        for p in [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]:
            if p.requires_grad:  # the adapters' A and B
                p.normal_(0, 0.1)
    recipe = Recipe("TCDScheduler", {"original_inference_steps": 50}, STEPS, 1.0, trained_steps=[STEPS])
    export_lora(pipe, recipe, root / "export", title="t", base_model=str(base), base_unet=pipe.unet)
    meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in pipe.unet.peft_config["default"].to_dict().items()}
    te_meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in te_config.to_dict().items()}
    type(pipe).save_lora_weights(root / "with_te", unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                 text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
                                 unet_lora_adapter_metadata=meta, text_encoder_lora_adapter_metadata=te_meta,
                                 safe_serialization=True)
    return base, {"export": root / "export", "with_te": root / "with_te"}


def images(pipe) -> np.ndarray:
    """Float images in [0, 1] of PROMPTS at seeds 0, 1 (before uint8 rounding, which could hide or
    round up a small difference)."""
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=1.0, generator=gens, output_type="np").images


def peft_layers(pipe) -> list[str]:
    return [f"{part}.{name}" for part in ("unet", "text_encoder")
            for name, m in getattr(pipe, part).named_modules() if type(m).__module__.startswith("peft.")]


def unfused(base, lora, like):
    """The base with ``lora`` loaded the plain way, sampling with ``like``'s scheduler."""
    pipe = load_pipeline(str(base))
    pipe.load_lora_weights(str(lora))
    pipe.scheduler = like.scheduler
    assert peft_layers(pipe)  # the check below can see peft layers when they are there
    return pipe


@pytest.mark.parametrize("which", ["export", "with_te"])
def test_sample_loads_the_lora_fused(models, which):
    base, loras = models
    pipe, _ = load_for_sampling(str(base), str(loras[which]))
    assert peft_layers(pipe) == []
    fused, want = images(pipe), images(unfused(base, loras[which], pipe))
    plain = load_pipeline(str(base))
    plain.scheduler = pipe.scheduler
    assert np.abs(want - images(plain)).max() > 1e-2  # the LoRA really changes the images
    np.testing.assert_allclose(fused, want, rtol=0, atol=ATOL)


def test_eval_loads_the_lora_fused(models):
    base, loras = models
    entry = ModelEntry("s", "lora", str(base), Recipe("", {}, STEPS, 1.0), [STEPS], lora=str(loras["export"]))
    pipe = load_entry(entry, "cpu")
    assert peft_layers(pipe) == []
    np.testing.assert_allclose(images(pipe), images(unfused(base, loras["export"], pipe)), rtol=0, atol=ATOL)
