//! `BPF_MAP_TYPE_TASK_STORAGE` as a BTF-defined map (aya-ebpf 0.2 has none): a value that lives in
//! the `task_struct` itself, found without hashing and freed with the task. Tracing programs may
//! use it from Linux 5.12.

use core::ptr;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE},
    helpers::generated::bpf_task_storage_get,
};

/// The map definition the loader reads from BTF: each field's type encodes one attribute (the
/// map type and flags as array lengths), as libbpf's `__uint`/`__type` macros do.
#[repr(C)]
pub struct TaskStorage<V> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: never dereferenced by the programs; the loader replaces it with the map.
unsafe impl<V> Sync for TaskStorage<V> {}

impl<V> TaskStorage<V> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The value of `task` (a BTF `task_struct` pointer), or null.
    #[inline(always)]
    pub fn get(&self, task: *mut aya_ebpf::bindings::task_struct) -> *mut V {
        unsafe { bpf_task_storage_get(ptr::from_ref(self).cast_mut().cast(), task.cast(), ptr::null_mut(), 0).cast() }
    }

    /// The value of `task`, made from `init` when it has none; null when it cannot be made.
    #[inline(always)]
    pub fn get_or_insert(&self, task: *mut aya_ebpf::bindings::task_struct, init: &V) -> *mut V {
        unsafe {
            bpf_task_storage_get(
                ptr::from_ref(self).cast_mut().cast(),
                task.cast(),
                ptr::from_ref(init).cast_mut().cast(),
                BPF_LOCAL_STORAGE_GET_F_CREATE as u64,
            )
            .cast()
        }
    }
}
