//! Asking the CPU to bring memory into its cache ahead of use, without
//! waiting for it: where the next lookup's address is known a line or more
//! before the lookup (a jail's table entry, an event another thread parsed).
//! A hint only: it never faults and changes no result.

/// Cache lines of 64 bytes (every x86-64 and most ARM cores).
pub(crate) const LINE: usize = 64;

/// Fetches the cache line holding `p`.
#[inline(always)]
pub fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Fetches every cache line of `len` bytes from `p` (at most `max` lines).
#[inline]
pub fn bytes<T>(p: *const T, len: usize, max: usize) {
    let p = p as *const u8;
    let lines = len.div_ceil(LINE).min(max);
    for i in 0..lines {
        line(p.wrapping_add(i * LINE));
    }
}
