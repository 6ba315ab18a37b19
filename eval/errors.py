"""The evaluation errors a user can fix, in a module that imports nothing heavy.

The command line catches these to print one line; defining them here (not next to torch code)
lets it do so without importing torch, diffusers or open_clip first.
"""


class MetricsError(RuntimeError):
    """A metric cannot be computed as asked (missing weights, mismatched statistics, too few images)."""


class MissingWeightsError(MetricsError, FileNotFoundError):
    """A feature network's weights file is not on this machine (nothing is downloaded)."""


class ClipError(RuntimeError):
    """A CLIP model cannot be loaded offline as specified."""
