"""Fixtures for the surgery tests: random plans and ViTs whose attention is not flat."""

from __future__ import annotations

import pytest

from tests.helpers import random_plan, sharpen


@pytest.fixture
def make_plan():
    return random_plan


@pytest.fixture
def sharpened():
    return sharpen
