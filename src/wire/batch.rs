//! Packing entries into frames that fit a byte budget (a datagram's `max_datagram_size`, or a stream chunk).
//!
//! Guarantees: the size estimate is an upper bound of the encoded frame (checked against real encodings in the
//! tests), so a packed batch never exceeds its budget — except a single entry larger than the budget on its
//! own, which is packed alone; the sender then ships that frame on a stream instead of a datagram. The budget is
//! clamped to [`MAX_FRAME_BYTES`] and a frame never gets more than [`MAX_ENTRIES_PER_FRAME`] entries, so
//! whatever the state, every packed frame encodes and every receiver accepts it.

use super::frame::{HEADER_LEN, MAX_ENTRIES_PER_FRAME, MAX_FRAME_BYTES};
use super::messages::{Entry, OriginGroup, OriginKind};

/// Upper bound of a batch's bytes outside its groups: the header plus the fixed fields of the largest message
/// carrying groups ([`super::DeltaBatch`]: sender, sequence, timestamp, group vector) plus slack.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + 32 + 16;
/// Upper bound of one group's bytes outside its entries (origin, kind, entry vector).
const GROUP_OVERHEAD: usize = 24;

/// Upper bound of the archived size of an entry with a key of `key_len` bytes.
pub fn entry_size(key_len: usize) -> usize {
    // key (8 inline: pointer + length, or the bytes themselves when short) + window (14: count, unit,
    // alignment, phase) + epoch (8) + value (8), plus the key bytes out of line.
    38 + key_len
}

/// Accumulates `(origin, entry)` pairs and hands out groups for one frame at a time.
#[derive(Debug)]
pub struct BatchPacker {
    budget: usize,
    groups: Vec<OriginGroup>,
    size: usize,
    entries: usize,
}

impl BatchPacker {
    /// A packer for frames of at most `budget` bytes.
    pub fn new(budget: usize) -> BatchPacker {
        BatchPacker {
            budget: budget.min(MAX_FRAME_BYTES),
            groups: Vec::new(),
            size: FRAME_OVERHEAD,
            entries: 0,
        }
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Adds an entry of `origin`. When it does not fit in the frame being filled, that frame's groups are
    /// returned and the entry starts the next one.
    pub fn push(&mut self, origin: u64, entry: Entry) -> Option<Vec<OriginGroup>> {
        self.push_kind(origin, OriginKind::Replica, entry)
    }

    /// [`BatchPacker::push`] for a group of another kind (floors).
    pub fn push_kind(
        &mut self,
        origin: u64,
        kind: OriginKind,
        entry: Entry,
    ) -> Option<Vec<OriginGroup>> {
        let same = |g: &OriginGroup| g.origin == origin && g.kind == kind;
        let new_group = self.groups.last().is_none_or(|g| !same(g));
        let added = entry_size(entry.key.len()) + if new_group { GROUP_OVERHEAD } else { 0 };
        let full = if !self.groups.is_empty()
            && (self.size + added > self.budget || self.entries >= MAX_ENTRIES_PER_FRAME)
        {
            Some(self.take())
        } else {
            None
        };
        let new_group = self.groups.last().is_none_or(|g| !same(g));
        if new_group {
            self.groups.push(OriginGroup {
                origin,
                kind,
                entries: Vec::new(),
            });
            self.size += GROUP_OVERHEAD;
        }
        self.size += entry_size(entry.key.len());
        self.entries += 1;
        if let Some(group) = self.groups.last_mut() {
            group.entries.push(entry);
        }
        full
    }

    /// The groups of the frame being filled, if any.
    pub fn finish(&mut self) -> Option<Vec<OriginGroup>> {
        (!self.groups.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Vec<OriginGroup> {
        self.size = FRAME_OVERHEAD;
        self.entries = 0;
        std::mem::take(&mut self.groups)
    }
}
