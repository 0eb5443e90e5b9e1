"""One exception type for bad input, so the CLI can print one clear line and exit non-zero; and the one-line
summary of a library's exception that such an error quotes."""

from __future__ import annotations


class DistillError(Exception):
    """A problem the user can fix (bad recipe, missing file, malformed record). Printed without a traceback."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (joined with the next where it ends in a colon, as torch's
    "Error(s) in loading state_dict for X:" does), cut to ``limit`` characters (at a sentence's end where there is
    one); the class name when it is empty."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    text = lines[0] + (f" {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else "")
    if len(text) <= limit:
        return text
    sentence = text[:limit].rfind(". ")  # torch's corrupt-file message runs on for 400 characters
    return text[:sentence + 1] if sentence > 0 else text[:limit - 3] + "..."
