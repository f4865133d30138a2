//! `cargo xtask image` (the container image, built with podman from `deploy/image/Containerfile`)
//! and `cargo xtask install` (binary, systemd unit and environment file).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, ensure_apt_tools, ensure_cross_gcc, ensure_rust_target, ensure_toolchain, output, run};

/// An architecture the image is built for.
pub struct ImageArch {
    /// As `--arch` takes it.
    pub name: &'static str,
    /// The static target of the image's binary.
    musl: &'static str,
    /// The OCI platform of the image.
    platform: &'static str,
    /// Appended to the image's tags (`localhost/cgwatch:<version><suffix>`).
    pub suffix: &'static str,
    /// The cross gcc that compiles ring's C and assembly and links (Debian package: `gcc-` and
    /// this); `None`: musl-gcc of musl-tools.
    cross_gcc: Option<&'static str>,
    /// Debian's name of the architecture (its cross libc headers: `libc6-dev-<debian>-cross`).
    debian: &'static str,
}

pub const IMAGE_ARCHES: [ImageArch; 2] = [
    ImageArch { name: "x86_64", musl: "x86_64-unknown-linux-musl", platform: "linux/amd64", suffix: "", cross_gcc: None, debian: "amd64" },
    ImageArch {
        name: "arm64",
        musl: "aarch64-unknown-linux-musl",
        platform: "linux/arm64",
        suffix: "-arm64",
        cross_gcc: Some("aarch64-linux-gnu"),
        debian: "arm64",
    },
];

/// The image architecture named `name` (as `--arch` takes it).
pub fn image_arch(name: &str) -> Result<&'static ImageArch> {
    IMAGE_ARCHES.iter().find(|a| a.name == name).with_context(|| format!("--arch {name}: x86_64 or arm64"))
}

/// Builds `arch`'s image; returns the static agent in it (as copied into the build context).
pub fn image_agent(root: &Path, arch: &ImageArch) -> Result<PathBuf> {
    image(root, arch, &[])?;
    Ok(context_dir(root, arch).join("cgwatch"))
}

/// The podman build context of `arch`'s image: the stripped static agent.
fn context_dir(root: &Path, arch: &ImageArch) -> PathBuf {
    root.join("target/image").join(arch.name)
}

/// The image's name; `deploy/kubernetes/base/daemonset.yaml` names the same.
pub const IMAGE: &str = "localhost/cgwatch";
/// Largest image accepted.
const MAX_IMAGE_BYTES: u64 = 20 << 20;

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Builds the static agent for `arch` and the image `localhost/cgwatch:<version><suffix>` (also
/// `:latest<suffix>`); prints and checks its size. Nothing runs in the build (`FROM scratch`, a
/// `COPY`), so an arm64 image builds on an x86_64 host without emulation.
pub fn image(root: &Path, arch: &ImageArch, extra_tags: &[String]) -> Result<String> {
    ensure_toolchain()?;
    // ring (rustls's crypto) compiles C and assembly: for x86_64 musl with musl-gcc; for arm64
    // with Debian's cross gcc (ring's C needs no libc beyond its headers; Rust's musl target
    // brings its own libc and start files, linked statically).
    let strip = match arch.cross_gcc {
        None => {
            ensure_apt_tools(&[("podman", "podman"), ("strip", "binutils"), ("musl-gcc", "musl-tools")])?;
            "strip".to_string()
        }
        Some(prefix) => {
            ensure_apt_tools(&[("podman", "podman")])?;
            ensure_cross_gcc(prefix, arch.debian)?;
            format!("{prefix}-strip")
        }
    };
    ensure_rust_target(arch.musl)?;
    let mut cargo = cargo(root);
    if let Some(prefix) = arch.cross_gcc {
        let t = arch.musl.replace('-', "_");
        cargo
            .env(format!("CARGO_TARGET_{}_LINKER", t.to_uppercase()), format!("{prefix}-gcc"))
            .env(format!("CC_{t}"), format!("{prefix}-gcc"))
            .env(format!("AR_{t}"), format!("{prefix}-ar"));
    }
    run(cargo.args(["build", "--release", "--target", arch.musl, "-p", "cgwatch", "--bin", "cgwatch"]))?;

    let context = context_dir(root, arch);
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    let bin = context.join("cgwatch");
    fs::copy(root.join("target").join(arch.musl).join("release/cgwatch"), &bin).context("copying the static binary")?;
    run(Command::new(&strip).arg(&bin))?;

    let tag = format!("{IMAGE}:{}{}", version(), arch.suffix);
    let mut build = Command::new("podman");
    build
        .args(["build", "--quiet", "--format", "oci", "--platform", arch.platform, "-f"])
        .arg(root.join("deploy/image/Containerfile"))
        .args(["--build-arg", &format!("VERSION={}", version())])
        .args(["-t", &tag, "-t", &format!("{IMAGE}:latest{}", arch.suffix)]);
    for t in extra_tags {
        build.args(["-t", t]);
    }
    run(build.arg(&context))?;
    let size: u64 = output(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &tag]))?
        .trim()
        .parse()
        .context("podman image inspect: size")?;
    eprintln!("xtask: image {tag} ({}): {:.1} MiB (limit {} MiB)", arch.platform, size as f64 / (1 << 20) as f64, MAX_IMAGE_BYTES >> 20);
    if size >= MAX_IMAGE_BYTES {
        bail!("image {tag} is {size} bytes, over the {MAX_IMAGE_BYTES}-byte limit");
    }
    Ok(tag)
}

/// Where `install` puts things, below `--root` (default `/`).
pub struct InstallPaths {
    pub binary: PathBuf,
    pub unit: PathBuf,
    pub env: PathBuf,
    pub sysusers: PathBuf,
}

impl InstallPaths {
    pub fn under(root: &Path) -> Self {
        InstallPaths {
            binary: root.join("usr/local/bin/cgwatch"),
            unit: root.join("etc/systemd/system/cgwatch.service"),
            env: root.join("etc/default/cgwatch"),
            sysusers: root.join("etc/sysusers.d/cgwatch.conf"),
        }
    }
}

fn put(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Copy beside, then rename: a running agent's binary is replaced, not overwritten.
    let tmp = dest.with_extension("xtask-new");
    fs::copy(src, &tmp).with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))?;
    eprintln!("xtask: installed {}", dest.display());
    Ok(())
}

/// Installs the release binary, the unit, its sysusers.d file and (unless one exists) the
/// environment file below `dest`; on a live systemd host (`dest` = `/`), creates the user,
/// reloads systemd and enables and (re)starts the unit.
pub fn install(root: &Path, dest: &Path) -> Result<()> {
    let paths = InstallPaths::under(dest);
    put(&root.join("target/release/cgwatch"), &paths.binary, 0o755)?;
    put(&root.join("deploy/systemd/cgwatch.service"), &paths.unit, 0o644)?;
    put(&root.join("deploy/systemd/cgwatch.sysusers"), &paths.sysusers, 0o644)?;
    if paths.env.exists() {
        eprintln!("xtask: kept {} (edit it for flags; the shipped one is deploy/systemd/cgwatch.env)", paths.env.display());
    } else {
        put(&root.join("deploy/systemd/cgwatch.env"), &paths.env, 0o644)?;
    }
    let live = dest == Path::new("/") && Path::new("/run/systemd/system").exists();
    if !live {
        eprintln!(
            "xtask: not a live systemd root: run `systemd-sysusers && systemctl daemon-reload && systemctl enable --now cgwatch` there"
        );
        return Ok(());
    }
    run(Command::new("systemd-sysusers").arg(&paths.sysusers))?;
    run(Command::new("systemctl").arg("daemon-reload"))?;
    run(Command::new("systemctl").args(["enable", "cgwatch.service"]))?;
    run(Command::new("systemctl").args(["restart", "cgwatch.service"]))?;
    eprintln!("xtask: cgwatch.service enabled and started; `curl -s localhost:19120/metrics`");
    Ok(())
}

/// The pinned `kubernetes-validate` (offline Kubernetes schema validation, from PyPI), in a
/// virtualenv in the tools cache; returns its command.
pub fn kubernetes_validate() -> Result<PathBuf> {
    const PIN: &str = "kubernetes-validate==1.32.0";
    let venv = tools_cache().join("venv");
    let bin = venv.join("bin/kubernetes-validate");
    let pinned = venv.join(".pinned");
    if bin.exists() && fs::read_to_string(&pinned).is_ok_and(|p| p == PIN) {
        return Ok(bin);
    }
    ensure_apt_tools(&[("python3", "python3")])?;
    eprintln!("xtask: installing {PIN} into {}", venv.display());
    if run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).is_err() {
        // Debian's python3 keeps venv in a package of its own.
        ensure_apt_tools(&[("__no_such_command__", "python3-venv")])?;
        run(Command::new("python3").arg("-m").arg("venv").arg("--clear").arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", PIN]))?;
    fs::write(&pinned, PIN)?;
    Ok(bin)
}

/// Where test tools that are not Debian packages live (`CGWATCH_TOOLS_CACHE`, default
/// `~/.cache/cgwatch-tools`), outside the repository.
fn tools_cache() -> PathBuf {
    std::env::var_os("CGWATCH_TOOLS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/cgwatch-tools")
    })
}

/// A minimal Debian root filesystem with systemd, for the test that runs the unit under a real
/// systemd (in a podman container, as PID 1); made once with debootstrap, kept in the tools
/// cache.
pub fn systemd_rootfs() -> Result<PathBuf> {
    let dir = tools_cache().join("rootfs-bookworm-systemd");
    let done = dir.join(".cgwatch-complete");
    if done.exists() {
        return Ok(dir);
    }
    ensure_apt_tools(&[("debootstrap", "debootstrap")])?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing the incomplete {}", dir.display()))?;
    }
    eprintln!("xtask: debootstrap of a minimal bookworm with systemd into {} (once)", dir.display());
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=systemd,systemd-sysv", "bookworm"])
        .arg(&dir)
        .arg("http://deb.debian.org/debian"))?;
    fs::write(&done, "")?;
    Ok(dir)
}
