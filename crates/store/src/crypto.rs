//! Encryption at rest of data objects: XChaCha20-Poly1305 in the STREAM
//! construction (RustCrypto `chacha20poly1305` + `aead::stream`), 64 KiB
//! segments.
//!
//! ```text
//! stored object = header || segment_0 || ... || segment_n
//! header (35 bytes) = "WSENC\0" | version u8 = 1 | log2(segment size) u8 = 16
//!                   | key id (8 bytes) | nonce prefix (19 random bytes)
//! segment_i = XChaCha20-Poly1305(key, nonce = prefix || i (u32 BE) || last flag u8,
//!                                aad = header, up to 64 KiB of plaintext) (+ 16-byte tag)
//! ```
//!
//! # Why this design
//!
//! * **Vetted primitives, no home-made crypto**: the AEAD and the STREAM
//!   construction (Hoang, Reyhanitabar, Rogaway, Vizár: "Online
//!   Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance") come
//!   from RustCrypto. `age` was the alternative; its crate adds about 130
//!   crates (i18n, x25519, scrypt, bech32) to the tree, this about ten.
//! * **Online and bounded**: one 64 KiB segment is authenticated at a time,
//!   so nothing unauthenticated is ever handed to zstd or to the caller's
//!   writer, and memory does not grow with the object.
//! * **Truncation, reordering and splicing are detected**: each segment's
//!   nonce carries its index and a last-segment flag; a stream cut at a
//!   segment boundary ends with a segment not sealed as the last one and
//!   fails. The header is the associated data of every segment, so a
//!   changed header byte fails too.
//! * **Random per-object nonce prefix**: XChaCha's 192-bit nonce leaves 19
//!   random bytes per object, so nonce reuse by chance is negligible
//!   without any counter state to keep in the repository.
//! * **Key id**: the first 8 bytes of SHA-256("warmspare key id v1" || key),
//!   recorded in the header and in [`crate::ObjectInfo`], so that a wrong key
//!   is reported as such before any decryption ("wrong key"), and a missing
//!   key as "encrypted; configure encryption_key_file". The id reveals
//!   nothing usable about a 256-bit random key.
//! * **Bound to the key**: a data object is bound to the key by the
//!   authenticated manifest that names it (digests and key id); a sealed
//!   object (WAL, inventory) by its encryption, and to its name by its
//!   seal's MAC (the encryption does not bind the path; `codec/sealed.rs`),
//!   so a reader with a key refuses one that is not encrypted
//!   ([`Error::Unencrypted`]) unless the repository allows objects from
//!   before encryption was turned on
//!   ([`crate::StoreConfig::allow_unencrypted`]).
//!
//! Not encrypted: manifests, `FORMAT`, the lease and the recorded sizes and
//! digests stay readable (the SHA-256 of the content can confirm a guess of
//! a whole object's content); the key file is the only secret. Manifests
//! are *authenticated* instead: HMAC-SHA256 under a subkey derived from the
//! key by HKDF ([`MAC_HKDF_INFO`]), see [`crate::record`].

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use chacha20poly1305::aead::generic_array::GenericArray;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Plaintext bytes per segment.
pub(crate) const SEGMENT: usize = 64 * 1024;
const SEGMENT_LOG2: u8 = 16;
const TAG: usize = 16;
const MAGIC: &[u8; 6] = b"WSENC\0";
const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const NONCE_PREFIX: usize = 19;
/// Length of the header that opens an encrypted object.
pub const HEADER_LEN: usize = MAGIC.len() + 2 + KEY_ID_LEN + NONCE_PREFIX;

/// The HKDF info string of the metadata MAC subkey (see
/// [`crate::record`]). Fixed: changing it invalidates every MAC.
pub const MAC_HKDF_INFO: &[u8] = b"warmspare metadata mac v1";

/// A 256-bit key for encryption at rest.
///
/// Built from key bytes (the caller reads the key file: this crate reads no
/// files). `Debug` shows the key id only; the key is zeroed on drop.
#[derive(Clone)]
pub struct EncryptionKey {
    key: Arc<Zeroizing<[u8; 32]>>,
    id: [u8; KEY_ID_LEN],
}

impl EncryptionKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let key = Zeroizing::new(bytes);
        let digest = Sha256::new()
            .chain_update(b"warmspare key id v1")
            .chain_update(key.as_slice())
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self {
            key: Arc::new(key),
            id,
        }
    }

    /// A key from the contents of a key file: 32 bytes written as 64 hex
    /// digits (`openssl rand -hex 32`) or as base64 (`openssl rand -base64
    /// 32`), surrounding whitespace ignored. A key whose bytes are all
    /// equal (an all-zero placeholder) is refused.
    pub fn from_text(text: &[u8]) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidKey {
            reason: reason.to_string(),
        };
        let text = Zeroizing::new(text.trim_ascii().to_vec());
        let bytes: Zeroizing<Vec<u8>> = if text.len() == 64 {
            Zeroizing::new(
                hex::decode(text.as_slice())
                    .map_err(|_| invalid("64 characters but not hex digits"))?,
            )
        } else {
            Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_slice())
                    .map_err(|_| {
                        invalid("expected 32 bytes as 64 hex digits or as base64 (44 characters)")
                    })?,
            )
        };
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            invalid(&format!(
                "the key is {} bytes long, not 32 (generate one with `openssl rand -hex 32`)",
                bytes.len()
            ))
        })?;
        let key = Zeroizing::new(key);
        if key.iter().all(|b| *b == key[0]) {
            return Err(invalid("all its bytes are equal: not a random key"));
        }
        Ok(Self::from_bytes(*key))
    }

    /// A fresh random key (for `key generate` commands and tests).
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut_slice());
        Self::from_bytes(*key)
    }

    /// The key as 64 hex digits, the key file format (for `key generate`).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.key.as_slice()))
    }

    /// The key id: 16 hex digits identifying the key without revealing it.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// The subkey that authenticates metadata records (manifests, and
    /// the records other crates seal with [`crate::record`]):
    /// HKDF-SHA256 of the key, no salt, info [`MAC_HKDF_INFO`], 32 bytes.
    /// Never the data key itself, so that a MAC and a ciphertext never
    /// share a key.
    pub(crate) fn mac_subkey(&self) -> Zeroizing<[u8; 32]> {
        let mut okm = Zeroizing::new([0u8; 32]);
        // `expand` fails only for outputs longer than 255 * 32 bytes.
        let _ = hkdf::Hkdf::<Sha256>::new(None, self.key.as_slice())
            .expand(MAC_HKDF_INFO, okm.as_mut_slice());
        okm
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(GenericArray::from_slice(self.key.as_slice()))
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey(id {})", self.id())
    }
}

impl PartialEq for EncryptionKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for EncryptionKey {}

/// Whether data objects are encrypted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encryption {
    /// Not encrypted (objects that are encrypted cannot be read).
    #[default]
    Off,
    /// Encryption is configured but its key was not loaded by the program
    /// (`source` names where it is configured, such as the key file's
    /// path). Fails closed: every write through the codec is refused, so
    /// that configured encryption never silently yields plaintext.
    KeyNotLoaded {
        /// Where the key is configured; shown in messages.
        source: String,
    },
    /// Encrypt every data object with this key; read objects written with
    /// it, and unencrypted ones that an authenticated manifest names.
    /// Unencrypted objects that describe their own encoding (sealed WAL
    /// objects, inventories) are refused unless the codec allows them
    /// ([`crate::Codec::with_allow_unencrypted`]).
    Key(EncryptionKey),
}

impl Encryption {
    /// Whether encryption is configured (with or without its key loaded).
    pub fn is_enabled(&self) -> bool {
        !matches!(self, Self::Off)
    }

    /// The key, when loaded.
    pub fn key(&self) -> Option<&EncryptionKey> {
        match self {
            Self::Key(key) => Some(key),
            _ => None,
        }
    }
}

/// A decryption failure: the object was altered, damaged or truncated.
#[derive(Debug)]
pub(crate) struct DecryptError(pub(crate) String);

impl fmt::Display for DecryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecryptError {}

/// The key id (16 hex digits) named by an encryption header at the start of
/// `bytes`, when they start with one this build reads (magic, version,
/// segment size); `None` otherwise. For objects that carry no record of
/// their own encoding (content-addressed artifact blobs): whether they are
/// encrypted, and with which key, is read from their first bytes.
pub fn header_key_id(bytes: &[u8]) -> Option<String> {
    let h = bytes.get(..HEADER_LEN)?;
    (&h[..6] == MAGIC && h[6] == VERSION && h[7] == SEGMENT_LOG2)
        .then(|| hex::encode(&h[8..8 + KEY_ID_LEN]))
}

/// The reason of a decryption failure hidden in an I/O error, if it is one.
pub fn decrypt_failure(e: &io::Error) -> Option<&str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<DecryptError>())
        .map(|d| d.0.as_str())
}

/// Encrypts what `inner` yields (the encryption stage of `Codec::put`):
/// the header, then the segments, in bounded memory. Public for objects
/// that are not written through the codec (content-addressed blobs).
pub struct EncryptReader<R> {
    inner: R,
    stream: Option<EncryptorBE32<XChaCha20Poly1305>>,
    aad: [u8; HEADER_LEN],
    plain: Box<[u8]>,
    filled: usize,
    eof: bool,
    out: Vec<u8>,
    out_pos: usize,
}

impl<R> EncryptReader<R> {
    /// Encrypts `inner` with `key` and a fresh random nonce prefix.
    pub fn new(key: &EncryptionKey, inner: R) -> Self {
        let mut nonce = [0u8; NONCE_PREFIX];
        rand::rng().fill_bytes(&mut nonce);
        let mut header = [0u8; HEADER_LEN];
        header[..6].copy_from_slice(MAGIC);
        header[6] = VERSION;
        header[7] = SEGMENT_LOG2;
        header[8..8 + KEY_ID_LEN].copy_from_slice(&key.id);
        header[8 + KEY_ID_LEN..].copy_from_slice(&nonce);
        let stream = EncryptorBE32::from_aead(key.cipher(), GenericArray::from_slice(&nonce));
        let mut out = Vec::with_capacity(SEGMENT + TAG);
        out.extend_from_slice(&header);
        Self {
            inner,
            stream: Some(stream),
            aad: header,
            plain: vec![0u8; SEGMENT + 1].into_boxed_slice(),
            filled: 0,
            eof: false,
            out,
            out_pos: 0,
        }
    }

    /// The plaintext reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The plaintext reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for EncryptReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.stream.is_none() {
                return Poll::Ready(Ok(()));
            }
            // One byte more than a segment: whether more follows decides
            // whether this segment is the last.
            while !this.eof && this.filled <= SEGMENT {
                let mut rb = ReadBuf::new(&mut this.plain[this.filled..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                match rb.filled().len() {
                    0 => this.eof = true,
                    n => this.filled += n,
                }
            }
            this.out.clear();
            this.out_pos = 0;
            if this.filled > SEGMENT {
                this.out.extend_from_slice(&this.plain[..SEGMENT]);
                if let Some(stream) = this.stream.as_mut() {
                    stream
                        .encrypt_next_in_place(&this.aad, &mut this.out)
                        .map_err(|_| io::Error::other("too many segments to encrypt"))?;
                }
                this.plain.copy_within(SEGMENT..this.filled, 0);
                this.filled -= SEGMENT;
            } else if let Some(stream) = this.stream.take() {
                this.out.extend_from_slice(&this.plain[..this.filled]);
                this.filled = 0;
                stream
                    .encrypt_last_in_place(&this.aad, &mut this.out)
                    .map_err(|_| io::Error::other("encryption failed"))?;
            }
        }
    }
}

/// Decrypts and authenticates what `inner` yields (the decryption stage of
/// `Codec::get`). Every failure is a decryption error inside the I/O
/// error; errors of `inner` pass through unchanged ([`decrypt_failure`]
/// tells them apart). Public for objects that are not read through the
/// codec.
pub struct DecryptReader<R> {
    inner: R,
    key: EncryptionKey,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    stream: Option<DecryptorBE32<XChaCha20Poly1305>>,
    seg: Box<[u8]>,
    filled: usize,
    eof: bool,
    index: u64,
    done: bool,
    failed: Option<String>,
    out: Vec<u8>,
    out_pos: usize,
}

impl<R> DecryptReader<R> {
    /// Decrypts `inner`, an encrypted object written with `key`.
    pub fn new(key: &EncryptionKey, inner: R) -> Self {
        Self {
            inner,
            key: key.clone(),
            header: [0u8; HEADER_LEN],
            header_filled: 0,
            stream: None,
            seg: vec![0u8; SEGMENT + TAG + 1].into_boxed_slice(),
            filled: 0,
            eof: false,
            index: 0,
            done: false,
            failed: None,
            out: Vec::with_capacity(SEGMENT + TAG),
            out_pos: 0,
        }
    }

    /// The encrypted reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The encrypted reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn fail(&mut self, reason: String) -> io::Error {
        self.failed = Some(reason.clone());
        io::Error::new(io::ErrorKind::InvalidData, DecryptError(reason))
    }

    fn check_header(&mut self) -> io::Result<()> {
        let h = self.header;
        if &h[..6] != MAGIC {
            return Err(self.fail("no encryption header (not an encrypted object)".into()));
        }
        if h[6] != VERSION || h[7] != SEGMENT_LOG2 {
            return Err(self.fail(format!(
                "encryption header version {} with segment size 2^{} is not supported",
                h[6], h[7]
            )));
        }
        if h[8..8 + KEY_ID_LEN] != self.key.id {
            return Err(self.fail(format!(
                "its encryption header names key id {}, not the recorded {}",
                hex::encode(&h[8..8 + KEY_ID_LEN]),
                self.key.id()
            )));
        }
        self.stream = Some(DecryptorBE32::from_aead(
            self.key.cipher(),
            GenericArray::from_slice(&h[8 + KEY_ID_LEN..]),
        ));
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DecryptReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(reason) = &this.failed {
                let reason = reason.clone();
                return Poll::Ready(Err(this.fail(reason)));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            if this.stream.is_none() {
                while this.header_filled < HEADER_LEN {
                    let mut rb = ReadBuf::new(&mut this.header[this.header_filled..]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    match rb.filled().len() {
                        0 => {
                            return Poll::Ready(Err(
                                this.fail("shorter than its encryption header".into())
                            ));
                        }
                        n => this.header_filled += n,
                    }
                }
                this.check_header()?;
            }
            while !this.eof && this.filled <= SEGMENT + TAG {
                let mut rb = ReadBuf::new(&mut this.seg[this.filled..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                match rb.filled().len() {
                    0 => this.eof = true,
                    n => this.filled += n,
                }
            }
            this.out.clear();
            this.out_pos = 0;
            let index = this.index;
            if this.filled > SEGMENT + TAG {
                this.out.extend_from_slice(&this.seg[..SEGMENT + TAG]);
                let ok = match this.stream.as_mut() {
                    Some(stream) => stream
                        .decrypt_next_in_place(&this.header, &mut this.out)
                        .is_ok(),
                    None => false,
                };
                if !ok {
                    this.out.clear();
                    return Poll::Ready(Err(this.fail(format!(
                        "segment {index} does not authenticate: the object was altered or damaged"
                    ))));
                }
                this.seg.copy_within(SEGMENT + TAG..this.filled, 0);
                this.filled -= SEGMENT + TAG;
                this.index += 1;
            } else {
                this.out.extend_from_slice(&this.seg[..this.filled]);
                this.filled = 0;
                let ok = match this.stream.take() {
                    Some(stream) => stream
                        .decrypt_last_in_place(&this.header, &mut this.out)
                        .is_ok(),
                    None => false,
                };
                if !ok {
                    this.out.clear();
                    return Poll::Ready(Err(this.fail(format!(
                        "final segment {index} does not authenticate: \
                         the object was altered, damaged or truncated"
                    ))));
                }
                this.done = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn key_files() {
        let hex_key = "0f".repeat(31) + "a0";
        let k = EncryptionKey::from_text(format!("  {hex_key}\n").as_bytes()).unwrap();
        assert_eq!(k.to_hex().as_str(), hex_key);
        let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(&hex_key).unwrap());
        assert_eq!(EncryptionKey::from_text(b64.as_bytes()).unwrap(), k);
        assert_eq!(k.id().len(), 16);
        assert!(!format!("{k:?}").contains(&hex_key));
        for bad in [
            "",
            "abc",
            &"00".repeat(32),
            &"zz".repeat(32),
            &"ab".repeat(16),
        ] {
            let e = EncryptionKey::from_text(bad.as_bytes()).unwrap_err();
            assert!(matches!(e, Error::InvalidKey { .. }), "{bad}: {e:?}");
        }
        assert_ne!(EncryptionKey::generate(), EncryptionKey::generate());
    }

    async fn read_all(mut r: impl AsyncRead + Unpin) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn the_header_names_the_key() {
        let key = EncryptionKey::generate();
        let sealed = read_all(EncryptReader::new(&key, &b"blob"[..]))
            .await
            .unwrap();
        assert_eq!(header_key_id(&sealed), Some(key.id()));
        assert_eq!(header_key_id(&sealed[..HEADER_LEN - 1]), None);
        assert_eq!(
            header_key_id(b"plain artifact bytes, long enough for a header"),
            None
        );
        let mut other_version = sealed.clone();
        other_version[6] = 9;
        assert_eq!(header_key_id(&other_version), None);
    }

    #[tokio::test]
    async fn stream_layout_and_boundaries() {
        let key = EncryptionKey::generate();
        for len in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT] {
            let data = vec![9u8; len];
            let sealed = read_all(EncryptReader::new(&key, &data[..])).await.unwrap();
            let segments = len.div_ceil(SEGMENT).max(1);
            assert_eq!(sealed.len(), HEADER_LEN + len + segments * TAG, "{len}");
            let back = read_all(DecryptReader::new(&key, &sealed[..]))
                .await
                .unwrap();
            assert_eq!(back, data);
            // Cut at every segment boundary (and the header's end): refused.
            for cut in (0..segments).map(|i| HEADER_LEN + i * (SEGMENT + TAG)) {
                let e = read_all(DecryptReader::new(&key, &sealed[..cut]))
                    .await
                    .unwrap_err();
                assert!(decrypt_failure(&e).is_some(), "{len} cut at {cut}: {e}");
            }
        }
    }
}
