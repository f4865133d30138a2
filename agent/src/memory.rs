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

/// Keeps the heap from holding on to bursts: large buffers (a scrape's exposition, its gzip)
/// are mapped and unmapped on their own instead of glibc raising its mmap threshold after the
/// first free and carving them from the heap, where they fragment it; and the blocking
/// threads share two arenas instead of one each.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
