"""The lab's one error."""

from __future__ import annotations


class PostfixLabError(RuntimeError):
    """A Postfix command or an SMTP submission failed in the lab; the text says how."""
