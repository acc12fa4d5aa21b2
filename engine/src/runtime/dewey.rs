//! Dewey version numbers of partial matches (FlinkCEP's `DeweyNumber`): they tell which shared
//! buffer edges belong to which run, so that runs sharing a prefix can be told apart.
//!
//! A version is copied into every successor of a partial match and compared at every shared
//! buffer edge a lock or release walks, so it is a plain value: up to [`INLINE`] digits in place
//! (a copy of 32 bytes, no allocation), deeper ones on the heap. Comparisons are loops over the
//! few digits, not calls to `memcmp`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Digits kept in place (a stage per element taken; the FlinkCEP benchmark's P2 reaches 7).
const INLINE: usize = 7;

#[derive(Clone)]
pub struct Dewey(Repr);

/// Inline exactly when there are at most [`INLINE`] digits (so equal versions have equal
/// representations); never empty except through `from_digits`, whose caller checks.
#[derive(Clone)]
enum Repr {
    Inline { len: u8, digits: [u32; INLINE] },
    Heap(Arc<[u32]>),
}

fn same(a: &[u32], b: &[u32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl Dewey {
    pub fn new(start: u32) -> Self {
        let mut digits = [0; INLINE];
        digits[0] = start;
        Dewey(Repr::Inline { len: 1, digits })
    }

    /// The digits, outermost first (snapshots).
    pub(crate) fn digits(&self) -> &[u32] {
        match &self.0 {
            Repr::Inline { len, digits } => &digits[..usize::from(*len)],
            Repr::Heap(d) => d,
        }
    }

    /// A version from its digits (snapshots; the caller checks there is at least one).
    pub(crate) fn from_digits(d: &[u32]) -> Self {
        if d.len() <= INLINE {
            let mut digits = [0; INLINE];
            digits[..d.len()].copy_from_slice(d);
            Dewey(Repr::Inline { len: d.len() as u8, digits })
        } else {
            Dewey(Repr::Heap(d.into()))
        }
    }

    /// The last digit increased by `times` (wrapping, as Java's `int` does).
    pub fn increase(&self, times: u32) -> Self {
        match &self.0 {
            Repr::Inline { len, digits } => {
                let mut digits = *digits;
                if let Some(last) = digits[..usize::from(*len)].last_mut() {
                    *last = last.wrapping_add(times);
                }
                Dewey(Repr::Inline { len: *len, digits })
            }
            Repr::Heap(d) => {
                let mut v = d.to_vec();
                if let Some(last) = v.last_mut() {
                    *last = last.wrapping_add(times);
                }
                Dewey(Repr::Heap(v.into()))
            }
        }
    }

    /// A new stage: `1.2` becomes `1.2.0`.
    pub fn add_stage(&self) -> Self {
        match &self.0 {
            Repr::Inline { len, digits } if usize::from(*len) < INLINE => {
                let mut digits = *digits;
                digits[usize::from(*len)] = 0;
                Dewey(Repr::Inline { len: len + 1, digits })
            }
            _ => {
                let mut v = self.digits().to_vec();
                v.push(0);
                Dewey(Repr::Heap(v.into()))
            }
        }
    }

    /// Whether a run of version `self` may follow an edge of version `other`: `other` is a
    /// prefix of `self`, or they have the same length, the same prefix and `self`'s last digit is
    /// not smaller.
    pub fn is_compatible_with(&self, other: &Dewey) -> bool {
        let (a, b) = (self.digits(), other.digits());
        if a.len() > b.len() {
            same(&a[..b.len()], b)
        } else if a.len() == b.len() {
            let n = a.len();
            n > 0 && same(&a[..n - 1], &b[..n - 1]) && a[n - 1] >= b[n - 1]
        } else {
            false
        }
    }
}

impl PartialEq for Dewey {
    fn eq(&self, other: &Self) -> bool {
        same(self.digits(), other.digits())
    }
}

impl Eq for Dewey {}

impl Hash for Dewey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.digits().hash(state);
    }
}

impl fmt::Debug for Dewey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.digits().iter().map(u32::to_string).collect();
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

    #[test]
    fn deep_versions_spill_and_compare_by_digits() {
        let mut v = Dewey::new(3);
        for depth in 1..12 {
            let deeper = v.add_stage().increase(depth);
            assert_eq!(deeper.digits().len(), depth as usize + 1);
            assert_eq!(deeper, Dewey::from_digits(deeper.digits()), "depth {depth}");
            assert!(deeper.is_compatible_with(&v));
            assert!(deeper.is_compatible_with(&deeper.increase(0)));
            assert!(!deeper.is_compatible_with(&deeper.increase(1)));
            assert!(deeper.increase(1).is_compatible_with(&deeper));
            assert!(!v.is_compatible_with(&deeper));
            v = deeper;
        }
        assert_eq!(format!("{v:?}"), "3.1.2.3.4.5.6.7.8.9.10.11");
    }
}
