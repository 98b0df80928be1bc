"""The factory's exception hierarchy.

Every stage raises one of these so that an operator (or a person reading a task log) can tell
*who* has to act: an :class:`InputError` is the startup's to fix (a bad URI, an unreadable file),
a :class:`QualityGateFailed` means the data arrived but does not meet the tenant's suite.
Messages name the problem and say what to do next; they never contain secrets or sample data.
"""

from __future__ import annotations

from typing import Any


class FactoryError(Exception):
    """Base class of every error the factory raises on purpose."""


class InputError(FactoryError):
    """Bad user input (a URI, a dataset, a parameter).

    The message names the offending value and the rule it broke, and says what to do.
    Retrying without changing the input will fail the same way.
    """


class QualityGateFailed(FactoryError):
    """The dataset did not pass its expectation suite.

    :param message: a readable multi-line summary (which expectations failed, on which column,
        unexpected counts); no values from the data.
    :param summary: the same, as a JSON-serialisable dict (for XCom or ``quality.json``).
    """

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary
