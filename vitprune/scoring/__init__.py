"""Importance of heads and MLP neurons: HSIC and baseline criteria; never edits a model.

``hsic`` holds the estimator as pure batched tensor functions, ``collect`` the hooks that gather
features over a calibration loader, ``criteria`` the criteria behind one interface.
"""

from ..errors import ScoringError
from .collect import SCORE_IMAGES
from .criteria import (
                       BlockScores,
                       Criterion,
                       available_criteria,
                       check_scores,
                       get_criterion,
                       load_scores,
                       rankings,
                       register,
                       save_scores,
)

__all__ = ["SCORE_IMAGES", "BlockScores", "Criterion", "ScoringError", "available_criteria", "check_scores",
           "get_criterion", "load_scores", "rankings", "register", "save_scores"]
