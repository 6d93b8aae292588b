//! Per-cluster passwords: random, URL-safe, and stored in the server only as a SCRAM verifier.

use anyhow::{Context, Result};
use std::io::Read;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// 24 characters from a 62-letter alphabet: about 143 bits of entropy.
pub const PASSWORD_LEN: usize = 24;

/// Random bytes from the kernel.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("cannot read random bytes from /dev/urandom")
}

/// A random string over `alphabet`, drawn without modulo bias.
pub fn random_string(alphabet: &[u8], len: usize) -> Result<String> {
    // Rejection sampling: bytes >= limit would make the first letters more likely.
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        random_bytes(&mut buf)?;
        for &b in buf.iter().filter(|&&b| (b as usize) < limit) {
            if out.len() == len {
                break;
            }
            out.push(alphabet[b as usize % alphabet.len()] as char);
        }
    }
    Ok(out)
}

/// A fresh password that needs no escaping in a URL, a DSN or a shell.
pub fn password() -> Result<String> {
    random_string(ALPHABET, PASSWORD_LEN)
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores, so the plain password never reaches the server.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_url_safe_and_distinct() {
        let a = password().unwrap();
        let b = password().unwrap();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn verifier_has_postgres_format() {
        assert!(scram_verifier("x").starts_with("SCRAM-SHA-256$4096:"));
    }
}
