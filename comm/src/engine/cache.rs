//! The response cache: tensors whose arguments every rank already agreed on, each in a numbered
//! slot. A rank whose submission matches a slot announces it with one bit instead of its name
//! and arguments, so a steady-state step negotiates with a bitset.
//!
//! Every rank applies the same inserts, evictions and uses in the same order (all of them
//! follow from the negotiation round every rank saw), so the caches stay identical without a
//! word about them on the wire.

use std::collections::HashMap;

use super::request::Meta;

pub(crate) struct Cache {
    slots: Vec<Option<Entry>>,
    by_name: HashMap<String, usize>,
    capacity: usize,
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
        Cache { slots: Vec::new(), by_name: HashMap::new(), capacity }
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
            self.slots[slot] = None;
        }
    }

    /// Marks `slot` used in `round`.
    pub(crate) fn touch(&mut self, slot: usize, round: u64) {
        if let Some(Some(e)) = self.slots.get_mut(slot) {
            e.used = round;
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
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.slots.len() < self.capacity => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => {
                let (lru, _) = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| e.as_ref().map(|e| (i, e.used)))
                    .min_by_key(|&(i, used)| (used, i))
                    .unwrap_or_else(|| unreachable!("a full cache of capacity > 0 has entries"));
                if let Some(old) = self.slots[lru].take() {
                    self.by_name.remove(&old.name);
                }
                lru
            }
        };
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
}
