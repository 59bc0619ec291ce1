"""Type stubs of the extension module ``ferrovod._ferrovod`` (written by hand, checked with
``mypy.stubtest``)."""

from typing import Any, final

__all__ = [
    "ReduceOp",
    "Handle",
    "Buffer",
    "init",
    "shutdown",
    "is_initialized",
    "world",
    "add_process_set",
    "remove_process_set",
    "process_set_world",
    "allreduce_async_",
    "grouped_allreduce_async_",
    "broadcast_async_",
    "allgather_async",
    "reducescatter_async",
    "alltoall_async",
    "barrier_async",
    "join_async",
    "dtypes",
    "launcher_main",
    "barrier_plan",
    "__version__",
]

__version__: str

@final
class ReduceOp:
    Average: ReduceOp
    Sum: ReduceOp
    Min: ReduceOp
    Max: ReduceOp
    Product: ReduceOp
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __int__(self) -> int: ...
    def __hash__(self) -> int: ...

@final
class Buffer:
    """Bytes ferrovod allocated, exported through the buffer protocol (writable)."""
    def __len__(self) -> int: ...

_Output = tuple[Buffer, str, tuple[int, ...], list[int] | None]

@final
class Handle:
    """A request in flight. ``wait`` returns ``None`` for in-place collectives, else
    ``(buffer, dtype, shape, splits)``."""
    @property
    def name(self) -> str: ...
    def poll(self) -> bool: ...
    def wait(self) -> _Output | None: ...

def init() -> None: ...
def shutdown() -> None: ...
def is_initialized() -> bool: ...
def world() -> tuple[int, int, int, int, int, int, bool]: ...
def add_process_set(id: int, ranks: list[int]) -> None: ...
def remove_process_set(id: int) -> None: ...
def process_set_world(id: int) -> tuple[int, int]: ...
def allreduce_async_(tensor: Any, name: str, op: ReduceOp, process_set: int = 0) -> Handle: ...
def grouped_allreduce_async_(tensors: list[Any], names: list[str], op: ReduceOp, process_set: int = 0) -> list[Handle]: ...
def broadcast_async_(tensor: Any, name: str, root_rank: int, process_set: int = 0) -> Handle: ...
def allgather_async(tensor: Any, name: str, process_set: int = 0) -> Handle: ...
def reducescatter_async(tensor: Any, name: str, op: ReduceOp, process_set: int = 0) -> Handle: ...
def alltoall_async(tensor: Any, name: str, splits: list[int] | None = None, process_set: int = 0) -> Handle: ...
def barrier_async(name: str, process_set: int = 0) -> Handle: ...
def join_async() -> Handle: ...
def dtypes() -> list[tuple[str, str, int]]:
    """``(name, long_name, itemsize)`` of every dtype ferrovod carries, in wire order."""
def launcher_main(argv: list[str]) -> int: ...
def barrier_plan(
    job_id: str,
    rendezvous_host: str,
    rendezvous_port: int,
    task_index: int,
    tasks: list[tuple[str, list[int], int]],
) -> str: ...
