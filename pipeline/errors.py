"""Error and warning types shared by the whole package.

Every complaint about user input is a :class:`SpecError`: it names the field, the value
that was given and what is allowed, so a message can be acted on without reading code.
"""

from __future__ import annotations

from typing import Any


class SpecError(ValueError):
    """Invalid user input (a sweep spec, a point dict, a CLI argument).

    Parameters
    ----------
    field:
        Name of the offending parameter, as the user wrote it (e.g. ``"beta"``).
    value:
        The value that was given.
    allowed:
        Plain-words description of the allowed values (e.g. ``"a number in [0, 1)"``).
    source:
        Where the value came from (a file name, ``"point"``...); prefixed to the message.
    hint:
        An optional suggested fix.
    """

    def __init__(
        self,
        field: str,
        value: Any,
        allowed: str,
        *,
        source: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.source = source
        self.hint = hint
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.source}: " if self.source else ""
        msg = f"{where}invalid {self.field} = {self.value!r}: allowed is {self.allowed}"
        if self.hint:
            msg += f". {self.hint}"
        return msg

    def with_source(self, source: str) -> SpecError:
        """Return a copy of this error that names where the value came from."""
        return SpecError(self.field, self.value, self.allowed, source=source, hint=self.hint)


class AssumptionWarning(UserWarning):
    """A choice of activations or frame breaks one of the paper's Assumptions 1.1-1.5."""


class TruncationWarning(UserWarning):
    """The Hermite expansion truncated at the chosen degree drops a non-negligible tail."""


class IgnoredSettingWarning(UserWarning):
    """A setting that has no effect (``lr`` with ``method = "flow"``, snapshot times after
    ``t_max``): said once, so that it is not mistaken for one that was used."""


class DamagedFile(SpecError):
    """A bookkeeping file of a store (a ledger marker, ``initialized.json``, a lock record)
    exists but does not hold what mimflow writes there: it is named, with what to do."""

    def __init__(self, path: str, problem: str, *, hint: str | None = None) -> None:
        self.path = path
        self.problem = problem
        super().__init__("file", path, "a JSON object written by mimflow",
                         hint=f"it {problem}" + (f"; {hint}" if hint else ""))
