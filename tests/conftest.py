"""Shared fixtures: a very small fresh pipeline and run configs, all on CPU."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # CI has 2 cores; oversubscribed OpenMP threads make tiny kernels crawl

SMALL_ARCH = {"text_hidden": 32, "text_layers": 1, "text_heads": 2, "vae_channels": [8, 16, 16],
              "unet_channels": [16, 32], "unet_attention_head_dim": 8}


def run_dict(tmp_path, method="denoise", steps=6, **train):
    """A raw config mapping for a short run on a fresh very small pipeline."""
    t = {"steps": steps, "batch_size": 4, "lr": 1e-3, "log_every": 1, "checkpoint_every": 3,
         "validation_every": 0, "seed": 0}
    t.update(train)
    return {"name": "t", "output_dir": str(tmp_path / "runs"), "method": {"name": method},
            "model": {"tiny": dict(SMALL_ARCH)}, "train": t, "validation": {"num_images": 2}}


@pytest.fixture
def small_arch():
    from fewstep.distill.config import TinyArch
    return TinyArch(**SMALL_ARCH)
