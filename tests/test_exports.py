"""The declared public API (as trio's ``_tests/test_exports.py``): what users may import.

The public modules are the ones below; each lists its names in ``__all__``. A name that
disappears from one fails here, and so does a new one until it is added on purpose. Every
other module of the package is internal. Importing ``plasma`` stays cheap (no numpy, pyarrow
or trio), and the layers below the coordinator import neither the wire protocol nor trio.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import types

import pytest

import plasma
from tests.helpers import REPO

PUBLIC_MODULES = {
    "plasma",
    "plasma.aio",
    "plasma.client",
    "plasma.compat",
    "plasma.dask",
    "plasma.errors",
    "plasma.ids",
    "plasma.task",
}

_ERRORS = {
    "BadRequest",
    "Disconnected",
    "ObjectExists",
    "ObjectLost",
    "ObjectNotFound",
    "ObjectNotSealed",
    "PermissionDenied",
    "PlacementImpossible",
    "PlasmaError",
    "PlasmaTimeout",
    "SpillIOError",
    "StoreFull",
    "Unsupported",
}
EXPECTED = {
    "plasma": _ERRORS
    | {"Client", "ObjectID", "Subscription", "aio", "compat", "connect", "errors"},
    "plasma.errors": _ERRORS
    | {
        "BAD_REQUEST",
        "DISCONNECTED",
        "IO_ERROR",
        "OBJECT_EXISTS",
        "OBJECT_LOST",
        "OBJECT_NOT_FOUND",
        "OBJECT_NOT_SEALED",
        "PERMISSION_DENIED",
        "PLACEMENT_IMPOSSIBLE",
        "STORE_FULL",
        "TIMEOUT",
        "UNSUPPORTED",
        "error_for",
    },
    "plasma.compat": {
        "ObjectID",
        "ObjectNotAvailable",
        "PlasmaBuffer",
        "PlasmaClient",
        "PlasmaObjectExists",
        "PlasmaObjectNonexistent",
        "PlasmaStoreFull",
        "connect",
        "start_plasma_store",
    },
    "plasma.dask": {
        "Choice",
        "Input",
        "PlasmaData",
        "PlasmaPlugin",
        "PlasmaScheduler",
        "choose_worker",
        "reap",
        "stale_objects",
    },
    "plasma.task": {"TaskContext", "TaskFailed", "TaskHandle", "current", "object_id"},
    "plasma.ids": {"ID_SIZE", "ObjectID", "as_id_bytes", "replica_id"},
    "plasma.client": {"Client", "Subscription", "connect"},
    "plasma.aio": {"AsyncClient", "AsyncSubscription", "connect"},
}


def _all_modules() -> set[str]:
    names = {"plasma"}
    for info in pkgutil.walk_packages(plasma.__path__, "plasma."):
        names.add(info.name)
    return names


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_public_modules_exist_and_the_expected_ones_are_frozen():
    assert set(EXPECTED) == PUBLIC_MODULES
    assert not PUBLIC_MODULES - _all_modules()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_public_names_are_declared(name):
    module = importlib.import_module(name)
    declared = getattr(module, "__all__", None)
    assert declared is not None, f"{name} declares no __all__"
    assert len(declared) == len(set(declared)), f"{name}.__all__ lists a name twice"
    missing = EXPECTED[name] - set(declared)
    assert not missing, f"public names gone from {name}: {sorted(missing)}"
    added = set(declared) - EXPECTED[name]
    assert not added, f"new public names in {name} (add them to EXPECTED): {sorted(added)}"


@pytest.mark.parametrize("name", sorted(PUBLIC_MODULES))
def test_every_declared_name_exists_and_is_public(name):
    module = importlib.import_module(name)
    for attr in getattr(module, "__all__", []):
        assert not attr.startswith("_"), f"{name}.__all__ lists private {attr}"
        value = getattr(module, attr)  # raises if the name is declared but missing
        if isinstance(value, types.ModuleType):
            assert value.__name__ in PUBLIC_MODULES, f"{name}.{attr} is internal {value.__name__}"


def test_no_internal_module_is_exported_from_plasma():
    internal = _all_modules() - PUBLIC_MODULES
    assert "plasma.store" in internal and "plasma.protocol" in internal
    leaked = {attr for attr in plasma.__all__ if f"plasma.{attr}" in internal}
    assert not leaked, f"internal modules in plasma.__all__: {sorted(leaked)}"


def test_lazy_submodules_are_reachable_from_a_bare_import():
    modules = _modules_after("import plasma\nplasma.aio.connect\nplasma.compat.connect")
    assert {"plasma.aio", "plasma.compat", "trio"} <= modules


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import plasma", {"numpy", "pyarrow", "trio", "plasma.client", "plasma.aio"}),
        ("import plasma.store", {"plasma.protocol", "trio"}),
        ("import plasma.segments", {"plasma.protocol", "trio"}),
        ("import plasma.allocator", {"plasma.protocol", "trio"}),
        ("import plasma.dag.report", {"trio"}),
    ],
)
def test_imports_stay_light(statement, absent):
    pulled_in = _modules_after(statement) & absent
    assert not pulled_in, f"{statement!r} imports {sorted(pulled_in)}"
