"""One exception family for everything vitprune reports to a user.

Every message says what was wrong and what to do about it.
"""


class VitpruneError(Exception):
    """Base class of all errors raised on purpose by vitprune."""


class DataError(VitpruneError):
    """A dataset is missing, corrupt or not in a supported layout."""


class ModelError(VitpruneError):
    """A model name, architecture or checkpoint is unknown, unsupported or mismatched."""


class PlanError(VitpruneError):
    """A prune plan is malformed or does not fit the model it is applied to."""


class BudgetError(VitpruneError):
    """No architecture in the search space meets the requested compute budget."""


class OutputError(VitpruneError):
    """An output directory holds files of another run, or cannot be written."""


class ScoringError(VitpruneError):
    """Bad scoring input or option: too few samples, unknown kernel, mismatched shapes."""


class SearchError(VitpruneError, ValueError):
    """A search setting is invalid, or a trials file does not belong to this search.

    Also a ``ValueError``, so callers that validate arguments generically still catch it.
    """
