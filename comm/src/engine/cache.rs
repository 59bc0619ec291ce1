//! The response cache: tensors whose arguments every rank already agreed on, each in a numbered
//! slot. A rank whose submission matches a slot announces it with one bit instead of its name
//! and arguments, so a steady-state step negotiates with a bitset.
//!
//! Every rank applies the same inserts, evictions and uses in the same order (all of them
//! follow from the negotiation round every rank saw), so the caches stay identical without a
//! word about them on the wire.
//!
//! Every operation costs O(log capacity) at most, never a scan of the slots: names that never
//! come back (a barrier's, an unnamed tensor's, each numbered by its call) fill a full cache
//! and evict on every round of a steady loop.

use std::collections::{BTreeSet, HashMap};

use super::request::Meta;

pub(crate) struct Cache {
    slots: Vec<Option<Entry>>,
    by_name: HashMap<String, usize>,
    capacity: usize,
    /// The empty slots below `slots.len()`.
    free: BTreeSet<usize>,
    /// `(used, slot)` of every entry: the first is the one to evict.
    by_use: BTreeSet<(u64, usize)>,
}

struct Entry {
    name: String,
    meta: Meta,
    /// Round in which it last ran: the least recent is evicted when the cache is full.
    used: u64,
}

impl Cache {
    /// An empty cache of at most `capacity` slots (0: no caching).
    pub(crate) fn new(capacity: usize) -> Cache {
        Cache { slots: Vec::new(), by_name: HashMap::new(), capacity, free: BTreeSet::new(), by_use: BTreeSet::new() }
    }

    /// Number of slots (bits in a round's bitset).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot of `name` if it holds exactly `meta`.
    pub(crate) fn lookup(&self, name: &str, meta: &Meta) -> Option<usize> {
        let slot = *self.by_name.get(name)?;
        self.slots[slot].as_ref().filter(|e| e.meta == *meta).map(|_| slot)
    }

    /// The slot holding `name`, whatever its arguments.
    pub(crate) fn slot_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The name and arguments in `slot`.
    pub(crate) fn get(&self, slot: usize) -> Option<(&str, &Meta)> {
        self.slots.get(slot)?.as_ref().map(|e| (e.name.as_str(), &e.meta))
    }

    /// Forgets `name`.
    pub(crate) fn evict(&mut self, name: &str) {
        if let Some(slot) = self.by_name.remove(name) {
            if let Some(e) = self.slots[slot].take() {
                self.by_use.remove(&(e.used, slot));
            }
            self.free.insert(slot);
        }
    }

    /// Marks `slot` used in `round`.
    pub(crate) fn touch(&mut self, slot: usize, round: u64) {
        if let Some(Some(e)) = self.slots.get_mut(slot) {
            self.by_use.remove(&(e.used, slot));
            e.used = round;
            self.by_use.insert((round, slot));
        }
    }

    /// Remembers `name` with `meta`: in the lowest free slot, a new slot, or the least recently
    /// used one (lowest slot on ties) when full.
    pub(crate) fn insert(&mut self, name: &str, meta: &Meta, round: u64) {
        if self.capacity == 0 {
            return;
        }
        self.evict(name);
        let entry = Entry { name: name.to_string(), meta: meta.clone(), used: round };
        let slot = match self.free.pop_first() {
            Some(free) => free,
            None if self.slots.len() < self.capacity => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => {
                let (_, lru) =
                    self.by_use.pop_first().unwrap_or_else(|| unreachable!("a full cache of capacity > 0 has entries"));
                if let Some(old) = self.slots[lru].take() {
                    self.by_name.remove(&old.name);
                }
                lru
            }
        };
        self.by_use.insert((round, slot));
        self.by_name.insert(entry.name.clone(), slot);
        self.slots[slot] = Some(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::{DType, ReduceOp};
    use crate::engine::request::Collective;

    fn meta(n: u64) -> Meta {
        Meta {
            collective: Collective::Allreduce(ReduceOp::Sum),
            dtype: DType::F32,
            shape: vec![n],
            group: None,
            device: false,
        }
    }

    #[test]
    fn lookup_needs_the_same_arguments() {
        let mut c = Cache::new(4);
        c.insert("a", &meta(2), 0);
        assert_eq!(c.lookup("a", &meta(2)), Some(0));
        assert_eq!(c.lookup("a", &meta(3)), None);
        assert_eq!(c.slot_of("a"), Some(0));
        c.evict("a");
        assert_eq!(c.slot_of("a"), None);
        c.insert("b", &meta(1), 1);
        assert_eq!(c.lookup("b", &meta(1)), Some(0), "a freed slot is reused");
    }

    #[test]
    fn full_cache_evicts_least_recently_used() {
        let mut c = Cache::new(2);
        c.insert("a", &meta(1), 0);
        c.insert("b", &meta(1), 1);
        c.touch(0, 5);
        c.insert("c", &meta(1), 6);
        assert_eq!((c.slot_of("a"), c.slot_of("b"), c.slot_of("c")), (Some(0), None, Some(1)));
        assert_eq!(c.len(), 2);
        let mut off = Cache::new(0);
        off.insert("a", &meta(1), 0);
        assert_eq!(off.len(), 0);
    }

    /// The rule as first written, by scanning: lowest free slot, else a new one, else the least
    /// recently used (lowest slot on ties). Every rank must keep making the same choices.
    #[test]
    fn the_indexes_choose_as_a_scan_of_the_slots_would() {
        let mut c = Cache::new(16);
        // (name, used) per slot.
        let mut model: Vec<Option<(String, u64)>> = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for round in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let name = format!("t{}", x % 40);
            match (x >> 8) % 3 {
                0 => {
                    let at = model.iter().position(|e| e.as_ref().is_some_and(|(n, _)| *n == name));
                    if let Some(at) = at {
                        model[at] = None;
                    }
                    let slot = match model.iter().position(Option::is_none) {
                        Some(free) => free,
                        None if model.len() < 16 => {
                            model.push(None);
                            model.len() - 1
                        }
                        None => {
                            let used = |i: usize| model[i].as_ref().map_or(u64::MAX, |e| e.1);
                            (0..model.len()).min_by_key(|&i| (used(i), i)).unwrap()
                        }
                    };
                    model[slot] = Some((name.clone(), round));
                    c.insert(&name, &meta(1), round);
                }
                1 => {
                    let slot = (x >> 16) as usize % 16;
                    if let Some(Some(e)) = model.get_mut(slot) {
                        e.1 = round;
                    }
                    c.touch(slot, round);
                }
                _ => {
                    if let Some(e) = model.iter_mut().find(|e| e.as_ref().is_some_and(|(n, _)| *n == name)) {
                        *e = None;
                    }
                    c.evict(&name);
                }
            }
            assert_eq!(c.len(), model.len(), "round {round}");
            for (slot, want) in model.iter().enumerate() {
                assert_eq!(
                    c.get(slot).map(|(n, _)| n.to_string()),
                    want.as_ref().map(|(n, _)| n.clone()),
                    "round {round}"
                );
            }
        }
    }
}
