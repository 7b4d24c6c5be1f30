"""Fixtures of the integration tests: one lab world per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.world import World, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = build_world(tmp_path_factory.mktemp("world"))
    try:
        yield built
    finally:
        built.stop()


@pytest.fixture
def w(world: World) -> World:
    world.reset()
    return world
