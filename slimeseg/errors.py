"""User-facing errors: one line that names the file (or model) and the problem.

The CLI prints these as `error: <message>` and exits non-zero; anything else is a bug and
shows a traceback only with `--debug`.
"""

from __future__ import annotations


class SlimeError(Exception):
    """A problem with the user's input, model or environment, explained in one line."""


class InputError(SlimeError):
    """An image, mask, folder or output path that cannot be used."""


class ModelError(SlimeError):
    """A Stable Diffusion checkpoint that cannot be loaded or does not fit the method."""


class ArtifactError(SlimeError):
    """A learned-embeddings file that is corrupt, from a newer format, or for another model."""


class TrainingError(SlimeError):
    """Training that cannot go on (for example a loss that became NaN).

    `learned` holds the last good embeddings (from before the failing update), when there are any.
    """

    def __init__(self, message: str, learned: object | None = None) -> None:
        super().__init__(message)
        self.learned = learned
