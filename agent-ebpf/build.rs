use which::which;

/// Building this crate depends on the `bpf-linker` binary, which cargo does not know about:
/// rebuild when it changes.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask build-ebpf`")
        }
    }
}
