//! The job secret: the key of every handshake's HMAC.

use std::fmt;
use std::sync::Arc;

/// The job secret. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Wraps the bytes of a secret (as passed in `FERROVOD_SECRET`).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into().into())
    }

    /// A fresh secret: 32 random bytes, hex-encoded so that it can travel in the environment.
    /// Returns the text to export as `FERROVOD_SECRET`; `Secret::new(text)` is the same key.
    pub fn generate_hex() -> std::io::Result<String> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
        Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}
