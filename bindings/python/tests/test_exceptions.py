"""``ferrovod.exceptions``: the hierarchy its docstring draws, the same classes at the top level,
and no shadowing of Python's builtin ``TimeoutError``."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

import ferrovod
import ferrovod.exceptions as fe

# (class name, its documented parent's name)
TREE = [
    ("FerrovodError", "Exception"),
    ("ConfigError", "FerrovodError"),
    ("InvalidArgumentError", "FerrovodError"),
    ("BootstrapError", "FerrovodError"),
    ("CollectiveError", "FerrovodError"),
    ("CollectiveTimeoutError", "CollectiveError"),
    ("MismatchError", "FerrovodError"),
    ("StalledError", "FerrovodError"),
    ("UnsupportedError", "FerrovodError"),
    ("NotInitializedError", "FerrovodError"),
    ("LaunchError", "FerrovodError"),
    ("RankFailedError", "FerrovodError"),
    ("PoolClosedError", "FerrovodError"),
]


@pytest.mark.parametrize("name,parent", TREE)
def test_each_class_has_its_documented_parent(name, parent):
    cls = getattr(fe, name)
    base = Exception if parent == "Exception" else getattr(fe, parent)
    assert issubclass(cls, base)
    assert name in fe.__doc__


def test_the_module_exports_exactly_the_tree():
    assert sorted(fe.__all__) == sorted(name for name, _ in TREE)


def test_the_error_classes_are_the_ones_the_extension_raises():
    # The extension raises the classes defined in ferrovod.exceptions, not copies of them.
    ferrovod.shutdown()
    with pytest.raises(fe.NotInitializedError, match="call ferrovod.init") as e:
        ferrovod.rank()
    assert type(e.value) is fe.NotInitializedError
    assert not any(name.endswith("Error") for name in dir(ferrovod._ferrovod))


# What horovod.torch raises in the same situation (pybind11 turns its invalid_argument into
# ValueError; its failed collectives are HorovodInternalError, a RuntimeError; its "not
# initialized" is a ValueError).
HOROVOD_BUILTIN = {
    "ConfigError": ValueError,
    "InvalidArgumentError": ValueError,
    "NotInitializedError": ValueError,
    "BootstrapError": RuntimeError,
    "CollectiveError": RuntimeError,
    "CollectiveTimeoutError": RuntimeError,
    "MismatchError": RuntimeError,
    "StalledError": RuntimeError,
    "UnsupportedError": RuntimeError,
    "LaunchError": RuntimeError,
    "RankFailedError": RuntimeError,
    "PoolClosedError": RuntimeError,
}


@pytest.mark.parametrize("name", sorted(HOROVOD_BUILTIN))
def test_each_class_is_also_the_builtin_horovod_raises(name):
    assert issubclass(getattr(fe, name), HOROVOD_BUILTIN[name])


def test_code_catching_horovods_errors_catches_ferrovods():
    import ferrovod.torch as hvd

    assert hvd.HorovodInternalError is fe.CollectiveError
    ferrovod.shutdown()
    with pytest.raises(ValueError, match="call ferrovod.init"):  # Horovod: "use hvd.init()"
        hvd.rank()
    hvd.init()
    try:
        with pytest.raises(ValueError, match="root rank -1"):
            hvd.broadcast(np.ones(2), -1)
        e = fe.InvalidArgumentError("x")
        assert (e.rank, e.blamed_ranks, e.op, e.seq) == (None, (), None, None)
    finally:
        hvd.shutdown()


def test_top_level_names_are_the_same_classes():
    for name, _ in TREE:
        assert getattr(ferrovod, name) is getattr(fe, name)
        assert name in ferrovod.__all__


def test_the_builtin_timeout_error_is_not_shadowed():
    assert fe.CollectiveTimeoutError is not builtins.TimeoutError
    assert not hasattr(ferrovod, "TimeoutError")
    assert "TimeoutError" not in ferrovod.__all__
    # `from ferrovod import *` (ferrovod.torch does it) leaves the builtin alone
    namespace: dict[str, object] = {}
    exec("from ferrovod import *", namespace)
    assert "TimeoutError" not in namespace
