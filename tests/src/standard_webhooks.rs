//! A reference implementation of the Standard Webhooks check, written
//! from the specification and independent of the engine's signer: HMAC-
//! SHA256 built from SHA-256 by hand (RFC 2104), base64 by the spec.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// HMAC-SHA256 per RFC 2104, from SHA-256 alone.
fn reference_hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::digest([ipad.as_slice(), message].concat());
    Sha256::digest([opad.as_slice(), inner.as_slice()].concat()).to_vec()
}

/// The Standard Webhooks check: some `v1,` signature of the header equals
/// `base64(HMAC(base64-decoded secret, "<id>.<timestamp>.<body>"))`.
///
/// # Panics
///
/// When `secret` is not `whsec_` + base64.
pub fn verifies(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    let expected = format!("v1,{}", STANDARD.encode(reference_hmac(&key, &signed)));
    header.split(' ').any(|s| s == expected)
}
