//! Buffers whose data starts on a cache line (64 bytes), for the operands of tile loads.
//!
//! An AMX tile load reads 16 rows of 64 bytes. A `Vec` starts wherever the allocator put it
//! (16 bytes past a page for large blocks with glibc), and then every tile row straddles two
//! cache lines: twice the lines to fetch, and split loads. In a model of the direct 3×3 int8
//! loop at WRN-50-2's layer3 shape (one core, everything in cache) that alone made the loop
//! run at 1.0 instead of 2.1·10¹² multiply-adds per second.
//!
//! [`aligned_mut`] and [`aligned`] serve scratch `Vec`s that callers pass in; [`LineBuf`]
//! owns its storage (packed weights, buffers that outlive one call). Correctness never
//! depends on the alignment: where an allocation cannot be aligned (a zero-sized `T`, or
//! `align_offset` giving up), the slices start at the beginning, unaligned.

/// Bytes of a cache line, and the alignment of the slices handed out here.
pub(crate) const LINE: usize = 64;

/// Elements of slack in front: enough to reach the next line from any `T`-aligned start.
const fn slack<T>() -> usize {
    let size = std::mem::size_of::<T>();
    if size == 0 {
        0
    } else {
        LINE.div_ceil(size)
    }
}

/// Where the line-aligned part of `buf` starts (an index `≤ slack`), or 0 when there is none
/// (an empty `buf`, whose pointer is dangling, starts at 0).
fn start<T>(buf: &[T]) -> usize {
    let off = buf.as_ptr().align_offset(LINE);
    if off <= slack::<T>() && off < buf.len() {
        off
    } else {
        0
    }
}

/// `len` elements of `buf` from a 64-byte boundary, growing `buf` (with `T::default()`)
/// when it is too short. The contents are unspecified (what `buf` held there, which moves
/// when `buf` grows): callers overwrite them. [`aligned`] returns the same elements as long
/// as `buf` is not changed in between.
pub(crate) fn aligned_mut<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    let need = len + slack::<T>();
    if buf.len() < need {
        buf.resize(need, T::default());
    }
    let s = start(buf);
    &mut buf[s..s + len]
}

/// The `len` elements that [`aligned_mut`]`(buf, len)` (or a longer one) handed out.
///
/// # Panics
/// If `buf` is too short for them (no such call was made).
pub(crate) fn aligned<T>(buf: &[T], len: usize) -> &[T] {
    let s = start(buf);
    &buf[s..s + len]
}

/// An owned buffer of `len` elements starting on a cache line (dereferences to them).
#[derive(Debug, Default)]
pub(crate) struct LineBuf<T> {
    buf: Vec<T>,
    len: usize,
}

impl<T: Copy + Default> LineBuf<T> {
    /// `len` copies of `T::default()`.
    pub(crate) fn zeroed(len: usize) -> LineBuf<T> {
        let mut b = LineBuf::default();
        b.resize(len);
        b
    }

    /// Makes the buffer `len` long, all `T::default()`, reusing its memory when it can.
    pub(crate) fn resize(&mut self, len: usize) {
        aligned_mut(&mut self.buf, len).fill(T::default());
        self.len = len;
    }
}

impl<T> std::ops::Deref for LineBuf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        aligned(&self.buf, self.len)
    }
}

impl<T> std::ops::DerefMut for LineBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let s = start(&self.buf);
        &mut self.buf[s..s + self.len]
    }
}

impl<T: Copy + Default> Clone for LineBuf<T> {
    /// A copy in new memory, aligned on its own (a cloned `Vec` may start at another offset
    /// from a line, so the elements are copied, not the raw storage).
    fn clone(&self) -> LineBuf<T> {
        let mut b = LineBuf::default();
        aligned_mut(&mut b.buf, self.len).copy_from_slice(self);
        b.len = self.len;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_start_on_a_line_and_keep_their_contents() {
        for len in [0usize, 1, 15, 16, 17, 1000, 100_003] {
            let mut v: Vec<u32> = Vec::new();
            let s = aligned_mut(&mut v, len);
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % LINE, 0, "len {len}");
            for (i, x) in s.iter_mut().enumerate() {
                *x = i as u32 * 3 + 1;
            }
            let r = aligned(&v, len);
            assert!(r.iter().enumerate().all(|(i, &x)| x == i as u32 * 3 + 1));
            // A shorter request reuses the same start.
            let short = aligned_mut(&mut v, len / 2);
            assert!(short
                .iter()
                .enumerate()
                .all(|(i, &x)| x == i as u32 * 3 + 1));
        }
    }

    #[test]
    fn every_element_size_is_aligned() {
        let mut a: Vec<u8> = vec![7; 3];
        assert_eq!(aligned_mut(&mut a, 777).as_ptr() as usize % LINE, 0);
        let mut b: Vec<u16> = Vec::with_capacity(5);
        assert_eq!(aligned_mut(&mut b, 333).as_ptr() as usize % LINE, 0);
        let mut c: Vec<f32> = Vec::new();
        assert_eq!(aligned_mut(&mut c, 1).as_ptr() as usize % LINE, 0);
    }

    #[test]
    fn empty_buffers_are_empty_slices() {
        let b: LineBuf<u32> = LineBuf::default();
        assert!(b.is_empty());
        assert!(b.clone().is_empty());
        let v: Vec<u16> = Vec::new();
        assert!(aligned(&v, 0).is_empty());
    }

    #[test]
    fn line_buffers_clone_and_resize_by_value() {
        let mut b: LineBuf<u16> = LineBuf::zeroed(50);
        assert!(b.iter().all(|&x| x == 0) && b.len() == 50);
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u16;
        }
        let c = b.clone();
        assert_eq!(c.as_ptr() as usize % LINE, 0);
        assert_eq!(&c[..], &b[..]);
        b.resize(20_000);
        assert_eq!(b.len(), 20_000);
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(b.as_ptr() as usize % LINE, 0);
        assert_eq!(c[49], 49);
    }
}
