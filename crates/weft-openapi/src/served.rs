//! The documents as served: their bytes, built once, and the content hash that names them in
//! URLs (`?hash=`) and in `ETag`, which changes whenever a document does.

use serde_json::Value;
use sha2::{Digest, Sha512};

/// One served document.
pub struct Served {
    /// Its JSON.
    pub bytes: Vec<u8>,
    /// kube-apiserver's content hash: the upper-case hex SHA-512 of the bytes. `ETag` is it
    /// quoted; v3 URLs carry it as `?hash=`.
    pub hash: String,
}

impl Served {
    pub fn of(v: &Value) -> Served {
        // Serializing a `Value` cannot fail (its keys are strings).
        Served::of_bytes(serde_json::to_vec(v).unwrap_or_default())
    }

    pub fn of_bytes(bytes: Vec<u8>) -> Served {
        let hash = Sha512::digest(&bytes).iter().map(|b| format!("{b:02X}")).collect();
        Served { bytes, hash }
    }

    /// The `ETag` header's value.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.hash)
    }
}
