//! Certificates and password hashes for the TLS and basic auth tests, made at test time with
//! `openssl` and `htpasswd` (apache2-utils): a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate, and a second CA with its own server and client.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Key files and PEM certificates in a temporary directory: `ca`, `server` and `client` (signed
/// by `ca`), `other-ca`, `other-server` and `other-client` (signed by `other-ca`); each as
/// `NAME.pem` and `NAME.key`.
pub struct Pki {
    dir: tempfile::TempDir,
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo xtask test installs it)", args[0]));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=cgwatch test {ca}"));
            let mut args = vec!["openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &pem];
            args.extend(EC);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            run(d, &args);
        }
        let leaves = [
            ("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
            ("client", "ca", "subjectAltName=DNS:prometheus\nextendedKeyUsage=clientAuth\n"),
            ("other-server", "other-ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
            ("other-client", "other-ca", "subjectAltName=DNS:prometheus\nextendedKeyUsage=clientAuth\n"),
        ];
        for (name, ca, ext) in leaves {
            let ext_file = format!("{name}.ext");
            fs::write(d.join(&ext_file), format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}")).unwrap();
            let (key, csr, pem, subj) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("/CN={name}"));
            let mut args = vec!["openssl", "req", "-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr];
            args.extend(EC);
            run(d, &args);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            run(
                d,
                &[
                    "openssl", "x509", "-req", "-days", "2", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial",
                    "-out", &pem, "-extfile", &ext_file,
                ],
            );
        }
        Pki { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `NAME.pem` or `NAME.key`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn read(&self, file: &str) -> Vec<u8> {
        fs::read(self.path(file)).unwrap()
    }
}

/// A bcrypt hash of `password`, as `htpasswd -nbB` makes it (`$2y$`, cost 5).
pub fn bcrypt_hash(user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nbB", user, password])
        .output()
        .unwrap_or_else(|e| panic!("htpasswd: {e} (apache2-utils; cargo xtask test installs it)"));
    assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    let hash = line.trim().strip_prefix(&format!("{user}:")).expect("htpasswd prints user:hash").to_string();
    assert!(hash.starts_with("$2y$"), "{hash}");
    hash
}
