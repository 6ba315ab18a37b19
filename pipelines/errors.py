"""The errors a user can fix at the top layer, in a module that imports nothing heavy.

``fewstep`` prints any of these (and ``ConfigError``, ``eval.errors``) as one line and exits 2;
keeping them light lets a bad argument be reported before diffusers or torch are imported.
"""


class UserError(Exception):
    """A problem with the command line itself; printed as one line."""


class TeacherError(ValueError):
    """The teacher path or id does not hold a usable diffusers pipeline."""


class LoraBaseError(ValueError):
    """A LoRA export is being loaded onto a base model it was not trained on."""


class EvalError(ValueError):
    """A sweep cannot run as asked (untrained step count, missing folder, ...); the message says why."""
