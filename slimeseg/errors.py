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


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some decoders' and libraries' messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def reason(exc: BaseException, path: str | None = None) -> str:
    """Why one input failed, in one line: a SlimeError's own message (without the leading `path: `
    when `path` is given, since the caller names it), or what an unexpected error was."""
    if isinstance(exc, SlimeError):
        text = one_line(exc)
        return text[len(path) + 2:] if path and text.startswith(f"{path}: ") else text
    if isinstance(exc, MemoryError):
        return "out of memory"
    kind = type(exc).__name__
    if "OutOfMemory" in kind:  # torch.cuda.OutOfMemoryError and kin
        return "out of memory on the device"
    return f"unexpected {kind}: {one_line(exc)} (a bug in slimeseg?)"
