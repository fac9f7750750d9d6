//! Giving freed memory back to the operating system.
//!
//! The allocator keeps what a program frees for its next allocations. Memory freed in many
//! pieces of a few MB (a backbone's weights, its transformed filters and work buffers) often
//! stays resident even when nothing is allocated there again, because it lies between other
//! live allocations. A fit that frees the backbone before its largest stage asks the
//! allocator to return such pages ([`return_freed_memory`]), so that the resident size — what
//! a memory budget is about — really falls.

/// Asks the allocator to return the whole free pages it holds to the operating system.
/// Returns whether the call was made (glibc on Linux: `malloc_trim(0)`, which releases free
/// pages of every arena, not only the top of the heap); elsewhere it does nothing.
pub(crate) fn return_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes a padding size and only releases pages of free chunks
        // (glibc keeps its own locks); it neither reads nor invalidates any live allocation,
        // and Rust's global allocator on linux-gnu is this same malloc.
        unsafe {
            libc::malloc_trim(0);
        }
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        line[6..].split_whitespace().next()?.parse().ok()
    }

    /// 160 MB freed in 2 MB pieces between live allocations stays resident until the trim.
    #[test]
    fn freed_pieces_are_returned() {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(!return_freed_memory());
            return;
        }
        // Other tests of this process allocate meanwhile: a few tries, one must show it.
        let mut seen = Vec::new();
        for _ in 0..3 {
            // Freeing one large block first raises glibc's mmap threshold, as a program that
            // has run a while has: the 2 MB pieces then come from the heap.
            drop(std::hint::black_box(vec![1u8; 16 << 20]));
            let mut pieces: Vec<Vec<u8>> = Vec::new();
            let mut pins: Vec<Vec<u8>> = Vec::new();
            for i in 0..80 {
                pieces.push(vec![i as u8 | 1; 2 << 20]);
                pins.push(vec![1u8; 64]);
            }
            let Some(full) = rss_kib() else { return };
            drop(std::hint::black_box(pieces));
            assert!(return_freed_memory());
            let after = rss_kib().unwrap_or(full);
            drop(pins);
            if full.saturating_sub(after) > 100 << 10 {
                return;
            }
            seen.push((full, after));
        }
        panic!("freed memory stayed resident (KiB before, after): {seen:?}");
    }
}
