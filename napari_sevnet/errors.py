"""The one error type a user can cause: bad files, bad checkpoints, bad paths.

Every reader, writer and checkpoint loader raises :class:`InputError` with the
offending path and a sentence saying what is wrong with it, so the CLI can
print one line and the plugin one notification, never a traceback.
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """A file or folder the user gave cannot be used; ``str()`` names it and why.

    ``remedy``: the dock that makes such a folder usable ("Prepare raw scans" for raw series, "Assign sequences" for
    files named in no known scheme), which napari opens with the folder instead of only saying the error.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, *, remedy: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class Cancelled(Exception):
    """Raised inside long work when the user's cancel flag is set."""


class NotSaved(RuntimeError):
    """An :class:`InputError` met while napari saves layers with our writer.

    napari treats a ValueError from a writer as "this writer does not apply"
    and tells the user only that it "is not a valid writer"; re-raised as this,
    our message (which layers are missing, which file exists) reaches them.
    """
