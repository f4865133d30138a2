//! Handing freed heap memory back to the kernel: glibc keeps freed pages in its arenas, so a
//! burst (start-up's BTF parse, a churn of thousands of cgroups) would otherwise stay in the RSS.

/// Releases the free heap memory of every arena (a no-op where the C library is not glibc).
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
}
