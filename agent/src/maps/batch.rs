//! Reading a whole per-CPU hash map of counters with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): one
//! syscall per few thousand entries, where aya's iterator makes two per key (the next key, then
//! its values). With 10,000 cgroups that was most of a scrape.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Per-CPU values a call reads at most (a bound on the buffer on many-CPU hosts): 1 MiB of u64.
const VALUES_PER_CALL: usize = 128 * 1024;
/// Entries a call asks for at most.
const ENTRIES_PER_CALL: usize = 4096;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Debug, Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Whether an error says that this kernel has no batch lookup for the map (before 5.6: an
/// unknown command; some map types: not supported), so that the caller reads it key by key.
pub fn unsupported(e: &io::Error) -> bool {
    // ENOTSUPP (524) is the kernel's internal "not supported" that reaches user space.
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524))
}

/// Every entry of a per-CPU hash map with `u64` values, as (key, value summed over the `cpus`
/// possible CPUs, wrapping). Entries deleted meanwhile are simply not there.
pub fn per_cpu_sums<K: Pod>(fd: BorrowedFd<'_>, cpus: usize) -> io::Result<Vec<(K, u64)>> {
    let cpus = cpus.max(1);
    let key_size = size_of::<K>();
    let mut per_call = (VALUES_PER_CALL / cpus).clamp(1, ENTRIES_PER_CALL);
    let mut keys = vec![0u8; per_call * key_size];
    let mut values = vec![0u64; per_call * cpus];
    // The position tokens: a bucket index for hash maps; sized for any key to be safe.
    let mut position = [0u64; 8];
    let mut next = [0u64; 8];
    let mut started = false;
    let mut out = Vec::new();
    loop {
        let mut attr = BatchAttr {
            in_batch: if started { position.as_ptr() as u64 } else { 0 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: per_call as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the kernel writes at most `count` keys and `count * cpus` values into buffers
        // of that size, and a token into `next`; `attr` lives across the call.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, size_of::<BatchAttr>())
        };
        let err = (r < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(per_call);
        for i in 0..filled {
            // SAFETY: the kernel wrote a whole key at this offset; K is plain data.
            let key: K = unsafe { std::ptr::read_unaligned(keys.as_ptr().add(i * key_size).cast()) };
            let sum = values[i * cpus..(i + 1) * cpus].iter().fold(0u64, |a, v| a.wrapping_add(*v));
            out.push((key, sum));
        }
        match err {
            None => {
                position = next;
                started = true;
            }
            // The end of the map (with the last entries above).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            // A bucket holds more entries than a call asks for: ask for more.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && filled == 0 => {
                per_call *= 2;
                keys.resize(per_call * key_size, 0);
                values.resize(per_call * cpus, 0);
            }
            Some(e) => return Err(e),
        }
    }
}
