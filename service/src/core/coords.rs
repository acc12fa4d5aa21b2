//! Where an event came from, as one number, and the watermark rule.
//!
//! An event's `seq` is its source coordinate: the partition in the top 16 bits, the offset in
//! the low 48 ([`seq_of`]). Alert ids hash these, so they identify the matched records.

/// Bits of an event's `seq` that hold the offset.
pub const OFFSET_BITS: u32 = 48;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

/// An event's coordinate as one number: partition (16 bits) and offset (48 bits).
pub fn seq_of(partition: i32, offset: i64) -> u64 {
    ((partition as u64 & 0xffff) << OFFSET_BITS) | (offset as u64 & OFFSET_MASK)
}

/// The (partition, offset) of a `seq`.
pub fn coords(seq: u64) -> (i32, i64) {
    ((seq >> OFFSET_BITS) as i32, (seq & OFFSET_MASK) as i64)
}

/// A partition's watermark given its newest event time (`i64::MIN`: none yet) and the stream's
/// bounded out-of-orderness: newest - out-of-orderness - 1 ms. An event at or behind it is late.
pub fn watermark_of(max_ts: i64, out_of_orderness: i64) -> i64 {
    if max_ts == i64::MIN {
        return i64::MIN;
    }
    max_ts.saturating_sub(out_of_orderness).saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_round_trip() {
        for (p, o) in [(0, 0), (3, 12_345), (65_535, (1 << 48) - 1)] {
            assert_eq!(coords(seq_of(p, o)), (p, o));
        }
        // Partition 0 keeps the plain offset, so line-numbered exports keep their ids.
        assert_eq!(seq_of(0, 17), 17);
    }
}
