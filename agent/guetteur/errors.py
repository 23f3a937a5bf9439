"""The one base class of the errors that carry a machine code and a sentence.

``code`` is stable and machine-readable (a ``protocol.ErrorCode`` for anything a command can be
refused with; a dotted name such as ``update.signature`` for the tools); ``message`` is the
sentence an operator or a technician acts on. The command dispatcher answers any GuetteurError a
handler lets through with exactly these two, so a service need not translate its own errors.
"""

from __future__ import annotations


class GuetteurError(Exception):
    """A refusal or failure with a machine ``code`` and a human ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
