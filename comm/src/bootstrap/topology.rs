//! Where a rank sits: its host (by host name + boot id) and its peers on that host.

use super::PeerInfo;

/// Local and cross placement of one rank, as Horovod defines them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Index among the ranks on this host, in rank order.
    pub local_rank: usize,
    /// Number of ranks on this host.
    pub local_size: usize,
    /// Index among the ranks with the same local rank, in rank order.
    pub cross_rank: usize,
    /// Number of ranks with this local rank (the number of hosts, when all hosts have the same
    /// number of ranks).
    pub cross_size: usize,
    /// The ranks on this host, in order (this rank included).
    pub local_ranks: Vec<usize>,
    /// The ranks with this rank's local rank, in order (this rank included): one per host
    /// when the job is homogeneous.
    pub cross_ranks: Vec<usize>,
    /// Whether every host runs the same number of ranks (Horovod's `is_homogeneous`).
    pub homogeneous: bool,
}

impl Topology {
    /// Computes `rank`'s placement from every rank's record.
    pub fn compute(peers: &[PeerInfo], rank: usize) -> Topology {
        let host = |p: &PeerInfo| (p.hostname.clone(), p.boot_id.clone());
        let local_ranks: Vec<usize> = (0..peers.len()).filter(|&r| host(&peers[r]) == host(&peers[rank])).collect();
        let local_rank = local_ranks.iter().position(|&r| r == rank).unwrap_or(0);
        let local_rank_of = |r: usize| (0..=r).filter(|&q| host(&peers[q]) == host(&peers[r])).count() - 1;
        let same_local: Vec<usize> = (0..peers.len()).filter(|&r| local_rank_of(r) == local_rank).collect();
        let mut per_host = std::collections::HashMap::new();
        for p in peers {
            *per_host.entry(host(p)).or_insert(0usize) += 1;
        }
        let homogeneous = per_host.values().all(|&n| n == local_ranks.len());
        Topology {
            local_rank,
            local_size: local_ranks.len(),
            cross_rank: same_local.iter().position(|&r| r == rank).unwrap_or(0),
            cross_size: same_local.len(),
            local_ranks,
            cross_ranks: same_local,
            homogeneous,
        }
    }

    /// The placement of the only rank of a one-rank job.
    pub fn single() -> Topology {
        Topology {
            local_rank: 0,
            local_size: 1,
            cross_rank: 0,
            cross_size: 1,
            local_ranks: vec![0],
            cross_ranks: vec![0],
            homogeneous: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(host: &str, boot: &str) -> PeerInfo {
        PeerInfo {
            hostname: host.into(),
            boot_id: boot.into(),
            addresses: Vec::new(),
            pid: 1,
            pid_ns: String::new(),
            tuning: vec![],
        }
    }

    #[test]
    fn two_hosts_two_ranks_each() {
        let peers = [peer("a", "1"), peer("a", "1"), peer("b", "2"), peer("b", "2")];
        let t: Vec<_> = (0..4).map(|r| Topology::compute(&peers, r)).collect();
        assert_eq!(
            t.iter().map(|t| (t.local_rank, t.local_size, t.cross_rank, t.cross_size)).collect::<Vec<_>>(),
            vec![(0, 2, 0, 2), (1, 2, 0, 2), (0, 2, 1, 2), (1, 2, 1, 2)]
        );
        assert_eq!(t[3].local_ranks, vec![2, 3]);
        assert_eq!(t[3].cross_ranks, vec![1, 3]);
        assert!(t.iter().all(|t| t.homogeneous));
    }

    #[test]
    fn same_name_other_boot_is_another_host() {
        let peers = [peer("a", "1"), peer("a", "2"), peer("a", "1")];
        let t = Topology::compute(&peers, 2);
        assert_eq!((t.local_rank, t.local_size, t.cross_rank, t.cross_size), (1, 2, 0, 1));
        let t = Topology::compute(&peers, 1);
        assert_eq!((t.local_rank, t.local_size, t.cross_rank, t.cross_size), (0, 1, 1, 2));
        assert!(!t.homogeneous && !Topology::compute(&peers, 0).homogeneous, "2 ranks on one host, 1 on the other");
    }
}
