"""The embedded procedural domain: captioned 32x32 scenes with ground-truth attributes.

Every scene is a pure function of (seed, index): attributes and continuous jitter (exact position,
size, colour shade) come from ``numpy.random.default_rng([seed, index])``, so a dataset is
reproducible on any machine and needs no files. Shapes are rendered analytically on a 4x
supersampled grid and box-filtered down, which gives anti-aliased edges.

The attribute vocabulary (8 colours x 4 shapes x 3 backgrounds x 2 sizes x 3 positions = 576
distinct captions) is small enough for a tiny teacher, yet a 1-step sampler has to get five
independent details right at once, which it visibly fails to do.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RESOLUTION = 32
SUPERSAMPLE = 4
# Bump on any change to what a (seed, index) renders: cached FID reference statistics are keyed by it.
RENDERER_VERSION = 1

# Shape colours (RGB) are far apart from each other and from every background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 175, 55),
    "blue": (40, 80, 230),
    "yellow": (240, 225, 40),
    "purple": (135, 45, 185),
    "orange": (250, 140, 20),
    "cyan": (40, 210, 220),
    "pink": (250, 135, 195),
}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "white": (235, 235, 235),
}
SIZES = {"small": 3.6, "large": 6.6}  # "radius" in output pixels
POSITIONS = {"left": 9.0, "center": 16.0, "right": 23.0}  # centre x in output pixels

# Attribute name -> ordered class names; the order defines the integer labels.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "background": tuple(BACKGROUNDS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)


@dataclass(frozen=True)
class Scene:
    """One scene: discrete attributes (what the caption says) plus continuous jitter."""

    color: str
    shape: str
    background: str
    size: str
    position: str
    dx: float = 0.0  # horizontal offset from the nominal position, pixels
    dy: float = 0.0  # vertical offset from the image centre, pixels
    scale: float = 1.0  # multiplies the nominal radius
    shade: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the colour, 0..255 units

    def labels(self) -> list[int]:
        return [ATTRIBUTES[a].index(getattr(self, a)) for a in ATTRIBUTE_NAMES]


def caption(scene: Scene) -> str:
    """The caption grammar: 'a small red triangle on the left, gray background'."""
    where = "in the center" if scene.position == "center" else f"on the {scene.position}"
    return f"a {scene.size} {scene.color} {scene.shape} {where}, {scene.background} background"


def all_captions() -> list[str]:
    """Every distinct caption of the domain, in a fixed order."""
    out = []
    for c in COLORS:
        for s in SHAPES:
            for b in BACKGROUNDS:
                for z in SIZES:
                    for p in POSITIONS:
                        out.append(caption(Scene(c, s, b, z, p)))
    return out


def vocabulary() -> list[str]:
    """Every word the captions use (the tokenizer gives each a single token)."""
    words: set[str] = set()
    for cap in all_captions():
        words.update(cap.replace(",", " ").split())
    return sorted(words)


def sample_scene(seed: int, index: int) -> Scene:
    """The scene at ``index`` of the dataset with ``seed``: uniform attributes, bounded jitter."""
    rng = np.random.default_rng([seed, index])
    pick = [ATTRIBUTES[a][rng.integers(len(ATTRIBUTES[a]))] for a in ATTRIBUTE_NAMES]
    return Scene(
        *pick,
        dx=float(rng.uniform(-1.0, 1.0)),
        dy=float(rng.uniform(-3.0, 3.0)),
        scale=float(rng.uniform(0.9, 1.1)),
        shade=tuple(float(v) for v in rng.uniform(-12, 12, size=3)),
    )


def _mask(scene: Scene, res: int = RESOLUTION, ss: int = SUPERSAMPLE) -> np.ndarray:
    """Coverage (0..1) of the shape on a res x res grid, box-filtered from res*ss samples."""
    n = res * ss
    coords = (np.arange(n) + 0.5) / ss  # sample centres in output-pixel units
    y, x = np.meshgrid(coords, coords, indexing="ij")
    cx = POSITIONS[scene.position] + scene.dx
    cy = res / 2 + scene.dy
    r = SIZES[scene.size] * scene.scale
    u, v = x - cx, y - cy
    if scene.shape == "circle":
        m = u * u + v * v <= r * r
    elif scene.shape == "square":
        m = np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    elif scene.shape == "triangle":
        # Upward triangle: apex (0, -r), base corners (+-r, 0.8r). Inside = below both sides, above base.
        m = (v <= 0.8 * r) & (v >= -r + 1.8 * np.abs(u))
    elif scene.shape == "cross":
        arm = 0.38 * r
        m = ((np.abs(u) <= r) & (np.abs(v) <= arm)) | ((np.abs(v) <= r) & (np.abs(u) <= arm))
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; expected one of {SHAPES}")
    return m.reshape(res, ss, res, ss).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
    """The scene as a uint8 array of shape (32, 32, 3)."""
    cov = _mask(scene)[..., None]
    fg = np.clip(np.array(COLORS[scene.color], dtype=np.float64) + np.array(scene.shade), 0, 255)
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.float64)
    img = cov * fg + (1 - cov) * bg
    return np.round(img).astype(np.uint8)


class ProceduralDataset(torch.utils.data.Dataset):
    """A virtually endless, deterministic dataset of (image, caption, labels).

    ``seed`` selects the split: training uses one seed, held-out evaluation another, so no scene
    is shared by accident (the jitter is continuous).
    """

    def __init__(self, seed: int = 0, length: int = 2**31 - 1):
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        scene = sample_scene(self.seed, index)
        img = torch.from_numpy(render(scene)).permute(2, 0, 1)  # uint8 CHW
        return {"image": img, "caption": caption(scene), "labels": torch.tensor(scene.labels())}


def labels_from_caption(text: str) -> list[int]:
    """Parse a caption of the grammar back to integer labels (for prompts without images)."""
    words = text.replace(",", " ").split()
    out = []
    for a in ATTRIBUTE_NAMES:
        hits = [i for i, name in enumerate(ATTRIBUTES[a]) if name in words]
        if len(hits) != 1:
            raise ValueError(f"caption {text!r} does not name exactly one {a}")
        out.append(hits[0])
    return out
