//! Block bitmaps: which blocks of an LD differ or still need copying.

use serde::{Deserialize, Serialize};

/// A fixed-length set of block indexes with an O(1) population count.
/// The default is the empty set of length 0 (a field missing from an older record).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bitmap {
    words: Vec<u64>,
    len: u64,
    ones: u64,
}

impl Bitmap {
    pub(crate) fn new(len: u64) -> Self {
        Bitmap {
            words: vec![0; len.div_ceil(64) as usize],
            len,
            ones: 0,
        }
    }
    pub(crate) fn full(len: u64) -> Self {
        let mut b = Bitmap::new(len);
        b.set_range(0, len);
        b
    }
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
    pub(crate) fn count(&self) -> u64 {
        self.ones
    }
    pub(crate) fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Sets bit `i`; true when it was clear before.
    pub(crate) fn set(&mut self, i: u64) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.ones += 1;
        true
    }
    /// Clears bit `i`; true when it was set before.
    pub(crate) fn clear(&mut self, i: u64) -> bool {
        if !self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
        self.ones -= 1;
        true
    }
    /// Sets `[start, end)`; returns how many bits were newly set.
    pub(crate) fn set_range(&mut self, start: u64, end: u64) -> u64 {
        (start..end.min(self.len)).filter(|&i| self.set(i)).count() as u64
    }
    pub(crate) fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.ones = 0;
    }
    /// Adds every bit of `other` (same length) to `self`.
    pub(crate) fn union_with(&mut self, other: &Bitmap) {
        for (i, w) in other.words.iter().enumerate() {
            if let Some(mine) = self.words.get_mut(i) {
                *mine |= *w;
            }
        }
        self.ones = self.words.iter().map(|w| w.count_ones() as u64).sum();
    }
    /// First set bit at or after `from`, wrapping around once.
    pub(crate) fn next_set(&self, from: u64) -> Option<u64> {
        if self.ones == 0 {
            return None;
        }
        let scan = |lo: u64, hi: u64| {
            let mut i = lo;
            while i < hi {
                let w = self.words[(i / 64) as usize] >> (i % 64);
                if w == 0 {
                    i = (i / 64 + 1) * 64;
                    continue;
                }
                let j = i + w.trailing_zeros() as u64;
                return (j < hi).then_some(j);
            }
            None
        };
        scan(from.min(self.len), self.len).or_else(|| scan(0, from.min(self.len)))
    }
    /// Checks that a bitmap read from disk is self-consistent.
    pub(crate) fn validate(&self, expect_len: u64) -> Result<(), String> {
        if self.len != expect_len || self.words.len() as u64 != expect_len.div_ceil(64) {
            return Err(format!(
                "bitmap has {} bits, expected {expect_len}",
                self.len
            ));
        }
        let ones: u64 = self.words.iter().map(|w| w.count_ones() as u64).sum();
        if ones != self.ones {
            return Err(format!(
                "bitmap count {} does not match its bits ({ones})",
                self.ones
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count_and_scan() {
        let mut b = Bitmap::new(200);
        assert_eq!(b.set_range(10, 13), 3);
        assert_eq!(b.set_range(11, 14), 1);
        assert!(b.set(150));
        assert_eq!(b.count(), 5);
        assert_eq!(b.next_set(0), Some(10));
        assert_eq!(b.next_set(14), Some(150));
        assert_eq!(b.next_set(151), Some(10));
        assert!(b.clear(10));
        assert!(!b.clear(10));
        assert_eq!(b.count(), 4);
        let mut c = Bitmap::new(200);
        c.set(199);
        c.union_with(&b);
        assert_eq!(c.count(), 5);
        assert!(c.validate(200).is_ok());
        assert!(c.validate(100).is_err());
        assert_eq!(Bitmap::full(130).count(), 130);
    }
}
