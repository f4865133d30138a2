//! The few bpf(2) and perf_event_open(2) calls aya does not expose: opening and pinning objects
//! by path, a program's info, and attaching a program to a perf event the agent opened itself.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{
    PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF, PERF_FLAG_FD_CLOEXEC, bpf_attach_type, perf_event_attr, perf_type_id,
};

pub(super) const BPF_OBJ_PIN: libc::c_long = 6;
pub(super) const BPF_OBJ_GET: libc::c_long = 7;
pub(super) const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
pub(super) const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;

/// bpf(2) with `attr`, a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`.
pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`, valid for its size;
    // the kernel reads and writes no more than that size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, (attr as *mut T).cast::<libc::c_void>(), size_of::<T>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// A file descriptor the kernel just returned.
pub(super) fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a new file descriptor from the kernel, which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// `union bpf_attr` for BPF_OBJ_PIN and BPF_OBJ_GET.
#[repr(C)]
#[derive(Default)]
struct ObjPath {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Opens a pinned BPF object.
pub(super) fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = ObjPath { pathname: c.as_ptr() as u64, ..Default::default() };
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

/// Pins a BPF object (a link) at `path`.
pub(super) fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = ObjPath { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens the perf event of tracepoint `id` (a tracefs event, e.g. a kprobe made there). A BPF
/// program attached to it runs on every CPU: the programs hang off the event, not the CPU.
pub(super) fn perf_event_open_tracepoint(id: u64) -> io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is plain integers; all zeroes is a valid value.
    let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = perf_type_id::PERF_TYPE_TRACEPOINT as u32;
    attr.size = size_of::<perf_event_attr>() as u32;
    attr.config = id;
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    // SAFETY: `attr` is a valid perf_event_attr of the size it says.
    let r = unsafe {
        libc::syscall(libc::SYS_perf_event_open, &attr as *const perf_event_attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC as libc::c_ulong)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(owned(r)) }
}

/// `union bpf_attr` for BPF_LINK_CREATE of a perf event (with its bpf_cookie, 0).
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    bpf_cookie: u64,
}

/// Attaches `prog` to a perf event: a BPF link (pinnable; 5.15+), else the older ioctl, whose
/// attachment lasts as long as the perf event's descriptor. Returns what keeps it attached.
pub(super) fn attach_perf_event(prog: BorrowedFd<'_>, perf: OwnedFd, link: bool) -> io::Result<(OwnedFd, bool)> {
    if link {
        let mut attr = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: perf.as_raw_fd() as u32,
            attach_type: bpf_attach_type::BPF_PERF_EVENT as u32,
            ..Default::default()
        };
        return bpf(BPF_LINK_CREATE, &mut attr).map(|fd| (owned(fd), true));
    }
    // SAFETY: ioctls on a perf event descriptor this function owns, with an integer argument.
    unsafe {
        if libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_SET_BPF as _, prog.as_raw_fd()) < 0
            || libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE as _, 0) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((perf, false))
}
