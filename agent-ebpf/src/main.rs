//! cgwatch's kernel programs. One file per hook in `probes/`; the loader in `agent` decides which
//! of them to load and attach (see `agent::probes::PROBES`).
#![no_std]
#![no_main]
// BPF inline assembly, for the one atomic add (`maps::add_tracing`).
#![feature(asm_experimental_arch)]

mod diag;
mod events;
mod kernel;
mod maps;
mod probes;
mod task_storage;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
