//! [`AlignedVec`]: a growable buffer whose elements start on a 64-byte (cache-line) boundary.
//!
//! The global allocator aligns a `Vec<f32>` to 16 bytes at best, so where its data starts
//! within a cache line depends on the heap's history. For a buffer that a kernel streams with
//! 32-byte AVX stores, that start decides whether every other store splits across two cache
//! lines. Measured on the 2-core Zen 3 bench VM (best of 2 000 batches): copying 8 × 64 KiB of
//! keys with their page minima and maxima (`ops::fold_min_max_copy`) took 17.5–18.6 µs into a
//! destination at 0 mod 64 and 19.6–21.0 µs into one at 16 mod 64; the key index's whole
//! build went from 21.3 to 19.6 µs with its keys in an `AlignedVec`, a retention step
//! (64 KiB of state read and written) from 1.30 to 1.12 µs, and the flash-prefill kernel with
//! its two scratch tiles aligned from 251.5 to 249.5 µs (best of batches, five alternating
//! rounds). The small methods are `#[inline]`: before they were, the flash kernel's tile loops
//! paid for the calls and ran about 2 % slower instead. It is not a win everywhere (the KV
//! compressor's packed codes gained nothing measurable), so each use is measured.
//!
//! Implemented without `unsafe`: a `Vec<T>` with up to `64 / size_of::<T>() − 1` elements of
//! padding in front, re-established whenever the storage moves.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// The alignment of an [`AlignedVec`]'s first element, in bytes.
pub const ALIGN: usize = 64;

/// A growable buffer of `T` whose first element is 64-byte aligned, viewed as a slice.
///
/// `T` must be a primitive whose size divides 64 and equals its alignment (`u8` … `u64`,
/// `f32`, `f64`); other types fail to compile. Growth is geometric, like `Vec`'s, and
/// [`clear`](AlignedVec::clear) / [`truncate`](AlignedVec::truncate) keep the capacity.
///
/// # Example
/// ```
/// use squish_core::aligned::{ALIGN, AlignedVec};
/// let mut v = AlignedVec::<f32>::new();
/// v.resize(1000, 0.5);
/// v.extend_from_slice(&[1.0, 2.0]);
/// assert_eq!(v.len(), 1002);
/// assert_eq!(v.as_ptr() as usize % ALIGN, 0);
/// assert_eq!(&v[999..], &[0.5, 1.0, 2.0]);
/// ```
#[derive(Default)]
pub struct AlignedVec<T> {
    /// `pad` elements of padding, then the `len` visible ones, then spare capacity.
    buf: Vec<T>,
    pad: usize,
}

impl<T: Copy + Default> AlignedVec<T> {
    const LANES: usize = {
        assert!(
            size_of::<T>() > 0
                && ALIGN.is_multiple_of(size_of::<T>())
                && align_of::<T>() == size_of::<T>(),
            "AlignedVec needs a primitive whose size divides 64 and equals its alignment"
        );
        ALIGN / size_of::<T>()
    };

    /// An empty buffer; nothing is allocated until it grows.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            pad: 0,
        }
    }

    /// An empty buffer with room for at least `capacity` elements.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut v = Self::new();
        v.reserve(capacity);
        v
    }

    /// Number of elements.
    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len() - self.pad
    }

    /// Whether there are no elements.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of elements it can hold without reallocating.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.capacity().saturating_sub(self.pad)
    }

    /// Makes room for at least `additional` more elements, keeping the contents and the
    /// alignment (one copy when the storage moves).
    ///
    /// # Panics
    /// As [`Vec::reserve`]: if the capacity would exceed `isize::MAX` bytes.
    #[inline]
    pub fn reserve(&mut self, additional: usize) {
        // Saturates into a capacity `Vec::with_capacity` rejects.
        let need = self.len().saturating_add(additional);
        if need > self.capacity() {
            self.grow(need);
        }
    }

    /// Moves the contents into a new allocation with room for `need` elements (at least
    /// double the length, as `Vec` grows) whose first element is on a boundary.
    #[cold]
    fn grow(&mut self, need: usize) {
        let lanes = Self::LANES;
        let cap = need.max(2 * self.len()).saturating_add(lanes - 1);
        let mut buf: Vec<T> = Vec::with_capacity(cap);
        let pad = buf.as_ptr().addr() / size_of::<T>() % lanes;
        let pad = (lanes - pad) % lanes;
        buf.resize(pad, T::default());
        buf.extend_from_slice(self);
        self.buf = buf;
        self.pad = pad;
    }

    /// Resizes to `len` elements, filling new ones with `value` (like [`Vec::resize`]).
    #[inline]
    pub fn resize(&mut self, len: usize, value: T) {
        if len > self.len() {
            self.reserve(len - self.len());
        }
        self.buf.resize(self.pad + len, value);
    }

    /// Appends the elements of `values`.
    #[inline]
    pub fn extend_from_slice(&mut self, values: &[T]) {
        self.reserve(values.len());
        self.buf.extend_from_slice(values);
    }

    /// Appends one element.
    #[inline]
    pub fn push(&mut self, value: T) {
        self.reserve(1);
        self.buf.push(value);
    }

    /// Bytes of the allocation, padding included (what the buffer really holds).
    pub fn allocated_bytes(&self) -> usize {
        self.buf.capacity() * size_of::<T>()
    }

    /// Shortens to `len` elements (no effect if `len >= self.len()`); keeps the capacity.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(self.pad + len);
    }

    /// Removes every element; keeps the capacity.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// The elements as a slice (its start is 64-byte aligned, or dangling when nothing was
    /// ever allocated).
    #[inline]
    pub fn as_slice(&self) -> &[T] {
        &self.buf[self.pad..]
    }

    /// The elements as a mutable slice.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.buf[self.pad..]
    }
}

impl<T: Copy + Default> Deref for AlignedVec<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Copy + Default> DerefMut for AlignedVec<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Copy + Default> Extend<T> for AlignedVec<T> {
    #[inline]
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        self.reserve(iter.size_hint().0);
        // `Vec::extend` keeps its fast paths; it only reallocates if the iterator yields more
        // than its size hint promised, and then the data is moved onto a boundary again.
        let at = self.buf.as_ptr();
        self.buf.extend(iter);
        if self.buf.as_ptr() != at {
            *self = Self::from(self.as_slice());
        }
    }
}

/// A clone is a new allocation, aligned on its own (not a copy of the padding).
impl<T: Copy + Default> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        Self::from(self.as_slice())
    }
}

impl<T: Copy + Default + fmt::Debug> fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<T: Copy + Default + PartialEq> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy + Default> From<&[T]> for AlignedVec<T> {
    fn from(values: &[T]) -> Self {
        let mut v = Self::with_capacity(values.len());
        v.extend_from_slice(values);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned<T: Copy + Default>(v: &AlignedVec<T>) -> bool {
        v.capacity() == 0 || (v.as_ptr() as usize).is_multiple_of(ALIGN)
    }

    /// Every operation against a plain `Vec` doing the same, with the alignment checked after
    /// each step (many reallocations, so many different heap offsets).
    #[test]
    fn behaves_like_a_vec_and_stays_aligned() {
        let mut v = AlignedVec::<f32>::new();
        let mut r: Vec<f32> = Vec::new();
        assert!(v.is_empty() && v.capacity() == 0);
        for step in 0..400usize {
            match step % 5 {
                0 | 1 => {
                    let add: Vec<f32> = (0..step % 37).map(|i| (step * 100 + i) as f32).collect();
                    v.extend_from_slice(&add);
                    r.extend_from_slice(&add);
                }
                2 => {
                    let n = r.len() + step % 53;
                    v.resize(n, step as f32);
                    r.resize(n, step as f32);
                }
                3 if step % 2 == 0 => {
                    let add = (0..step % 41).map(|i| i as f32 - 0.5);
                    v.extend(add.clone().filter(|x| *x > 3.0));
                    r.extend(add.filter(|x| *x > 3.0));
                    v.push(-1.0);
                    r.push(-1.0);
                }
                3 => {
                    let n = r.len() * 3 / 4;
                    v.truncate(n);
                    r.truncate(n);
                }
                _ => {
                    v.as_mut_slice().iter_mut().for_each(|x| *x += 1.0);
                    r.iter_mut().for_each(|x| *x += 1.0);
                }
            }
            assert_eq!(v.as_slice(), r.as_slice(), "step {step}");
            assert!(v.capacity() >= v.len());
            assert!(aligned(&v), "step {step}");
            assert!(v.allocated_bytes() >= v.capacity() * 4);
        }
        let cap = v.capacity();
        v.clear();
        assert!(v.is_empty());
        assert_eq!(v.capacity(), cap, "clear keeps the capacity");
    }

    /// An iterator whose size hint says nothing still leaves the buffer aligned.
    #[test]
    fn extend_past_the_size_hint_realigns() {
        for n in [1usize, 7, 100, 5000] {
            let mut v = AlignedVec::<f32>::new();
            v.extend((0..n).map(|i| i as f32).filter(|_| true));
            assert!(aligned(&v));
            assert!(v.iter().copied().eq((0..n).map(|i| i as f32)));
        }
    }

    #[test]
    fn other_element_sizes_align_too() {
        for n in [1usize, 15, 16, 17, 1000, 100_000] {
            let b = AlignedVec::<u8>::from(vec![7u8; n].as_slice());
            assert!(aligned(&b) && b.len() == n && b.iter().all(|&x| x == 7));
            let mut d = AlignedVec::<f64>::with_capacity(n);
            assert!(d.capacity() >= n && d.is_empty());
            d.resize(n, 1.5);
            assert!(aligned(&d) && d.iter().all(|&x| x == 1.5));
            let c = d.clone();
            assert!(aligned(&c), "a clone is aligned on its own");
            assert_eq!(c, d);
        }
    }
}
