//! The staged path (device memory through host buffers and the host backend) with host memory
//! standing in for a device ([`HostStandIn`]), ranks as threads: every collective, dtype and
//! op, element by element against the serial reference, with pieces smaller than the buffers
//! so that the pipeline runs over many of them. The CUDA copier is checked on a GPU machine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrovod::algorithms::even_blocks;
use ferrovod::backend::staged::device::{DeviceCopies, HostStandIn};
use ferrovod::backend::staged::{MakeCopies, OnDevices, StagedBackend};
use ferrovod::config::Tuning;
use ferrovod::memory::{DevicePtr, Memory, MemoryRef};
use ferrovod::{Collective, Communicator, DType, ReduceOp};
use ferrovod_tests::{Aligned, check, expected_allreduce, in_threads, input};

/// Pieces of 12 KiB: 4093 elements of 8 bytes take three, 300,000 f32 a hundred.
const PIECE: usize = 12 << 10;

/// `buf`, as the stand-in's device 0 sees it.
fn on_device(buf: &mut [u8]) -> Memory<'_> {
    let ptr = DevicePtr { ptr: buf.as_mut_ptr() as u64, len: buf.len(), device: 0, stream: 0, ready: 0 };
    // SAFETY: `buf` is host memory borrowed for the returned lifetime, which the stand-in reads
    // as its device memory.
    unsafe { Memory::device(ptr) }
}

fn on_device_ref(buf: &[u8]) -> MemoryRef<'_> {
    let ptr = DevicePtr { ptr: buf.as_ptr() as u64, len: buf.len(), device: 0, stream: 0, ready: 0 };
    // SAFETY: as in `on_device`; the staged path only reads an alltoall's input.
    unsafe { MemoryRef::device(ptr) }
}

fn world(n: usize, body: impl Fn(&mut Communicator) -> Result<(), String> + Sync) {
    let tuning = Tuning { timeout: Duration::from_secs(60), ..Tuning::default() };
    let staged = |comm: &mut Communicator| {
        // SAFETY: every device pointer these tests make is host memory (`on_device`).
        let copies = unsafe { HostStandIn::new(0) };
        comm.register_backend(Box::new(StagedBackend::new(Box::new(copies), tuning.clone(), PIECE)));
    };
    in_threads(n, tuning.clone(), staged, body);
}

fn staged(comm: &Communicator, what: &str) -> Result<(), String> {
    match comm.last_algorithm() {
        "staged" => Ok(()),
        other => Err(format!("{what}: ran {other:?}, not the staged path")),
    }
}

#[test]
fn allreduce_every_dtype_and_op_in_pipelined_pieces() {
    for n in [1, 2, 3, 5] {
        world(n, |comm| {
            let r = comm.rank();
            for dtype in DType::ALL {
                for op in ReduceOp::ALL.into_iter().filter(|&op| Collective::Allreduce(op).refuses(dtype).is_none()) {
                    for count in [0, 1, 7, 4093, 300_000 / dtype.size()] {
                        let what = format!("allreduce {dtype} {op} n={n} count={count}");
                        let mut buf = input(dtype, op, r, count);
                        comm.allreduce_bytes(on_device(buf.bytes_mut()), dtype, op)
                            .map_err(|e| format!("{what}: {e}"))?;
                        check(&what, dtype, buf.bytes(), expected_allreduce(dtype, op, n, count).bytes())?;
                        staged(comm, &what)?;
                    }
                }
            }
            Ok(())
        });
    }
}

#[test]
fn broadcast_reducescatter_and_alltoall_on_device_memory() {
    for n in [1, 2, 3, 5] {
        world(n, |comm| {
            let r = comm.rank();
            for dtype in [DType::F32, DType::I8, DType::F64, DType::BF16] {
                let op = ReduceOp::Sum;
                let e = dtype.size();
                for count in [0, 7, 50_000] {
                    for root in [0, n - 1] {
                        let what = format!("broadcast {dtype} n={n} count={count} root={root}");
                        let want = input(dtype, op, root, count);
                        let mut buf =
                            if r == root { input(dtype, op, root, count) } else { Aligned::zeroed(count * e) };
                        comm.broadcast_bytes(on_device(buf.bytes_mut()), dtype, root)
                            .map_err(|e| format!("{what}: {e}"))?;
                        check(&what, dtype, buf.bytes(), want.bytes())?;
                        staged(comm, &what)?;
                    }
                    let what = format!("reducescatter {dtype} n={n} count={count}");
                    let mut buf = input(dtype, op, r, count);
                    let blocks = even_blocks(count, n, e);
                    comm.reducescatter_bytes(on_device(buf.bytes_mut()), &blocks, dtype, op)
                        .map_err(|e| format!("{what}: {e}"))?;
                    let want = expected_allreduce(dtype, op, n, count);
                    check(&what, dtype, &buf.bytes()[blocks[r].clone()], &want.bytes()[blocks[r].clone()])?;
                    // Alltoall: rank r sends r + i + 1 elements to rank i (its input's first ones).
                    let what = format!("alltoall {dtype} n={n}");
                    let send_counts: Vec<usize> = (0..n).map(|i| r + i + 1).collect();
                    let recv_counts: Vec<usize> = (0..n).map(|i| i + r + 1).collect();
                    let send = input(dtype, op, r, send_counts.iter().sum());
                    let mut recv = Aligned::zeroed(recv_counts.iter().sum::<usize>() * e);
                    comm.alltoall_into(
                        on_device_ref(send.bytes()),
                        &send_counts,
                        on_device(recv.bytes_mut()),
                        &recv_counts,
                        dtype,
                    )
                    .map_err(|e| format!("{what}: {e}"))?;
                    let mut at = 0;
                    for (i, &c) in recv_counts.iter().enumerate() {
                        // Rank i sent its elements from offset Σ_{j<r} (i + j + 1).
                        let from: usize = (0..r).map(|j| i + j + 1).sum();
                        let theirs = input(dtype, op, i, from + c);
                        check(&what, dtype, &recv.bytes()[at..at + c * e], &theirs.bytes()[from * e..(from + c) * e])?;
                        at += c * e;
                    }
                }
            }
            Ok(())
        });
    }
}

#[test]
fn without_cuda_another_devices_memory_is_an_error_naming_what_is_missing() {
    if ferrovod::cuda::driver().is_ok() {
        eprintln!("SKIPPED: this machine has CUDA's driver library (device 1 would be a real GPU)");
        return;
    }
    world(2, |comm| {
        let mut buf = vec![0u8; 64];
        let ptr = DevicePtr { ptr: buf.as_mut_ptr() as u64, len: buf.len(), device: 1, stream: 0, ready: 0 };
        // SAFETY: never dereferenced: the stand-in serves device 0 only, and CUDA cannot load.
        let e = comm.allreduce_bytes(unsafe { Memory::device(ptr) }, DType::F32, ReduceOp::Sum).unwrap_err();
        let text = e.to_string();
        match text.contains("staged backend: cuda:1: ") && text.contains("libcuda.so.1") {
            true => Ok(()),
            false => Err(format!("unexpected error: {e}")),
        }
    });
}

#[test]
fn the_staged_path_of_each_device_is_made_once_when_its_memory_first_arrives() {
    let made = Arc::new(Mutex::new(Vec::new()));
    let tuning = Tuning { timeout: Duration::from_secs(60), staged_piece: PIECE, ..Tuning::default() };
    let register = |comm: &mut Communicator| {
        let made = made.clone();
        let make: MakeCopies = Box::new(move |d, _tuning| {
            made.lock().unwrap().push(d);
            match d {
                // SAFETY: every device pointer below is host memory.
                0 | 2 => Ok(Box::new(unsafe { HostStandIn::new(d) }) as Box<dyn DeviceCopies>),
                _ => Err(format!("no device {d} in this test")),
            }
        });
        comm.register_backend(Box::new(OnDevices::new(make, tuning.clone())));
    };
    in_threads(2, tuning.clone(), register, |comm| {
        let n = comm.size();
        for (device, rounds) in [(0, 2), (2, 1)] {
            for round in 0..rounds {
                let what = format!("device {device} round {round}");
                let mut buf = input(DType::F32, ReduceOp::Sum, comm.rank(), 5000);
                let b = buf.bytes_mut();
                let ptr = DevicePtr { ptr: b.as_mut_ptr() as u64, len: b.len(), device, stream: 0, ready: 0 };
                // SAFETY: host memory, borrowed for the call, which the stand-in reads.
                comm.allreduce_bytes(unsafe { Memory::device(ptr) }, DType::F32, ReduceOp::Sum)
                    .map_err(|e| format!("{what}: {e}"))?;
                check(&what, DType::F32, buf.bytes(), expected_allreduce(DType::F32, ReduceOp::Sum, n, 5000).bytes())?;
                staged(comm, &what)?;
            }
        }
        let mut buf = [0u8; 16];
        let ptr = DevicePtr { ptr: buf.as_mut_ptr() as u64, len: 16, device: 5, stream: 0, ready: 0 };
        // SAFETY: never dereferenced: the factory refuses device 5.
        let e = comm.allreduce_bytes(unsafe { Memory::device(ptr) }, DType::F32, ReduceOp::Sum).unwrap_err();
        match e.to_string().contains("cuda:5: no device 5 in this test") {
            true => Ok(()),
            false => Err(format!("unexpected error: {e}")),
        }
    });
    // Once per device and rank: devices 0, 2 and 5 on each of the two ranks.
    let mut made = made.lock().unwrap().clone();
    made.sort();
    assert_eq!(made, [0, 0, 2, 2, 5, 5]);
}

/// `FERROVOD_GPU_BACKEND=nccl` where NCCL cannot run (here: no NCCL or no GPU) is an error on
/// every rank, from the agreement round, naming why; `auto` takes the staged path instead.
#[test]
fn nccl_required_where_it_cannot_run_is_an_error_on_every_rank() {
    use ferrovod::config::GpuBackend;
    if ferrovod::cuda::driver().is_ok() {
        eprintln!("SKIPPED: this machine has CUDA's driver library (device 0 would be a real GPU)");
        return;
    }
    for (mode, want) in
        [(GpuBackend::Nccl, "FERROVOD_GPU_BACKEND=nccl, but "), (GpuBackend::Auto, "staged backend: cuda:0: ")]
    {
        let tuning = Tuning { timeout: Duration::from_secs(30), gpu_backend: mode, ..Tuning::default() };
        in_threads(
            3,
            tuning,
            |_| {},
            |comm| {
                let mut buf = vec![0u8; 64];
                let ptr = DevicePtr { ptr: buf.as_mut_ptr() as u64, len: buf.len(), device: 0, stream: 0, ready: 0 };
                // SAFETY: never dereferenced: neither NCCL nor CUDA can run here.
                let e = comm.allreduce_bytes(unsafe { Memory::device(ptr) }, DType::F32, ReduceOp::Sum).unwrap_err();
                let text = e.to_string();
                match text.contains(want) && (text.contains("rank 0") || text.contains("libcuda.so.1")) {
                    true => Ok(()),
                    false => Err(format!("{mode:?}: unexpected error: {e}")),
                }
            },
        );
    }
}
