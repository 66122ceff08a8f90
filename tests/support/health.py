"""Fixtures for tests that need a real service to gate: health, pipeline, auto-revert, demo.

    from tests.support.health import start_service_fixture  # noqa: F401  (pytest fixture)

    def test_x(start_service):
        svc = start_service("die-after=1")   # a real process on 127.0.0.1; stopped after the test
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opskit.base.config import HealthSettings
from opskit.standins import free_port
from opskit.standins.service import ServiceProcess, stop

StartService = Callable[..., ServiceProcess]


# Test modules import start_service_fixture; the fixture itself is called start_service, so a
# test parameter of that name does not shadow (F811) the import.
@pytest.fixture(name="start_service")
def start_service_fixture() -> Iterator[StartService]:
    """start_service(mode="healthy", port=None, mode_file=None) -> a running ServiceProcess."""
    started: list[ServiceProcess] = []

    def start(mode: str = "healthy", port: int | None = None,
              mode_file: str | Path | None = None) -> ServiceProcess:
        svc = ServiceProcess.start(port=port, mode=mode, mode_file=mode_file)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture(name="pidfiles")
def pidfiles_fixture() -> Iterator[list[Path]]:
    """Append the pidfile of every detached service a test starts; they are stopped after it."""
    files: list[Path] = []
    yield files
    for f in files:
        stop(f)


def refused_url() -> str:
    """An http URL on which nothing listens right now."""
    return f"http://127.0.0.1:{free_port()}/health"


def spec(**fields: Any) -> HealthSettings:
    """A HealthSettings with small test-friendly numbers unless given."""
    base: dict[str, Any] = {"window": 2.0, "period": 0.5, "timeout": 2.0, "failures": 3,
                            "startup": 3.0}
    base.update(fields)
    return HealthSettings(**base)
