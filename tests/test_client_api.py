"""Both clients implement ClientAPI: every method, with its parameters and its docstring."""

from __future__ import annotations

import inspect

import pytest

from plasma._client_core.api import ClientAPI, documented, method_names
from plasma.aio import AsyncClient
from plasma.client import Client


def test_the_api_declares_the_shared_methods() -> None:
    names = method_names()
    assert len(names) == len(set(names)) > 20
    assert {"get", "put", "create", "seal", "get_object", "flush", "subscribe"} <= set(names)


@pytest.mark.parametrize("name", method_names())
@pytest.mark.parametrize("client", [Client, AsyncClient], ids=["Client", "AsyncClient"])
def test_each_client_implements_each_method_with_the_same_parameters(
    client: type, name: str
) -> None:
    declared = getattr(ClientAPI, name)
    method = getattr(client, name)
    assert inspect.iscoroutinefunction(method) == (client is AsyncClient)
    want = inspect.signature(declared).parameters
    got = inspect.signature(method).parameters
    assert [(p.name, p.kind, p.default, p.annotation) for p in got.values()] == [
        (p.name, p.kind, p.default, p.annotation) for p in want.values()
    ]
    assert method.__doc__ == declared.__doc__ and method.__doc__


def test_a_class_missing_a_method_is_refused_when_made() -> None:
    with pytest.raises(TypeError, match=r"Partial lacks ClientAPI\.create"):

        @documented
        class Partial:
            pass
