"""The torch.distributed equivalent of examples/hello.rs, for timing torchrun against ferrovod-run:
join with the gloo backend, barrier, a 4-element allreduce, check, print, exit."""
import os

import torch
import torch.distributed as dist


def main():
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    dist.barrier()
    v = torch.full((4,), float(rank + 1))
    dist.all_reduce(v)
    want = size * (size + 1) / 2
    if not torch.equal(v, torch.full((4,), want)):
        raise SystemExit(f"allreduce gave {v.tolist()}, expected {want}")
    print(f"hello from rank {rank} of {size} (local {os.environ.get('LOCAL_RANK')}): allreduce ok, sum = {want}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
