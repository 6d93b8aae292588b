//! TLS on the TCP listener: a key and self-signed certificate in each data directory pgtmp
//! prepares (copies carry them), and the setting that turns TLS on when they are there.

use crate::os::process;
use crate::server::discover::Installation;
use crate::state::safefs;
use anyhow::{Context, Result};
use std::path::Path;

/// Where postgres looks for its certificate and key by default (`ssl_cert_file`,
/// `ssl_key_file`), relative to the data directory.
pub const CERT_FILE: &str = "server.crt";
pub const KEY_FILE: &str = "server.key";

/// The names a client may check the certificate against (`sslmode=verify-full`): the TCP
/// URL's host is 127.0.0.1, and `localhost` resolves to it.
const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// Adds a new key and a self-signed certificate for it to the data directory `data`, unless
/// the installation's postgres was built without TLS support (then nothing is added, and its
/// TCP clusters stay without TLS, as before). Run once per directory that initdb makes: the
/// pool's template, a `-d` directory, a schema cache entry; every copy has them for free.
pub fn add_certificate(install: &Installation, data: &Path) -> Result<()> {
    if !supports_tls(install, data)? {
        return Ok(());
    }
    let (cert, key) = self_signed()?;
    let dir = safefs::Dir::open(data)?;
    // Mode 0600, owned by the server account: postgres refuses a key others can read.
    dir.write_atomic(KEY_FILE, key.as_bytes())?;
    dir.write_atomic(CERT_FILE, cert.as_bytes())
}

/// An ECDSA P-256 key (what every TLS client accepts) and a certificate for [`NAMES`] signed
/// with it, both PEM.
fn self_signed() -> Result<(String, String)> {
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    let mut params =
        rcgen::CertificateParams::new(names).context("cannot describe a TLS certificate")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pgtmp");
    let key = rcgen::KeyPair::generate().context("cannot make a TLS key")?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign a TLS certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// True when the installation's postgres can serve TLS: `ssl_library` names the library it
/// was built with, and is empty without one (where `ssl=on` would keep it from starting).
fn supports_tls(install: &Installation, data: &Path) -> Result<bool> {
    let out = process::run_checked(
        process::pg_command(&install.postgres())
            .args(["-C", "ssl_library", "-D"])
            .arg(data),
        "postgres -C ssl_library",
    )?;
    Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
}

/// True when `data` holds the key and certificate: then a TCP start turns TLS on. Directories
/// made before pgtmp made them (or by an installation without TLS) have neither and start
/// without TLS.
pub fn has_certificate(data: &Path) -> bool {
    safefs::Dir::open(data).is_ok_and(|dir| dir.has_file(KEY_FILE) && dir.has_file(CERT_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_and_key_are_pem() {
        let (cert, key) = self_signed().unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        // A new key each time: no two templates share one.
        assert_ne!(self_signed().unwrap().1, key);
    }

    #[test]
    fn certificate_is_found_only_with_its_key() {
        let data = tempfile::tempdir().unwrap();
        assert!(!has_certificate(data.path()));
        std::fs::write(data.path().join(CERT_FILE), "x").unwrap();
        assert!(!has_certificate(data.path()));
        std::fs::write(data.path().join(KEY_FILE), "x").unwrap();
        assert!(has_certificate(data.path()));
    }
}
