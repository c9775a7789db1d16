"""`check_readings`: what the loop accepts from a sensor, every tick. Its fast path for a plain
dict of exact types (issue #18) must give the same answers as the full check."""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from types import MappingProxyType

import pytest

from agentd.plugins.handle import check_readings


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


def test_good_readings_come_back_as_a_copy() -> None:
    given = {"a": 1, "b": 2.5, "c": True, "d": "on", "e": -0.0}
    error, got = check_readings(given)
    assert error is None
    assert got == given
    given["a"] = 99  # the sensor reuses its dict: the tick's readings do not change
    assert got["a"] == 1


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        (OrderedDict(a=1, b=2.5), {"a": 1, "b": 2.5}),
        (MappingProxyType({"a": 1, "b": 2.5}), {"a": 1, "b": 2.5}),
        # subclasses of the value and key types: the long way
        ({"a": Level.HIGH, "b": 2.5}, {"a": 3, "b": 2.5}),
        ({Name("a"): 1, "b": 2.5}, {"a": 1, "b": 2.5}),
    ],
)
def test_other_mappings_and_subclasses_are_accepted_the_long_way(
    mapping: object, expected: dict[str, object]
) -> None:
    error, got = check_readings(mapping)
    assert error is None
    assert got == expected
    assert type(got) is dict


@pytest.mark.parametrize(
    ("readings", "error"),
    [
        ({"a": 1, "b": None}, "returned a bad reading 'b': NoneType"),
        ({"a": [1]}, "returned a bad reading 'a': list"),
        ({1: 1.0}, "returned a bad reading 1: float"),
        ({"a": 1, "b": math.nan}, "returned a non-finite reading 'b': nan"),
        ({"a": math.inf}, "returned a non-finite reading 'a': inf"),
        ({"a": -math.inf}, "returned a non-finite reading 'a': -inf"),
        ([("a", 1)], "returned list, expected a mapping of metric to value"),
    ],
)
def test_bad_readings_are_named(readings: object, error: str) -> None:
    got_error, got = check_readings(readings)
    assert got_error is not None
    assert got_error.startswith(error), got_error
    assert got == {}
