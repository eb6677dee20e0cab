"""Chart renders shared by a test module: one per values set (rendering takes ~0.3 s)."""

from __future__ import annotations

import pytest
from chart_kit import CUSTOM_VALUES, Rendered, render


@pytest.fixture(scope="module")
def default_chart() -> Rendered:
    return Rendered(render({}), {})


@pytest.fixture(scope="module")
def custom_chart() -> Rendered:
    return Rendered(render(CUSTOM_VALUES), CUSTOM_VALUES)


@pytest.fixture(params=["default", "custom"])
def chart(request: pytest.FixtureRequest) -> Rendered:
    """Each test that takes ``chart`` runs against both values sets."""
    return request.getfixturevalue(f"{request.param}_chart")
