"""Fixtures of the integration tests: one lab world per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import lab_unavailable
from tests.integration.world import World, build_world
from tests.lab.system import new_lab_root, remove_lab_root


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    reason = lab_unavailable()
    if reason is not None:  # a test that uses the world without the `postfix` mark
        pytest.skip(reason)
    # Not under pytest's tmp_path: another pytest run starting would close it to 0700
    # and lock the postfix user out of this lab.
    root = new_lab_root("world-")
    try:
        built = build_world(root)
        try:
            yield built
        finally:
            built.stop()
    finally:
        remove_lab_root(root)


@pytest.fixture
def w(world: World) -> World:
    world.reset()
    return world
