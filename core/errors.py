"""One exception root for the whole product.

Subclasses carry data as attributes; the CLI turns any :class:`BzgwError` into one line on
stderr and exit status 1.
"""

from __future__ import annotations


class BzgwError(Exception):
    """Root of every error the product raises on purpose."""


class ConfigError(BzgwError):
    """A configuration file or value is invalid.

    Attributes:
        problems: ``(location, message)`` pairs, location as ``file:line: a -> b``.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{loc}: {msg}" if loc else msg for loc, msg in problems))


class DependencyMissingError(BzgwError):
    """A binary or optional library the command needs is not installed.

    Attributes:
        what: the missing thing (``mosquitto``, ``picamera2``...).
        fix: one line telling the operator how to install it.
    """

    def __init__(self, what: str, fix: str) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what} is not available: {fix}")


class CaptureFormatError(BzgwError):
    """A capture file is malformed or truncated.

    Attributes:
        offset: byte offset in the file where the problem starts.
    """

    def __init__(self, message: str, *, offset: int) -> None:
        self.offset = offset
        super().__init__(f"{message} (at byte offset {offset})")


class SealError(BzgwError):
    """A batch could not be sealed or opened (bad signature, wrong key, corrupt data)."""


class RejectedBatchError(SealError):
    """The matcher refused a batch.

    Attributes:
        reason: a short machine-readable reason (``unknown_gateway``, ``bad_signature``,
            ``replay``, ``oversize``, ``decompression_bomb``, ``malformed``...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"batch rejected: {reason}" + (f" ({detail})" if detail else ""))


class OutboxFullError(BzgwError):
    """The outbox cannot take a batch (disk full or SQLite page limit reached)."""


class F0InputError(BzgwError):
    """An F0 input file is malformed, unsigned or signed by an unknown source."""
