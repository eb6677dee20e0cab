"""Fixtures for the injector tests: the real webhook, in both serving modes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from injector_harness import KubeEmulator, Webhook, run_injector


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def operator_webhook(kube: KubeEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    with run_injector(tmp_path_factory.mktemp("operator"), "operator", kube) as hook:
        yield hook


@pytest.fixture(scope="module")
def standalone_webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    with run_injector(tmp_path_factory.mktemp("standalone"), "standalone") as hook:
        yield hook


@pytest.fixture(params=["operator", "standalone"])
def webhook(request: pytest.FixtureRequest) -> Webhook:
    return request.getfixturevalue(f"{request.param}_webhook")
