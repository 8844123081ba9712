"""Exceptions: one stable code each, a docstring saying when each is raised."""

from __future__ import annotations

import pytest

from plasma import errors

CLASSES = [
    value
    for value in vars(errors).values()
    if isinstance(value, type) and issubclass(value, errors.PlasmaError)
]


def test_every_exception_is_exported_with_a_distinct_code():
    assert {cls.__name__ for cls in CLASSES} <= set(errors.__all__)
    codes = [cls.code for cls in CLASSES if cls is not errors.PlasmaError]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_exception_says_when_it_is_raised(cls):
    assert "__doc__" in vars(cls) and len(cls.__doc__.split()) >= 8


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_error_for_gives_the_class_of_a_code(cls):
    if cls is errors.PlasmaError:
        assert type(errors.error_for("no_such_code", "m")) is errors.PlasmaError
        return
    err = errors.error_for(cls.code, "what happened")
    assert type(err) is cls and str(err) == err.message == "what happened"


def test_disconnected_is_a_connection_error():
    err = errors.error_for(errors.DISCONNECTED, "the coordinator closed the connection")
    assert isinstance(err, errors.Disconnected)
    assert isinstance(err, ConnectionError) and isinstance(err, errors.PlasmaError)
    assert err.code == "disconnected"
