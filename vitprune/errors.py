"""One exception family for everything vitprune reports to a user.

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations


class VitpruneError(Exception):
    """Base class of all errors raised on purpose by vitprune."""


class ConfigError(VitpruneError, ValueError):
    """A setting is invalid. Raised when a configuration is built, before any work is done.

    Attributes:
        field: the setting's name in the Python API (``max_ratio``); the command line shows it
            as its option (``--max-ratio``).
        problem: what is wrong with it, phrased to follow the name ("must be at least 1, got 0").
    """

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}")

    def render(self, name: str) -> str:
        """The message with the setting called ``name`` (e.g. its command-line option)."""
        return f"{name} {self.problem}"


class DataError(VitpruneError):
    """A dataset is missing, corrupt or not in a supported layout."""


class ModelError(VitpruneError):
    """A model name, architecture or checkpoint is unknown, unsupported or mismatched."""


class PlanError(VitpruneError):
    """A prune plan is malformed or does not fit the model it is applied to."""


class BudgetError(VitpruneError):
    """No architecture in the search space meets the requested compute budget."""


class OutputError(VitpruneError):
    """An output is owned by something else, locked by another writer, or cannot be written."""


class ScoringError(VitpruneError):
    """Bad scoring input or option: too few samples, unknown kernel, mismatched shapes."""


class SearchError(VitpruneError, ValueError):
    """A search setting is invalid, or a trials file does not belong to this search.

    Also a ``ValueError``, so callers that validate arguments generically still catch it.
    """


class DependencyError(VitpruneError):
    """An optional dependency (an extra such as ``vitprune[export]``) is not installed."""


class DistributedError(VitpruneError):
    """The processes of a torchrun launch could not join or reach each other."""


class InternalError(VitpruneError):
    """A check that should never fail did: a bug in vitprune. Please report it with the command."""


def require(ok: bool, field: str, problem: str) -> None:
    """Raise ``ConfigError(field, problem)`` unless ``ok``."""
    if not ok:
        raise ConfigError(field, problem)


def is_int(v: object) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def settings_of(cls: type, values: dict):
    """``cls(**values)`` for a settings dataclass, with an unknown name refused as a
    :class:`ConfigError` that lists the known ones (instead of Python's ``TypeError``)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls) if f.init}
    for name in values:
        if name not in known:
            raise ConfigError(name, f"is not a setting of {cls.__name__}; known: "
                                    f"{', '.join(sorted(known))}")
    return cls(**values)
