//! AES-256-GCM sealing of workspace credentials.
//!
//! A credential's secret is stored as a [`Sealed`] value: the id of the key
//! that sealed it, a random 96-bit nonce (fresh for every seal) and the
//! ciphertext with its 16-byte GCM tag appended.
//!
//! The workspace id and the credential name are bound to the ciphertext as
//! associated data, so a sealed secret copied into another row (another
//! workspace, or another name in the same workspace) no longer opens. The
//! associated data is built unambiguously: a versioned domain-separation
//! prefix followed by each field as a big-endian `u64` length and its bytes,
//! so `("ab", "c")` and `("a", "bc")` differ.
//!
//! # Keys and rotation
//!
//! A [`Keyring`] holds the *current* key, which seals everything new, and
//! any number of old keys, which still open what they sealed. Keys are named
//! by an id derived from the key itself ([`Key::id`]), so no extra
//! configuration is needed: to rotate, make the new key current, keep the old
//! one in the ring, and [`Keyring::reseal`] every value for which
//! [`Keyring::needs_rotation`] is true; then drop the old key.
//!
//! Neither [`Key`]'s `Debug` output nor any [`CryptoError`] contains key
//! bytes or plaintext.
//!
//! # Zeroization
//!
//! Key bytes live in [`Zeroizing`] buffers and the AES key schedules are
//! zeroized on drop (aes-gcm's `zeroize` feature), so a dropped [`Key`] or
//! cipher leaves no key material behind; [`Keyring::open`] returns the
//! plaintext in a [`Zeroizing`] buffer, wiped when the caller drops it, and
//! [`Keyring::reseal`] wipes the plaintext it passes through. Copies a caller
//! makes (a parsed JSON map of fields, say) are the caller's to wipe.
//!
//! # Bearer tokens
//!
//! What a caller presents to prove who it is (an API key, a console session
//! or sign-in link, an OAuth `state`) is stored as its [`token_digest`], so
//! the rows that find it hold nothing a reader of the table could present.

use std::fmt;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{AeadCore, Aes256Gcm};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize as _, Zeroizing};

/// Length of a [`Key`] in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Length of a nonce in bytes (96 bits, the GCM standard size).
pub const NONCE_LEN: usize = 12;

/// Length of the GCM authentication tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// What the database keeps of a bearer token: its SHA-256. The tokens are
/// 256 random bits (a sign-in link: a signed JWT, kept only to refuse its
/// second use), not passwords, so a plain hash is enough to make a stolen
/// digest useless; a salt or a slow hash would only slow the lookup.
pub fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Domain-separation prefix of the associated data of a sealed credential.
const AAD_PREFIX: &[u8] = b"conveyor/credential/v1\0";

/// Domain-separation prefix of the hash a key id is derived from.
const KEY_ID_PREFIX: &[u8] = b"conveyor/key-id/v1\0";

/// Number of hex characters of a key id (64 bits of SHA-256).
const KEY_ID_HEX_LEN: usize = 16;

type AesNonce = aes_gcm::aead::Nonce<Aes256Gcm>;

/// Errors of credential sealing and opening.
///
/// No variant carries plaintext or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A key could not be read: not standard base64, or not 32 bytes.
    #[error("invalid credentials key: {reason}")]
    InvalidKey {
        /// Why the key was rejected (never the key itself).
        reason: String,
    },
    /// The sealed value names a key that is not in the keyring.
    #[error(
        "credential was sealed with key `{key_id}`, which is not in the keyring \
         (add it to the old keys to decrypt it)"
    )]
    UnknownKeyId {
        /// The key id recorded with the sealed value.
        key_id: String,
    },
    /// The stored nonce does not have the GCM nonce length.
    #[error("sealed credential has a nonce of {len} bytes, expected {NONCE_LEN}")]
    InvalidNonce {
        /// The length of the stored nonce.
        len: usize,
    },
    /// Authentication failed: the ciphertext or nonce was altered, or the
    /// value belongs to another workspace or credential name.
    #[error(
        "credential could not be decrypted: it was altered or does not belong to \
         this workspace and credential name"
    )]
    Decrypt,
    /// Encryption failed (the plaintext is beyond the AES-GCM size limit).
    #[error("credential could not be encrypted")]
    Encrypt,
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Rng(String),
}

/// An AES-256 key for sealing credentials.
///
/// `Debug` prints only the key id, never the key bytes.
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    id: String,
}

impl Key {
    /// Builds a key from its raw 32 bytes (the copy passed in is zeroized).
    #[must_use]
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Key {
        let key = Key::from_secret(Zeroizing::new(bytes));
        bytes.zeroize();
        key
    }

    fn from_secret(bytes: Zeroizing<[u8; KEY_LEN]>) -> Key {
        let id = key_id(&bytes);
        Key { bytes, id }
    }

    /// Reads a key from standard base64 (with padding) of exactly 32 bytes.
    ///
    /// Surrounding whitespace (such as a trailing newline from a file) is
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`CryptoError::InvalidKey`] if the text is not standard base64 or
    /// does not decode to exactly 32 bytes. The message never contains the
    /// key text.
    pub fn from_base64(text: &str) -> Result<Key, CryptoError> {
        let decoded =
            Zeroizing::new(
                BASE64
                    .decode(text.trim())
                    .map_err(|_| CryptoError::InvalidKey {
                        reason: "not valid standard base64".to_owned(),
                    })?,
            );
        if decoded.len() != KEY_LEN {
            return Err(CryptoError::InvalidKey {
                reason: format!(
                    "decodes to {} bytes, expected {KEY_LEN} (generate one with \
                     `openssl rand -base64 32`)",
                    decoded.len()
                ),
            });
        }
        let mut bytes = Zeroizing::new([0; KEY_LEN]);
        bytes.copy_from_slice(&decoded);
        Ok(Key::from_secret(bytes))
    }

    /// Generates a random key from the operating system's secure random
    /// number generator.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    #[must_use]
    pub fn generate() -> Key {
        let mut generated = aes_gcm::Key::<Aes256Gcm>::generate();
        let mut bytes = Zeroizing::new([0; KEY_LEN]);
        bytes.copy_from_slice(&generated);
        generated.as_mut_slice().zeroize();
        Key::from_secret(bytes)
    }

    /// The key as standard base64 (the form [`Key::from_base64`] reads),
    /// for printing a generated key; the text is not zeroized.
    #[must_use]
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.bytes.as_slice())
    }

    /// The key's id: the first 16 hex characters of SHA-256 over a
    /// domain-separation prefix and the key bytes.
    ///
    /// Stable for a given key, so it names the key in stored values without
    /// any configuration.
    #[must_use]
    pub fn id(&self) -> String {
        self.id.clone()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.bytes).into())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn key_id(bytes: &[u8; KEY_LEN]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(KEY_ID_PREFIX);
    hasher.update(bytes);
    let digest = hasher.finalize();
    let mut id = String::with_capacity(KEY_ID_HEX_LEN);
    for byte in &digest[..KEY_ID_HEX_LEN / 2] {
        id.push(hex_digit(byte >> 4));
        id.push(hex_digit(byte & 0x0f));
    }
    id
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

/// A sealed credential secret, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the key that sealed it (see [`Key::id`]).
    pub key_id: String,
    /// The random 96-bit nonce used for this seal.
    pub nonce: Vec<u8>,
    /// The ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
}

/// The current key, which seals, and old keys, which still open what they
/// sealed.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: Key,
    others: Vec<Key>,
}

impl Keyring {
    /// Builds a keyring. Old keys equal to the current key, and duplicates,
    /// are ignored.
    #[must_use]
    pub fn new(current: Key, old_keys: impl IntoIterator<Item = Key>) -> Keyring {
        let mut others: Vec<Key> = Vec::new();
        for key in old_keys {
            if key.id != current.id && others.iter().all(|k| k.id != key.id) {
                others.push(key);
            }
        }
        Keyring { current, others }
    }

    /// The id of the current key, the one new values are sealed with.
    #[must_use]
    pub fn current_id(&self) -> String {
        self.current.id()
    }

    /// The ids of all keys in the ring, the current one first.
    #[must_use]
    pub fn key_ids(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.others)
            .map(Key::id)
            .collect()
    }

    /// Seals `plaintext` with the current key and a fresh random nonce,
    /// bound to `workspace_id` and the credential `name`.
    ///
    /// # Errors
    ///
    /// [`CryptoError::Rng`] if no nonce could be generated;
    /// [`CryptoError::Encrypt`] if the plaintext exceeds the AES-GCM limit.
    pub fn seal(
        &self,
        workspace_id: &str,
        name: &str,
        plaintext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let nonce = AesNonce::try_generate().map_err(|e| CryptoError::Rng(e.to_string()))?;
        let aad = associated_data(workspace_id, name);
        let ciphertext = self
            .current
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        Ok(Sealed {
            key_id: self.current.id(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a sealed value with the key it names (current or old), checking
    /// that it belongs to `workspace_id` and the credential `name`. The
    /// plaintext is zeroized when the returned buffer is dropped.
    ///
    /// # Errors
    ///
    /// [`CryptoError::UnknownKeyId`] if its key is not in the ring,
    /// [`CryptoError::InvalidNonce`] if the nonce is not 12 bytes, and
    /// [`CryptoError::Decrypt`] if authentication fails (tampered data, or
    /// another workspace or name).
    pub fn open(
        &self,
        workspace_id: &str,
        name: &str,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key = self.key(&sealed.key_id)?;
        let nonce =
            AesNonce::try_from(sealed.nonce.as_slice()).map_err(|_| CryptoError::InvalidNonce {
                len: sealed.nonce.len(),
            })?;
        let aad = associated_data(workspace_id, name);
        key.cipher()
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }

    /// Whether `sealed` was sealed with a key other than the current one and
    /// should be [resealed](Keyring::reseal).
    #[must_use]
    pub fn needs_rotation(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.current.id
    }

    /// Opens `sealed` (with whichever key of the ring sealed it) and seals
    /// the plaintext again with the current key and a fresh nonce.
    ///
    /// # Errors
    ///
    /// Any error of [`Keyring::open`] or [`Keyring::seal`].
    pub fn reseal(
        &self,
        workspace_id: &str,
        name: &str,
        sealed: &Sealed,
    ) -> Result<Sealed, CryptoError> {
        let plaintext = self.open(workspace_id, name, sealed)?;
        self.seal(workspace_id, name, &plaintext)
    }

    fn key(&self, key_id: &str) -> Result<&Key, CryptoError> {
        std::iter::once(&self.current)
            .chain(&self.others)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKeyId {
                key_id: key_id.to_owned(),
            })
    }
}

/// `prefix || u64be(len(workspace_id)) || workspace_id || u64be(len(name)) || name`
fn associated_data(workspace_id: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 16 + workspace_id.len() + name.len());
    aad.extend_from_slice(AAD_PREFIX);
    for field in [workspace_id, name] {
        aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad.extend_from_slice(field.as_bytes());
    }
    aad
}

// Keep the nonce length constant honest against the cipher's type.
const _: () = {
    use aes_gcm::aead::array::typenum::Unsigned;
    assert!(<Aes256Gcm as AeadCore>::NonceSize::USIZE == NONCE_LEN);
    assert!(<Aes256Gcm as AeadCore>::TagSize::USIZE == TAG_LEN);
};

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &str = "0190a6c4-workspace-a";
    const NAME: &str = "hubspot";
    const SECRET: &[u8] = b"pat-na1-0123456789abcdef-super-secret-token";

    fn ring() -> Keyring {
        Keyring::new(Key::generate(), [])
    }

    #[test]
    fn a_token_is_kept_as_its_sha256() {
        // FIPS 180-2's test vector: SHA-256("abc").
        let hex: String = token_digest("abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(token_digest("token-a"), token_digest("token-b"));
    }

    #[test]
    fn roundtrip() {
        let ring = ring();
        let sealed = ring.seal(WS, NAME, SECRET).unwrap();
        assert_eq!(sealed.key_id, ring.current_id());
        assert_eq!(sealed.nonce.len(), NONCE_LEN);
        assert_eq!(sealed.ciphertext.len(), SECRET.len() + TAG_LEN);
        assert_eq!(ring.open(WS, NAME, &sealed).unwrap().as_slice(), SECRET);
        assert!(!ring.needs_rotation(&sealed));
    }

    #[test]
    fn empty_plaintext_roundtrips() {
        let ring = ring();
        let sealed = ring.seal(WS, NAME, b"").unwrap();
        assert!(ring.open(WS, NAME, &sealed).unwrap().is_empty());
    }

    #[test]
    fn bound_to_workspace_and_name() {
        let ring = ring();
        let sealed = ring.seal(WS, NAME, SECRET).unwrap();
        assert_eq!(
            ring.open("other-workspace", NAME, &sealed),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            ring.open(WS, "other-name", &sealed),
            Err(CryptoError::Decrypt)
        );
        // Moving bytes between the two fields must not help.
        let sealed = ring.seal("ab", "c", SECRET).unwrap();
        assert_eq!(ring.open("a", "bc", &sealed), Err(CryptoError::Decrypt));
        assert_eq!(ring.open("ab", "c", &sealed).unwrap().as_slice(), SECRET);
    }

    #[test]
    fn associated_data_is_unambiguous() {
        assert_ne!(associated_data("ab", "c"), associated_data("a", "bc"));
        assert_ne!(associated_data("", "ab"), associated_data("ab", ""));
    }

    #[test]
    fn tampering_is_detected() {
        let ring = ring();
        let sealed = ring.seal(WS, NAME, SECRET).unwrap();
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 0x01;
            assert_eq!(
                ring.open(WS, NAME, &bad),
                Err(CryptoError::Decrypt),
                "ciphertext byte {i}"
            );
        }
        for i in 0..sealed.nonce.len() {
            let mut bad = sealed.clone();
            bad.nonce[i] ^= 0x80;
            assert_eq!(
                ring.open(WS, NAME, &bad),
                Err(CryptoError::Decrypt),
                "nonce byte {i}"
            );
        }
        let mut truncated = sealed.clone();
        truncated.ciphertext.pop();
        assert_eq!(ring.open(WS, NAME, &truncated), Err(CryptoError::Decrypt));
        let mut short_nonce = sealed;
        short_nonce.nonce.pop();
        assert_eq!(
            ring.open(WS, NAME, &short_nonce),
            Err(CryptoError::InvalidNonce { len: NONCE_LEN - 1 })
        );
    }

    #[test]
    fn plaintext_does_not_appear_in_output() {
        let ring = ring();
        let sealed = ring.seal(WS, NAME, SECRET).unwrap();
        let mut stored = sealed.nonce.clone();
        stored.extend_from_slice(&sealed.ciphertext);
        // No 4-byte window of the secret shows up in what is stored.
        for window in SECRET.windows(4) {
            assert!(
                !stored.windows(4).any(|w| w == window),
                "plaintext fragment leaked"
            );
        }
    }

    #[test]
    fn fresh_nonce_per_seal() {
        let ring = ring();
        let a = ring.seal(WS, NAME, SECRET).unwrap();
        let b = ring.seal(WS, NAME, SECRET).unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn rotation() {
        let old = Key::generate();
        let old_ring = Keyring::new(old.clone(), []);
        let sealed = old_ring.seal(WS, NAME, SECRET).unwrap();

        let new = Key::generate();
        let ring = Keyring::new(new.clone(), [old.clone()]);
        assert_eq!(ring.current_id(), new.id());
        assert_eq!(ring.key_ids(), vec![new.id(), old.id()]);
        assert!(ring.needs_rotation(&sealed));
        assert_eq!(ring.open(WS, NAME, &sealed).unwrap().as_slice(), SECRET);

        let resealed = ring.reseal(WS, NAME, &sealed).unwrap();
        assert_eq!(resealed.key_id, new.id());
        assert!(!ring.needs_rotation(&resealed));
        assert_eq!(ring.open(WS, NAME, &resealed).unwrap().as_slice(), SECRET);

        // Once the old key is dropped, only the resealed value opens.
        let new_only = Keyring::new(new, []);
        assert_eq!(
            new_only.open(WS, NAME, &resealed).unwrap().as_slice(),
            SECRET
        );
        assert_eq!(
            new_only.open(WS, NAME, &sealed),
            Err(CryptoError::UnknownKeyId { key_id: old.id() })
        );
    }

    #[test]
    fn unknown_key_id() {
        let ring = ring();
        let mut sealed = ring.seal(WS, NAME, SECRET).unwrap();
        sealed.key_id = "0000000000000000".to_owned();
        let err = ring.open(WS, NAME, &sealed).unwrap_err();
        assert_eq!(
            err,
            CryptoError::UnknownKeyId {
                key_id: "0000000000000000".to_owned()
            }
        );
        assert!(err.to_string().contains("0000000000000000"));
    }

    #[test]
    fn keyring_ignores_duplicate_keys() {
        let a = Key::generate();
        let b = Key::generate();
        let ring = Keyring::new(a.clone(), [a.clone(), b.clone(), b.clone()]);
        assert_eq!(ring.key_ids(), vec![a.id(), b.id()]);
    }

    #[test]
    fn key_base64_roundtrip_and_stable_id() {
        let key = Key::generate();
        let text = key.to_base64();
        let back = Key::from_base64(&text).unwrap();
        assert_eq!(back.id(), key.id());
        assert_eq!(back.to_base64(), text);
        assert_eq!(
            Key::from_base64(&format!("{text}\n")).unwrap().id(),
            key.id()
        );
        assert_eq!(key.id().len(), KEY_ID_HEX_LEN);
        assert!(key.id().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(key.id(), Key::generate().id());
        // Known answer: the id depends only on the key bytes.
        let zero = Key::from_bytes([0; KEY_LEN]);
        assert_eq!(zero.id(), key_id(&[0; KEY_LEN]));
        assert_eq!(zero.id(), Key::from_bytes([0; KEY_LEN]).id());
    }

    #[test]
    fn bad_keys_rejected() {
        let err = Key::from_base64("not base64 at all!").unwrap_err();
        assert!(matches!(err, CryptoError::InvalidKey { .. }), "{err}");
        assert!(err.to_string().contains("base64"));

        let short = BASE64.encode([7u8; 16]);
        let err = Key::from_base64(&short).unwrap_err();
        assert!(err.to_string().contains("16 bytes"), "{err}");
        assert!(!err.to_string().contains(&short));

        let long = BASE64.encode([7u8; 33]);
        assert!(Key::from_base64(&long).is_err());
        assert!(Key::from_base64("").is_err());
    }

    #[test]
    fn debug_and_errors_do_not_leak_secrets() {
        let key = Key::from_bytes([0xAB; KEY_LEN]);
        let debug = format!("{key:?} {:?}", Keyring::new(key.clone(), []));
        assert!(!debug.contains(&key.to_base64()));
        assert!(!debug.to_lowercase().contains("abab"));
        assert!(!debug.contains("171"));
        assert!(debug.contains(&key.id()));

        let ring = Keyring::new(key, []);
        let sealed = ring.seal(WS, NAME, SECRET).unwrap();
        let err = ring.open("other", NAME, &sealed).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains(std::str::from_utf8(SECRET).unwrap()));
    }

    /// Bytes from hex, for the known answers below.
    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn counting_key() -> Key {
        let mut bytes = [0; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::try_from(i).expect("small");
        }
        Key::from_bytes(bytes)
    }

    #[test]
    fn key_ids_match_known_answers() {
        // First 8 bytes of SHA-256("conveyor/key-id/v1\0" || key), computed
        // independently (Python hashlib).
        assert_eq!(Key::from_bytes([0; KEY_LEN]).id(), "0fe2f2c9fe5ed293");
        assert_eq!(counting_key().id(), "1d39997976e38ea7");
    }

    #[test]
    fn associated_data_matches_the_documented_layout() {
        assert_eq!(
            associated_data("ws-1", "crm"),
            hex(concat!(
                "636f6e7665796f722f63726564656e7469616c2f763100", // prefix
                "0000000000000004",
                "77732d31", // ws-1
                "0000000000000003",
                "63726d", // crm
            ))
        );
    }

    #[test]
    fn opens_a_value_sealed_by_an_independent_aes_gcm() {
        // AES-256-GCM from Python's `cryptography`, with the key 00..1f, the
        // nonce 64..6f and the associated data above: this pins the cipher,
        // the key bytes used and the associated data layout.
        let ring = Keyring::new(counting_key(), []);
        let sealed = Sealed {
            key_id: counting_key().id(),
            nonce: hex("6465666768696a6b6c6d6e6f"),
            ciphertext: hex("237aaa4b0a8c35ec5b1667052cdf8dbf3124161eca0ca8802d2b"),
        };
        assert_eq!(
            ring.open("ws-1", "crm", &sealed).unwrap().as_slice(),
            b"kat-secret"
        );
        assert_eq!(ring.open("ws-1", "crn", &sealed), Err(CryptoError::Decrypt));
        // The same key read from base64 opens it too.
        let ring = Keyring::new(Key::from_base64(&counting_key().to_base64()).unwrap(), []);
        assert_eq!(
            ring.open("ws-1", "crm", &sealed).unwrap().as_slice(),
            b"kat-secret"
        );
        assert_eq!(
            counting_key().to_base64(),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        );
    }

    #[test]
    fn a_key_opens_only_what_it_sealed() {
        let a = Keyring::new(Key::generate(), []);
        let b = Keyring::new(Key::generate(), []);
        let mut sealed = a.seal(WS, NAME, SECRET).unwrap();
        // Relabelled with b's key id, a's ciphertext does not open with b.
        sealed.key_id = b.current_id();
        assert_eq!(b.open(WS, NAME, &sealed), Err(CryptoError::Decrypt));
    }

    #[test]
    fn rotation_keeps_old_keys_in_order_and_reseals_with_the_current_one() {
        let (k1, k2, k3) = (Key::generate(), Key::generate(), Key::generate());
        let ring = Keyring::new(k3.clone(), [k1.clone(), k2.clone()]);
        assert_eq!(ring.key_ids(), vec![k3.id(), k1.id(), k2.id()]);
        for old in [&k1, &k2] {
            let sealed = Keyring::new(old.clone(), [])
                .seal(WS, NAME, SECRET)
                .unwrap();
            assert!(ring.needs_rotation(&sealed));
            let resealed = ring.reseal(WS, NAME, &sealed).unwrap();
            assert_eq!(resealed.key_id, k3.id());
            assert!(!ring.needs_rotation(&resealed));
            assert_ne!(resealed.nonce, sealed.nonce);
            assert_eq!(
                Keyring::new(k3.clone(), [])
                    .open(WS, NAME, &resealed)
                    .unwrap()
                    .as_slice(),
                SECRET
            );
            // A reseal stays bound to the same workspace and name.
            assert_eq!(ring.open(WS, "other", &resealed), Err(CryptoError::Decrypt));
            assert_eq!(
                ring.reseal("other", NAME, &sealed),
                Err(CryptoError::Decrypt)
            );
        }
    }

    #[test]
    fn key_length_is_checked_exactly() {
        for len in [0, 1, KEY_LEN - 1, KEY_LEN + 1, 64] {
            let err = Key::from_base64(&BASE64.encode(vec![9u8; len])).unwrap_err();
            assert!(
                err.to_string().contains(&format!("decodes to {len} bytes")),
                "{err}"
            );
        }
        let key = Key::from_base64(&BASE64.encode([9u8; KEY_LEN])).unwrap();
        assert_eq!(key.id(), Key::from_bytes([9; KEY_LEN]).id());
        assert_eq!(key.to_base64(), BASE64.encode([9u8; KEY_LEN]));
    }
}
