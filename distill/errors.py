"""One exception type for bad input, so the CLI can print one clear line and exit non-zero."""

from __future__ import annotations


class DistillError(Exception):
    """A problem the user can fix (bad recipe, missing file, malformed record). Printed without a traceback."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
