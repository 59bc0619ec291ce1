//! ferrovod-tch with ranks as threads, each with its own engine (or communicator) over the
//! in-process transport: tensor collectives in place, every reducible kind, allgather of ragged
//! first dimensions, and the optimizer's refusals and mismatches as errors on every rank.
//! (Real processes under ferrovod-run: examples/tch_train's tests.)

use std::sync::Arc;
use std::time::Duration;

use ferrovod::config::{EngineSettings, Tuning};
use ferrovod::transport::mem::MemTransport;
use ferrovod::{Communicator, Engine, Error, ReduceOp};
use ferrovod_tch::{Compression, DistributedOptimizer, allgather, allgather_async, allreduce, allreduce_async};
use ferrovod_tch::{broadcast, broadcast_async, broadcast_parameters, variables};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn tuning() -> Tuning {
    Tuning { timeout: Duration::from_secs(30), ..Tuning::default() }
}

/// Runs `body(rank, communicator)` on `n` ranks (threads) over the in-process transport.
fn ranks<R: Send>(n: usize, body: impl Fn(usize, Communicator) -> R + Sync) -> Vec<R> {
    let transports = MemTransport::world(n, Duration::from_secs(30));
    std::thread::scope(|s| {
        let handles: Vec<_> = transports
            .into_iter()
            .enumerate()
            .map(|(rank, t)| {
                let body = &body;
                s.spawn(move || body(rank, Communicator::from_transport(Box::new(t), tuning())))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    })
}

/// Runs `body(rank, comm)` on `n` ranks.
fn comms<R: Send>(n: usize, body: impl Fn(usize, &mut Communicator) -> R + Sync) -> Vec<R> {
    ranks(n, |rank, mut comm| body(rank, &mut comm))
}

/// Runs `body(rank, engine)` on `n` ranks, each with its own engine.
fn engines<R: Send>(n: usize, body: impl Fn(usize, &Arc<Engine>) -> R + Sync) -> Vec<R> {
    let settings = EngineSettings { stall_timeout: Some(Duration::from_secs(20)), ..EngineSettings::default() };
    ranks(n, |rank, comm| {
        let engine = Arc::new(Engine::start(comm, &settings).expect("engine starts"));
        let r = body(rank, &engine);
        let _ = engine.shutdown();
        r
    })
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

#[test]
fn a_contiguous_tensor_is_reduced_where_it_lies_and_a_strided_one_through_a_copy() {
    comms(3, |rank, comm| {
        let mut t = Tensor::arange(6, (Kind::Float, CPU)).reshape([2, 3]) + rank as f64;
        let before = t.data_ptr();
        allreduce(comm, &mut t, ReduceOp::Sum).unwrap();
        assert_eq!(t.data_ptr(), before, "the result did not land in the tensor's own memory");
        assert_eq!(values(&t), [3.0, 6.0, 9.0, 12.0, 15.0, 18.0]);

        // A transposed view: not contiguous, so it goes through a copy and comes back.
        let base = Tensor::arange(6, (Kind::Float, CPU)).reshape([2, 3]) * (rank + 1) as f64;
        let mut view = base.tr();
        assert!(!view.is_contiguous());
        allreduce(comm, &mut view, ReduceOp::Average).unwrap();
        assert_eq!(values(&base), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0], "the base tensor did not get the average");

        // A strided leaf that requires grad (a model's transposed weight) takes the result too.
        let leaf = (Tensor::ones([2, 3], (Kind::Float, CPU)) * (rank + 1) as f64).set_requires_grad(true);
        let mut view = leaf.tr();
        allreduce(comm, &mut view, ReduceOp::Sum).unwrap();
        assert_eq!(values(&leaf), [6.0; 6]);
    });
}

#[test]
fn every_reducible_kind_comes_back_in_its_kind() {
    let kinds = [
        Kind::Uint8,
        Kind::Int8,
        Kind::Int16,
        Kind::Int,
        Kind::Int64,
        Kind::Half,
        Kind::BFloat16,
        Kind::Float,
        Kind::Double,
    ];
    engines(2, |rank, engine| {
        for (i, kind) in kinds.into_iter().enumerate() {
            let t = (Tensor::arange(5, (Kind::Float, CPU)) + rank as f64).to_kind(kind);
            let out = allreduce_async(engine, &format!("t{i}"), &t, ReduceOp::Sum).unwrap().wait().unwrap();
            assert_eq!(out.kind(), kind);
            assert_eq!(values(&out), [1.0, 3.0, 5.0, 7.0, 9.0], "{kind:?}");
        }
    });
}

#[test]
fn broadcast_and_ragged_allgather_on_engine_and_communicator() {
    engines(2, |rank, engine| {
        let t = Tensor::full([3], rank as f64 + 1.0, (Kind::Float, CPU));
        let got = broadcast_async(engine, "b", &t, 1).unwrap().wait().unwrap();
        assert_eq!(values(&got), [2.0; 3]);
        assert_eq!(values(&t), [2.0; 3], "the broadcast did not land in the submitted tensor");

        // Rank r contributes r + 1 rows of 2.
        let rows = Tensor::full([rank as i64 + 1, 2], rank as f64, (Kind::Double, CPU));
        let all = allgather_async(engine, "g", &rows).unwrap().wait().unwrap();
        assert_eq!(all.size(), [3, 2]);
        assert_eq!(values(&all), [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    });
    comms(2, |rank, comm| {
        let mut t = Tensor::full([2], rank as f64 * 5.0, (Kind::Int64, CPU));
        broadcast(comm, &mut t, 1).unwrap();
        assert_eq!(values(&t), [5.0, 5.0]);
        let rows = Tensor::full([rank as i64 + 2, 3], rank as f64, (Kind::Float, CPU));
        let all = allgather(comm, &rows).unwrap();
        assert_eq!(all.size(), [5, 3]);
        assert_eq!(values(&all.sum_dim_intlist(1, false, Kind::Double)), [0.0, 0.0, 3.0, 3.0, 3.0]);
    });
}

#[test]
fn allgather_rows_of_different_widths_fail_on_every_rank() {
    let errors = comms(2, |rank, comm| {
        let rows = Tensor::zeros([2, 3 + rank as i64], (Kind::Float, CPU));
        allgather(comm, &rows).unwrap_err().to_string()
    });
    assert!(errors[0].contains("rank 0") && errors[0].contains("on rank 1"), "{}", errors[0]);
    assert!(errors[1].contains("rank 1") && errors[1].contains("on rank 0"), "{}", errors[1]);
}

#[test]
fn tensors_ferrovod_cannot_move_are_errors_not_panics() {
    comms(1, |_, comm| {
        let mut complex = Tensor::zeros([2], (Kind::ComplexFloat, CPU));
        let e = allreduce(comm, &mut complex, ReduceOp::Sum).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("ComplexFloat"), "{e}");
        let mut undefined = Tensor::new();
        let e = allreduce(comm, &mut undefined, ReduceOp::Sum).unwrap_err();
        assert!(e.to_string().contains("undefined"), "{e}");
    });
}

fn linear(vs: &nn::VarStore, out: i64) -> nn::Linear {
    nn::linear(vs.root() / "fc", 4, out, Default::default())
}

/// A fresh 4 → `out` linear layer "fc", and a distributed SGD on it.
fn trained(engine: &Arc<Engine>, out: i64) -> (nn::VarStore, nn::Linear, DistributedOptimizer) {
    let vs = nn::VarStore::new(CPU);
    let model = linear(&vs, out);
    let sgd = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let opt = DistributedOptimizer::new(sgd, &vs, engine.clone()).unwrap();
    (vs, model, opt)
}

/// The sum of the layer's outputs on `rows` rows of ones.
fn loss_on_ones(model: &nn::Linear, rows: i64) -> Tensor {
    model.forward(&Tensor::ones([rows, 4], (Kind::Float, CPU))).sum(Kind::Float)
}

#[test]
fn a_variable_whose_shape_differs_between_ranks_fails_the_step_on_every_rank() {
    let errors = engines(2, |rank, engine| {
        let (_vs, model, mut opt) = trained(engine, 2 + rank as i64);
        opt.backward(&loss_on_ones(&model, 3)).unwrap();
        opt.step().unwrap_err()
    });
    for (rank, e) in errors.iter().enumerate() {
        let text = e.to_string();
        assert!(matches!(e, Error::TensorMismatch { .. }), "rank {rank}: {text}");
        assert!(text.contains(&format!("rank {rank}:")) && text.contains("fc.") && text.contains("shape"), "{text}");
    }
}

#[test]
fn gradients_average_over_ranks_and_a_gradient_one_rank_lacks_counts_as_zeros() {
    engines(2, |rank, engine| {
        let vs = nn::VarStore::new(CPU);
        let used = vs.root().zeros("used", &[2]);
        let _sometimes = vs.root().zeros("sometimes", &[2]);
        let sometimes = vs.variables()["sometimes"].shallow_clone();
        broadcast_parameters(engine, &vs, 0).unwrap();
        let sgd = nn::Sgd::default().build(&vs, 1.0).unwrap();
        let mut opt = DistributedOptimizer::new(sgd, &vs, engine.clone()).unwrap();
        // d(loss)/d(used) = rank + 1 on every element; only rank 0 touches `sometimes` (gradient 4).
        let mut loss = (&used * (rank as f64 + 1.0)).sum(Kind::Float);
        if rank == 0 {
            loss += (&sometimes * 4.0).sum(Kind::Float);
        }
        opt.backward_step(&loss).unwrap();
        assert_eq!(values(&used), [-1.5, -1.5], "rank {rank}: not the average of 1 and 2");
        if rank == 0 {
            assert_eq!(values(&sometimes), [-2.0, -2.0], "the other rank's missing gradient did not count as zero");
        }
    });
}

#[test]
fn gradients_may_not_be_touched_while_the_engine_reduces_them() {
    engines(1, |_, engine| {
        let (_vs, model, mut opt) = trained(engine, 1);
        let loss = || loss_on_ones(&model, 1);
        opt.backward(&loss()).unwrap();
        let e = opt.backward(&loss()).unwrap_err().to_string();
        assert!(e.contains("call step()"), "{e}");
        let e = opt.zero_grad().unwrap_err().to_string();
        assert!(e.contains("call step()"), "{e}");
        opt.step().unwrap();
        opt.zero_grad().unwrap();
    });
}

#[test]
fn bad_optimizer_settings_are_errors() {
    engines(1, |_, engine| {
        let vs = nn::VarStore::new(CPU);
        let _ = linear(&vs, 1);
        let opt =
            || DistributedOptimizer::new(nn::Sgd::default().build(&vs, 0.1).unwrap(), &vs, engine.clone()).unwrap();
        let e = opt().backward_passes_per_step(0).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = opt().op(ReduceOp::Max).unwrap_err().to_string();
        assert!(e.contains("averaged or summed"), "{e}");
        let _ = opt().compression(Compression::Fp16).op(ReduceOp::Sum).unwrap();
    });
}

#[test]
fn a_plain_loss_backward_hands_each_gradient_to_the_engine_as_autograd_accumulates_it() {
    engines(1, |_, engine| {
        let (vs, model, mut opt) = trained(engine, 1);
        // Not opt.backward: only the hooks can have submitted the gradients.
        loss_on_ones(&model, 1).backward();
        let e = opt.zero_grad().unwrap_err().to_string();
        assert!(e.contains("2 gradients are being reduced"), "{e}");
        opt.step().unwrap();
        // A second optimizer on the same variables would take over their hooks: refused.
        let sgd = nn::Sgd::default().build(&vs, 0.1).unwrap();
        let e = DistributedOptimizer::new(sgd, &vs, engine.clone()).unwrap_err().to_string();
        assert!(e.contains("already has a post-accumulate-grad hook"), "{e}");
        // Once the first is dropped, its hooks are gone and a new one may hook the variables.
        drop(opt);
        let sgd = nn::Sgd::default().build(&vs, 0.1).unwrap();
        DistributedOptimizer::new(sgd, &vs, engine.clone()).unwrap();
    });
}

#[test]
fn a_backward_pass_into_gradients_the_engine_holds_fails_before_touching_them() {
    engines(1, |_, engine| {
        let (vs, model, mut opt) = trained(engine, 1);
        let loss = || loss_on_ones(&model, 1);
        loss().backward();
        let e = opt.backward(&loss()).unwrap_err().to_string();
        assert!(e.contains("call step()"), "{e}");
        // Past the optimizer's back: autograd itself refuses, before it accumulates anything.
        let e = loss().f_backward().unwrap_err().to_string();
        assert!(e.contains("being reduced by the engine"), "{e}");
        opt.step().unwrap();
        // d(sum(W x + b))/dW = x = ones, once: the refused pass added nothing.
        let grads: Vec<f64> = vs.variables().values().flat_map(|v| values(&v.grad())).collect();
        assert_eq!(grads, [1.0; 5]);
    });
}

#[test]
fn a_libtorch_failure_is_an_error_with_its_message_and_without_its_cpp_stack() {
    engines(1, |_, engine| {
        let (_vs, _model, mut opt) = trained(engine, 1);
        let constant = Tensor::ones([1], (Kind::Float, CPU)).sum(Kind::Float);
        let e = opt.backward(&constant).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Backend { backend: "tch", .. }), "{text}");
        assert!(text.contains("does not require grad"), "{text}");
        assert!(!text.contains("Exception raised from") && !text.contains("frame #"), "{text}");
    });
}

#[test]
fn zero_grad_zeroes_gradients_where_they_lie() {
    engines(1, |_, engine| {
        let (vs, model, mut opt) = trained(engine, 1);
        let loss = || loss_on_ones(&model, 1);
        opt.backward_step(&loss()).unwrap();
        // By name (`VarStore::variables` is a HashMap, its order differs from call to call).
        let grads = || variables(&vs).into_iter().map(|(_, v)| v.grad()).collect::<Vec<_>>();
        let before: Vec<_> = grads().iter().map(|g| g.data_ptr() as usize).collect();
        opt.zero_grad().unwrap();
        let after = grads();
        assert!(after.iter().all(|g| g.defined() && values(g).iter().all(|&v| v == 0.0)));
        assert_eq!(after.iter().map(|g| g.data_ptr() as usize).collect::<Vec<_>>(), before, "the gradients moved");
    });
}
