//! Dewey version numbers of partial matches (FlinkCEP's `DeweyNumber`): they tell which shared
//! buffer edges belong to which run, so that runs sharing a prefix can be told apart.

use std::fmt;

/// Digits inline up to this depth (a stage per element taken); deeper ones spill to the heap.
type Digits = smallvec::SmallVec<[u32; 6]>;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dewey(Digits);

impl Dewey {
    pub fn new(start: u32) -> Self {
        Dewey(smallvec::smallvec![start])
    }

    /// The last digit increased by `times` (wrapping, as Java's `int` does).
    pub fn increase(&self, times: u32) -> Self {
        let mut v = self.0.clone();
        if let Some(last) = v.last_mut() {
            *last = last.wrapping_add(times);
        }
        Dewey(v)
    }

    /// The digits, outermost first (snapshots).
    pub(crate) fn digits(&self) -> &[u32] {
        &self.0
    }

    /// A version from its digits (snapshots; the caller checks there is at least one).
    pub(crate) fn from_digits(digits: &[u32]) -> Self {
        Dewey(Digits::from_slice(digits))
    }

    /// A new stage: `1.2` becomes `1.2.0`.
    pub fn add_stage(&self) -> Self {
        let mut v = self.0.clone();
        v.push(0);
        Dewey(v)
    }

    /// Whether a run of version `self` may follow an edge of version `other`: `other` is a
    /// prefix of `self`, or they have the same length, the same prefix and `self`'s last digit is
    /// not smaller.
    pub fn is_compatible_with(&self, other: &Dewey) -> bool {
        let (a, b) = (&self.0, &other.0);
        if a.len() > b.len() {
            a[..b.len()] == b[..]
        } else if a.len() == b.len() {
            let n = a.len();
            n > 0 && a[..n - 1] == b[..n - 1] && a[n - 1] >= b[n - 1]
        } else {
            false
        }
    }
}

impl fmt::Debug for Dewey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility() {
        let v = Dewey::new(1);
        assert!(v.add_stage().is_compatible_with(&v));
        assert!(v.increase(2).is_compatible_with(&v));
        assert!(!v.is_compatible_with(&v.increase(1)));
        assert!(!v.is_compatible_with(&v.add_stage()));
        assert_eq!(format!("{:?}", v.increase(1).add_stage().add_stage()), "2.0.0");
    }
}
