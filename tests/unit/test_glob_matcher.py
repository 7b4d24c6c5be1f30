"""Host name globs matched without a regex: the same answers as fnmatch's."""

from __future__ import annotations

import fnmatch
import random
import re

import pytest

from rescue.classify.catalog import glob_matcher, load_catalog

GLOBS = [
    "mx*.kundenserver.de",
    "*.olc.protection.outlook.com",
    "*",
    "",
    "exact.example",
    "a*b*c",
    "**.x",
    "mx?.example",
    "mx[0-9].example",
    "*.*",
    "*a*",
]
HOSTS = [
    "mx00.kundenserver.de",
    "mx.kundenserver.de",
    "mxkundenserver.de",
    "mx00.kundenserver.de.evil",
    "eur.olc.protection.outlook.com",
    ".olc.protection.outlook.com",
    "olc.protection.outlook.com",
    "",
    "exact.example",
    "abc",
    "ab",
    "aXbYc",
    "acb",
    "abcbc",
    ".x",
    "x",
    "mx1.example",
    "mxa.example",
    "a",
    "a.",
]


def fnmatch_says(globs: list[str], host: str) -> bool:
    return any(re.match(fnmatch.translate(g), host) for g in globs)


@pytest.mark.parametrize("glob", GLOBS)
def test_each_glob_matches_as_fnmatch_does(glob: str) -> None:
    matches = glob_matcher([glob])
    for host in HOSTS:
        assert matches(host) == fnmatch_says([glob], host), (glob, host)


def test_random_globs_and_names() -> None:
    rng = random.Random(20)
    for _ in range(3000):
        glob = "".join(rng.choice("ab.*") for _ in range(rng.randint(0, 6)))
        host = "".join(rng.choice("ab.") for _ in range(rng.randint(0, 7)))
        assert glob_matcher([glob])(host) == fnmatch_says([glob], host), (glob, host)


def test_the_catalogs_mx_examples_still_find_their_provider() -> None:
    catalog = load_catalog()
    for provider in catalog.providers:
        matches = glob_matcher(provider.mx)
        for host in provider.mx_examples:
            assert matches(host) == fnmatch_says([g.lower() for g in provider.mx], host)
