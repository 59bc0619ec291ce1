"""``ferrovod.exceptions``: the hierarchy its docstring draws, the same classes at the top level,
and no shadowing of Python's builtin ``TimeoutError``."""

from __future__ import annotations

import builtins

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
    # the classes come from Rust, not Python copies: what ferrovod raises is caught by them
    ferrovod.shutdown()
    with pytest.raises(fe.NotInitializedError, match="call ferrovod.init"):
        ferrovod.rank()
    for name, _ in TREE:
        if name not in ("CollectiveTimeoutError", "PoolClosedError"):
            assert getattr(fe, name) is getattr(ferrovod._ferrovod, name)


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
