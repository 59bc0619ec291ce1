"""Process sets: collectives among some of the ranks, as Horovod's ``hvd.ProcessSet``.

    evens = fv.add_process_set([0, 2])        # on every rank, in the same order
    if evens.included():
        fv.allreduce(x, process_set=evens)     # ranks 0 and 2 only

Each set a rank is in gets a communicator and an engine of its own (joined through the job's
store, under the set's id and ranks), so its collectives never wait on, or pair up with, those of
another set; automatic tensor names are counted per set. As in Horovod, ``add_process_set`` and
``remove_process_set`` are called on every rank in the same order (the ids follow that order),
and a broadcast's root is a global rank.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from . import _ferrovod


class ProcessSet:
    """Some ranks of the job. Made from a list of global ranks; usable once added
    (:func:`add_process_set`), when ``process_set_id`` is set."""

    process_set_id: int | None = None
    ranks: list[int] | None = None

    def __init__(self, ranks: Iterable[int]) -> None:
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Iterable):
            raise ValueError(f"ProcessSet takes a list of ranks, not {type(ranks).__name__}")
        listed = list(ranks)
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in listed):
            raise ValueError(f"ProcessSet takes a list of ranks (non-negative ints), not {listed!r}")
        if len(set(listed)) != len(listed):
            raise ValueError(f"ProcessSet: rank(s) listed twice in {listed!r}")
        self.ranks = sorted(listed)

    def size(self) -> int | None:
        """How many ranks it has; ``None`` until it is added."""
        if self.process_set_id is None:
            return None
        if self.process_set_id == 0:
            return _ferrovod.world()[1]
        return len(self.ranks or ())

    def rank(self) -> int | None:
        """This rank's place in the set (0 to ``size() - 1``); ``None`` until it is added.
        ``ValueError`` on a rank that is not in it. (Collectives still take global ranks.)"""
        if self.process_set_id is None:
            return None
        if self.process_set_id == 0:
            return _ferrovod.world()[0]
        me = _ferrovod.world()[0]
        if me not in (self.ranks or ()):
            raise ValueError(f"rank {me} is not in {self}")
        return _ferrovod.process_set_world(self.process_set_id)[0]

    def included(self) -> bool | None:
        """Whether this rank is in the set."""
        if self.process_set_id == 0:
            return True
        if self.ranks is None:
            return None
        return _ferrovod.world()[0] in self.ranks

    def __repr__(self) -> str:
        ranks = "all" if self.process_set_id == 0 else self.ranks
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={ranks})"


#: Every rank: what collectives use when they are given no process set.
global_process_set = ProcessSet([])
global_process_set.process_set_id = 0

_lock = threading.Lock()
_added: dict[int, ProcessSet] = {}
_next_id = 1


def add_process_set(process_set: ProcessSet | Iterable[int]) -> ProcessSet:
    """Adds a process set (or a list of ranks) and returns it, ready for ``process_set=``. Call it
    on every rank, members or not, in the same order. ``ValueError`` for a set already added, one
    with the same ranks as another, or ranks outside the job."""
    global _next_id
    ps = process_set if isinstance(process_set, ProcessSet) else ProcessSet(process_set)
    size = _ferrovod.world()[1]  # raises when not initialized
    ranks = ps.ranks or []
    if ps.process_set_id is not None:
        raise ValueError(f"{ps} was added already")
    if not ranks:
        raise ValueError("a process set needs at least one rank")
    if ranks[-1] >= size:
        raise ValueError(f"ProcessSet({ranks}): rank {ranks[-1]} is not a rank of this job of {size}")
    with _lock:
        if ranks == list(range(size)) or any(other.ranks == ranks for other in _added.values()):
            raise ValueError(f"Attempted to add a duplicate process set: ProcessSet(ranks={ranks})")
        set_id = _next_id
        _next_id += 1
    _ferrovod.add_process_set(set_id, ranks)
    with _lock:
        ps.process_set_id = set_id
        _added[set_id] = ps
    return ps


def remove_process_set(process_set: ProcessSet) -> bool:
    """Removes a process set added before (on every rank, as adding it); ``False`` for the
    global set or one that is not added. Its collectives still pending fail."""
    set_id = process_set.process_set_id
    with _lock:
        if not set_id or _added.get(set_id) is not process_set:
            return False
        del _added[set_id]
    _ferrovod.remove_process_set(set_id)
    process_set.process_set_id = None
    return True


def set_id(process_set: Any) -> int:
    """The id to hand the engine: ``ValueError`` for a set that is not added, or that this rank
    is not in (its collectives would have no peers here)."""
    if not isinstance(process_set, ProcessSet):
        raise TypeError(f"process_set must be a ferrovod ProcessSet, not {type(process_set).__name__}")
    if process_set.process_set_id is None:
        raise ValueError(f"{process_set} is not added: call add_process_set first")
    if process_set.process_set_id and not process_set.included():
        raise ValueError(f"rank {_ferrovod.world()[0]} is not in {process_set}")
    return process_set.process_set_id


def root_in(process_set: ProcessSet, root_rank: int) -> int:
    """A broadcast's root (a global rank) as a rank of the set's engine."""
    if process_set.process_set_id == 0 or isinstance(root_rank, bool) or not isinstance(root_rank, int):
        return root_rank
    ranks = process_set.ranks or []
    if root_rank not in ranks:
        raise ValueError(f"root rank {root_rank} is not in {process_set}")
    return ranks.index(root_rank)


def reset() -> None:
    """Forgets every added set: a fresh engine starts without any (as after Horovod's
    ``shutdown``), and ids count from 1 again on every rank."""
    global _next_id
    with _lock:
        for ps in _added.values():
            ps.process_set_id = None
        _added.clear()
        _next_id = 1
