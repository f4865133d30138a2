//! `cargo xtask image` (the container image, built with podman from `deploy/image/Containerfile`)
//! and `cargo xtask install` (binary, systemd unit and environment file).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, ensure_apt_tools, ensure_toolchain, output, run};

/// The static target of the image's binary.
const MUSL: &str = "x86_64-unknown-linux-musl";
/// The image's name; `deploy/kubernetes/base/daemonset.yaml` names the same.
pub const IMAGE: &str = "localhost/cgwatch";
/// Largest image accepted.
const MAX_IMAGE_BYTES: u64 = 20 << 20;

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Builds the static agent and the image `localhost/cgwatch:<version>` (also `:latest`); prints
/// and checks its size.
pub fn image(root: &Path, extra_tags: &[String]) -> Result<String> {
    ensure_toolchain()?;
    // ring (rustls's crypto) compiles C and assembly: for the musl target, with musl-gcc.
    ensure_apt_tools(&[("podman", "podman"), ("strip", "binutils"), ("musl-gcc", "musl-tools")])?;
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == MUSL) {
        eprintln!("xtask: installing the {MUSL} target (static binary for the image)");
        run(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    run(cargo(root).args(["build", "--release", "--target", MUSL, "-p", "cgwatch", "--bin", "cgwatch"]))?;

    let context = root.join("target/image");
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    let bin = context.join("cgwatch");
    fs::copy(root.join("target").join(MUSL).join("release/cgwatch"), &bin).context("copying the static binary")?;
    run(Command::new("strip").arg(&bin))?;

    let tag = format!("{IMAGE}:{}", version());
    let mut build = Command::new("podman");
    build
        .args(["build", "--quiet", "--format", "oci", "-f"])
        .arg(root.join("deploy/image/Containerfile"))
        .args(["--build-arg", &format!("VERSION={}", version())])
        .args(["-t", &tag, "-t", &format!("{IMAGE}:latest")]);
    for t in extra_tags {
        build.args(["-t", t]);
    }
    run(build.arg(&context))?;
    let size: u64 = output(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &tag]))?
        .trim()
        .parse()
        .context("podman image inspect: size")?;
    eprintln!("xtask: image {tag}: {:.1} MiB (limit {} MiB)", size as f64 / (1 << 20) as f64, MAX_IMAGE_BYTES >> 20);
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
