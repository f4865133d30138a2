//! Human names for syscall and signal numbers, as used in label values.

use std::borrow::Cow;

/// Name of a syscall number in the table of the architecture the agent is built for (x86_64, arm64), or `syscall_<nr>` when unknown (`syscall_unknown` when the
/// probe could not read it).
pub fn syscall_name(nr: i32) -> Cow<'static, str> {
    if nr < 0 {
        return Cow::Borrowed("syscall_unknown");
    }
    match syscalls::Sysno::new(nr as usize) {
        Some(sysno) => Cow::Borrowed(sysno.name()),
        None => Cow::Owned(format!("syscall_{nr}")),
    }
}

/// Name of a signal number: `SIGSEGV`, `SIGRTMIN+3`, or `SIG<n>` when unknown.
pub fn signal_name(sig: u32) -> Cow<'static, str> {
    // The kernel's real-time signals are 32..=64 (glibc reserves the first few for itself and
    // moves its SIGRTMIN up; the label uses the kernel's numbering).
    const KERNEL_SIGRTMIN: u32 = 32;
    const KERNEL_SIGRTMAX: u32 = 64;
    match nix::sys::signal::Signal::try_from(sig as i32) {
        Ok(signal) => Cow::Borrowed(signal.as_str()),
        Err(_) if (KERNEL_SIGRTMIN..=KERNEL_SIGRTMAX).contains(&sig) => {
            Cow::Owned(format!("SIGRTMIN+{}", sig - KERNEL_SIGRTMIN))
        }
        Err(_) => Cow::Owned(format!("SIG{sig}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_names() {
        assert_eq!(syscall_name(libc::SYS_getppid as i32), "getppid");
        assert_eq!(syscall_name(libc::SYS_openat as i32), "openat");
        assert_eq!(syscall_name(5000), "syscall_5000");
        assert_eq!(syscall_name(-1), "syscall_unknown");
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(34), "SIGRTMIN+2");
        assert_eq!(signal_name(99), "SIG99");
    }
}
