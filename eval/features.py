"""Feature networks for FID / KID: torchmetrics' Inception-v3 (offline) and the embedded classifier.

- ``"inception"``: torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port of the TF 2015-12-05
  graph, 2048-d pool3 features), the network behind every published FID. Its weights are never
  downloaded here: pass ``weights_path`` or put :data:`INCEPTION_WEIGHTS_FILE` in
  ``$TORCH_HOME/hub/checkpoints`` (where torch-fidelity's own download would land). Inputs of any
  size are resized to 299 with antialiased bilinear interpolation (torchmetrics' default since
  1.8; torch-fidelity / clean-fid resize differently, which moves FID).
- ``"embedded"``: the 128-d penultimate features of the attribute classifier
  (``assets/classifier``, :meth:`eval.classifier.AttributeClassifier.features`), which measures
  distance on the embedded 32x32 procedural domain without any download.

Both are :class:`FeatureNet` modules in the form torchmetrics accepts as a custom ``feature``
(see its ``FrechetInceptionDistance`` docs): uint8 ``[N, 3, H, W]`` in, ``[N, num_features]`` out,
and a ``num_features`` attribute so torchmetrics does not probe them with a random image.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.eval.assets import assets_dir
from fewstep.eval.errors import MetricsError, MissingWeightsError  # noqa: F401 (re-exported)

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
DEFAULT_CLASSIFIER_DIR = assets_dir() / "classifier"
FEATURE_NETS = ("inception", "embedded")


def inception_weights_path(weights_path: str | os.PathLike | None = None) -> Path:
    """Locate the FID Inception-v3 weights without touching the network.

    Args:
        weights_path: an explicit file; if None, look in torch hub's cache,
            ``$TORCH_HOME/hub/checkpoints/`` (where torch-fidelity's own download would land).

    Returns:
        The path of an existing weights file.

    Raises:
        MissingWeightsError: naming the file that is needed and the two ways to provide it.
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if p.is_file():
            return p
        where = f"the given weights path {p} does not exist"
    elif cached.is_file():
        return cached
    else:
        where = f"no weights path was given and {cached} does not exist"
    raise MissingWeightsError(
        f"Inception-v3 FID weights not found: {where}. FID with features='inception' needs the file "
        f"{INCEPTION_WEIGHTS_FILE} (torch-fidelity's port of the TF 2015-12-05 graph, ~91 MB, from "
        f"{INCEPTION_WEIGHTS_URL}). Either pass its path (feature_extractor_weights_path / weights_path, "
        f"i.e. the CLI's --inception-weights) or copy it to {cached}. Nothing is downloaded by this tool; "
        f"on the embedded domain use features='embedded' instead."
    )


# --------------------------------------------------------------------------------------------
# Feature networks


class FeatureNet(nn.Module):
    """Feature extractor in the form torchmetrics takes as a custom FID/KID ``feature`` module.

    Input: images ``[N, 3, H, W]``, uint8 in [0, 255] (or float in [0, 1] when ``normalize`` is
    True, matching torchmetrics' ``normalize=True``); output ``[N, num_features]`` in the network's
    dtype. The module never leaves eval mode (BatchNorm statistics must not move while scoring)
    and casts its input to its own parameter dtype, so it keeps working after
    ``metric.set_dtype(torch.float64)`` casts it along with the metric states.

    Attributes:
        num_features: feature dimension (read by torchmetrics instead of probing with a dummy image).
        identity: a string naming the network and its weights; part of every reference-cache key,
            so statistics from different networks are never mixed.
    """

    def __init__(self, net: nn.Module, num_features: int, identity: str, normalize: bool = False):
        super().__init__()
        self.net = net
        self.num_features = int(num_features)
        self.identity = identity
        self.normalize = bool(normalize)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureNet:
        return super().train(False)

    def _quantise(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            images = images.float().clamp(0, 1) * 255
        if images.dtype != torch.uint8:
            images = images.float().clamp(0, 255).round().to(torch.uint8)
        return images

    def extract(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        p = next(self.net.parameters())
        return self.extract(self._quantise(images).to(p.device))


class InceptionFeatureNet(FeatureNet):
    """torchmetrics' ``NoTrainInceptionV3`` (2048-d pool3 features) behind the :class:`FeatureNet` API."""

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        # NoTrainInceptionV3 casts uint8 input to ``_dtype`` (float32 unless FID.set_dtype set it);
        # FID.set_dtype only sets it when it sees the bare network, not one wrapped like here.
        self.net._dtype = next(self.net.parameters()).dtype
        return self.net(images)


class EmbeddedFeatureNet(FeatureNet):
    """The attribute classifier's penultimate features (``AttributeClassifier.features``)."""

    input_size = 32  # the classifier's flatten layer fixes its input at 32x32

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            # Other resolutions are brought to the domain's 32x32 the way torchmetrics resizes for
            # Inception: antialiased bilinear on [0, 255] floats.
            x = F.interpolate(x.float(), size=(self.input_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return self.net.features(x)  # casts to its own dtype and scales [0, 255] -> [-1, 1]


def _state_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def load_feature_net(
    name: str = "embedded",
    *,
    weights_path: str | os.PathLike | None = None,
    classifier_dir: str | os.PathLike | None = None,
    antialias: bool = True,
    normalize: bool = False,
    device: str | torch.device = "cpu",
) -> FeatureNet:
    """Build a FID/KID feature network; raises before any heavy work if its weights are missing.

    Args:
        name: ``"inception"`` or ``"embedded"``.
        weights_path: Inception weights file (see :func:`inception_weights_path`).
        classifier_dir: classifier checkpoint for ``"embedded"`` (default ``assets/classifier``).
        antialias: Inception only; torchmetrics' antialiased resize (True, its default) or
            torch-fidelity's TF1-compatible one (False). Part of the identity: it moves FID.
        normalize: accept float [0, 1] input (torchmetrics' ``normalize=True``) instead of uint8.
        device: where the network runs.

    Returns:
        A :class:`FeatureNet` in eval mode.
    """
    if name == "inception":
        path = inception_weights_path(weights_path)  # fail fast, before building a 24M-param net
        from torchmetrics.image.fid import NoTrainInceptionV3

        net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path), antialias=antialias
        )
        ident = f"inception-v3-compat:2048:{INCEPTION_WEIGHTS_FILE}:antialias={antialias}"
        return InceptionFeatureNet(net, 2048, ident, normalize).to(device)
    if name == "embedded":
        from fewstep.eval.classifier import load_classifier

        d = Path(classifier_dir) if classifier_dir is not None else DEFAULT_CLASSIFIER_DIR
        try:
            clf = load_classifier(d)
        except FileNotFoundError as e:
            raise MissingWeightsError(f"embedded FID features need the attribute classifier: {e}") from None
        ident = f"embedded:classifier-{_state_fingerprint(clf)}:{clf.feature_dim}"
        return EmbeddedFeatureNet(clf, clf.feature_dim, ident, normalize).to(device)
    raise ValueError(f"unknown feature network {name!r}; choose one of {FEATURE_NETS}")
