//! Ranks and environments: where every process of a plan sits, and what it is told.
//!
//! Ranks are contiguous per task, tasks in index order. Local and cross placement follow
//! Horovod: processes with the same host string share a host; `local_rank` is the index among
//! them in rank order; `cross_rank` is the index among all processes with the same local rank,
//! `cross_size` their number. (The comm crate recomputes both at rendezvous from host name and
//! boot id; these values let scripts read them before joining.)
//!
//! GPUs follow the convention Horovod and torchrun scripts rely on,
//! `torch.cuda.set_device(local_rank)`: every process of a host sees the GPUs of all the
//! host's processes, listed in local-rank order, so `cuda:<local_rank>` is its own GPU and no
//! other GPU of the machine is visible. A host whose processes do not all have a GPU (no plan
//! makes one, but a plan is input) shows each GPU process its own GPU alone.

use std::collections::HashMap;

use ferrovod::config;

use crate::plan::Plan;

/// One process of the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Global rank.
    pub rank: usize,
    /// Number of processes in the job.
    pub size: usize,
    /// Index among the processes on the same host.
    pub local_rank: usize,
    /// Number of processes on the same host.
    pub local_size: usize,
    /// Index among the processes with the same local rank.
    pub cross_rank: usize,
    /// Number of processes with the same local rank.
    pub cross_size: usize,
    /// Index of the task that starts it.
    pub task: usize,
    /// That task's host.
    pub host: String,
    /// Its GPU, on GPU tasks.
    pub gpu: Option<u32>,
    /// The GPUs it sees (`CUDA_VISIBLE_DEVICES`), in order: its host's, by local rank.
    pub visible_gpus: Vec<u32>,
}

/// Every process of `plan`, in rank order.
pub fn place(plan: &Plan) -> Vec<Placement> {
    let size = plan.world_size();
    let mut tasks: Vec<_> = plan.tasks.iter().collect();
    tasks.sort_by_key(|t| t.index);
    let mut out = Vec::with_capacity(size);
    for t in tasks {
        for i in 0..t.processes() {
            out.push(Placement {
                rank: out.len(),
                size,
                local_rank: 0,
                local_size: 0,
                cross_rank: 0,
                cross_size: 0,
                task: t.index,
                host: t.host.clone(),
                gpu: t.gpus.get(i).copied(),
                visible_gpus: Vec::new(),
            });
        }
    }
    let mut per_host: HashMap<&str, usize> = HashMap::new();
    let local: Vec<usize> = out
        .iter()
        .map(|p| {
            let n = per_host.entry(p.host.as_str()).or_insert(0);
            *n += 1;
            *n - 1
        })
        .collect();
    let mut per_local: HashMap<usize, usize> = HashMap::new();
    let cross: Vec<usize> = local
        .iter()
        .map(|&l| {
            let n = per_local.entry(l).or_insert(0);
            *n += 1;
            *n - 1
        })
        .collect();
    let local_sizes: Vec<usize> = out.iter().map(|p| per_host.get(p.host.as_str()).copied().unwrap_or(1)).collect();
    // Each host's GPUs in rank order (which is local-rank order), or None where a process of
    // that host has none.
    let mut host_gpus: HashMap<&str, Option<Vec<u32>>> = HashMap::new();
    for p in &out {
        let list = host_gpus.entry(p.host.as_str()).or_insert_with(|| Some(Vec::new()));
        match (list.as_mut(), p.gpu) {
            (Some(l), Some(g)) => l.push(g),
            _ => *list = None,
        }
    }
    let visible: Vec<Vec<u32>> = out
        .iter()
        .map(|p| match &host_gpus[p.host.as_str()] {
            Some(all) => all.clone(),
            None => p.gpu.into_iter().collect(),
        })
        .collect();
    for (i, p) in out.iter_mut().enumerate() {
        p.local_rank = local[i];
        p.local_size = local_sizes[i];
        p.visible_gpus = visible[i].clone();
        p.cross_rank = cross[i];
        p.cross_size = per_local.get(&local[i]).copied().unwrap_or(1);
    }
    out
}

/// What every process of a job shares. Its `Debug` output leaves the secret out.
#[derive(Clone)]
pub struct JobEnv {
    /// `host:port` of the ferrovod store.
    pub rendezvous: String,
    /// The job secret (hex text).
    pub secret: String,
    /// Address of task 0's host, for torch.distributed.
    pub master_addr: String,
    /// A port free on task 0's host when the job started, for torch.distributed's own store.
    pub master_port: u16,
    /// Set `CUDA_VISIBLE_DEVICES` (to its host's GPUs in local-rank order, or empty on CPU
    /// tasks); when false it is left as the launcher inherited it.
    pub pin_gpus: bool,
}

/// Variables removed from every child's environment: `FERROVOD_HOST_STORE` would make rank 0
/// serve a second store on the launcher's address.
pub const ENV_REMOVED: &[&str] = &[config::HOST_STORE.name];

impl std::fmt::Debug for JobEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEnv")
            .field("rendezvous", &self.rendezvous)
            .field("secret", &"<redacted>")
            .field("master_addr", &self.master_addr)
            .field("master_port", &self.master_port)
            .field("pin_gpus", &self.pin_gpus)
            .finish()
    }
}

/// The environment of the process at `p`, as listed in DESIGN.md.
pub fn child_env(p: &Placement, job: &JobEnv) -> Vec<(String, String)> {
    let mut env = vec![
        (config::RANK.name.to_string(), p.rank.to_string()),
        (config::SIZE.name.to_string(), p.size.to_string()),
        (config::LOCAL_RANK.name.to_string(), p.local_rank.to_string()),
        (config::LOCAL_SIZE.name.to_string(), p.local_size.to_string()),
        (config::CROSS_RANK.name.to_string(), p.cross_rank.to_string()),
        (config::CROSS_SIZE.name.to_string(), p.cross_size.to_string()),
        (config::RENDEZVOUS.name.to_string(), job.rendezvous.clone()),
        (config::SECRET.name.to_string(), job.secret.clone()),
        ("RANK".to_string(), p.rank.to_string()),
        ("WORLD_SIZE".to_string(), p.size.to_string()),
        ("LOCAL_RANK".to_string(), p.local_rank.to_string()),
        ("LOCAL_WORLD_SIZE".to_string(), p.local_size.to_string()),
        ("MASTER_ADDR".to_string(), job.master_addr.clone()),
        ("MASTER_PORT".to_string(), job.master_port.to_string()),
        // horovodrun's names (its Gloo mode), which Horovod scripts and tests read.
        ("HOROVOD_RANK".to_string(), p.rank.to_string()),
        ("HOROVOD_SIZE".to_string(), p.size.to_string()),
        ("HOROVOD_LOCAL_RANK".to_string(), p.local_rank.to_string()),
        ("HOROVOD_LOCAL_SIZE".to_string(), p.local_size.to_string()),
        ("HOROVOD_CROSS_RANK".to_string(), p.cross_rank.to_string()),
        ("HOROVOD_CROSS_SIZE".to_string(), p.cross_size.to_string()),
    ];
    if job.pin_gpus {
        let gpus: Vec<String> = p.visible_gpus.iter().map(u32::to_string).collect();
        env.push(("CUDA_VISIBLE_DEVICES".to_string(), gpus.join(",")));
    }
    env
}
