//! Peer identities and key files.
//!
//! A peer *is* its Noise static public key (X25519, 32 bytes). The one textual form used
//! everywhere (CLI, logs, config, key files) is lowercase RFC 4648 base32 without padding:
//! 52 characters, safe in shells, URLs and file names, and case-insensitive on input.
//! Logs use [`PeerId::short`], the first [`SHORT_LEN`] characters.
//!
//! Every way of making a [`PeerId`] from bytes or text checks the key: a non-canonical
//! encoding (u >= p = 2^255 - 19, which includes every encoding with bit 255 set) is refused,
//! because X25519 reduces it to another key and one secret would then register as two
//! identities; a low-order point is refused, because a Diffie-Hellman with it yields a value
//! anybody can compute, so a handshake "authenticated" by it proves nothing.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

/// Length in bytes of a public or secret key.
pub const KEY_LEN: usize = 32;
/// Length of the textual form of a key: ceil(32 * 8 / 5).
pub const TEXT_LEN: usize = 52;
/// Length of the short form used in logs: 40 bits, enough to tell peers apart in a log.
pub const SHORT_LEN: usize = 8;

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A peer's identity: its Noise static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; KEY_LEN]);

/// The canonical encodings (u < p) of the X25519 points of small order, on the curve and on
/// its twist (X25519 accepts both). A Diffie-Hellman with any of them gives all zeros.
/// The non-canonical aliases of these points (p, p + 1, and every encoding with bit 255 set)
/// are refused by the canonicity check before this list is consulted.
const LOW_ORDER: [[u8; KEY_LEN]; 5] = [
    // 0: order 2 (the point (0, 0)).
    [0; KEY_LEN],
    // 1: order 4.
    {
        let mut k = [0; KEY_LEN];
        k[0] = 1;
        k
    },
    // The two points of order 8.
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    // p - 1 = -1: order 4 (on the twist).
    {
        let mut k = [0xff; KEY_LEN];
        k[0] = 0xec;
        k[31] = 0x7f;
        k
    },
];

/// Whether `bytes` is the canonical little-endian encoding of a u-coordinate: u < p.
/// Bit 255 set means u >= 2^255 > p.
fn is_canonical(bytes: &[u8; KEY_LEN]) -> bool {
    // u >= p exactly when the top byte is 0x7f, the middle bytes are 0xff and the low byte
    // is at least 0xed (p = 0x7fff...ffed), or when bit 255 is set.
    let top_bit = bytes[31] & 0x80 != 0;
    let at_least_p =
        bytes[31] == 0x7f && bytes[1..31].iter().all(|&b| b == 0xff) && bytes[0] >= 0xed;
    !top_bit && !at_least_p
}

/// Checks that `bytes` can be an identity: canonical and not of low order.
pub fn check_key(bytes: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    if !is_canonical(bytes) {
        return Err(KeyError::NonCanonical);
    }
    if LOW_ORDER.contains(bytes) {
        return Err(KeyError::LowOrder);
    }
    Ok(())
}

impl PeerId {
    /// The identity with public key `bytes`, refused when it is not a usable X25519 key
    /// (see [`check_key`]).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        check_key(&bytes)?;
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The first [`SHORT_LEN`] characters of the textual form, for logs.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(SHORT_LEN);
        s
    }
}

impl TryFrom<&[u8]> for PeerId {
    type Error = KeyError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Length {
            expected: KEY_LEN,
            found: bytes.len(),
        })?;
        Self::from_bytes(arr)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode(&self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(decode(s)?)
    }
}

/// Why a key could not be parsed or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("a key is {expected} bytes, found {found}")]
    Length { expected: usize, found: usize },
    #[error("a key is {TEXT_LEN} base32 characters (a-z, 2-7), found {found} characters")]
    TextLength { found: usize },
    #[error("invalid character {0:?} in key (expected a-z or 2-7)")]
    Character(char),
    /// The bytes are not the canonical encoding of a curve point (u >= 2^255 - 19, or bit 255
    /// set): X25519 would treat them as another key, so one secret could pose as two identities.
    #[error("not a canonical X25519 public key (u-coordinate >= 2^255 - 19 or top bit set)")]
    NonCanonical,
    /// A point of small order: a Diffie-Hellman with it yields a value anybody can compute.
    #[error("a low-order X25519 point, which proves nothing in a handshake")]
    LowOrder,
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not a punch secret key: {reason}")]
    BadFile { path: String, reason: String },
    #[error("generating a key pair failed: {0}")]
    Generate(String),
}

fn encode(bytes: &[u8; KEY_LEN]) -> String {
    let mut out = String::with_capacity(TEXT_LEN);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn decode(s: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let s = s.trim();
    if s.len() != TEXT_LEN {
        return Err(KeyError::TextLength {
            found: s.chars().count(),
        });
    }
    let mut out = [0u8; KEY_LEN];
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    for c in s.chars() {
        let v = match c.to_ascii_lowercase() {
            c @ 'a'..='z' => c as u32 - 'a' as u32,
            c @ '2'..='7' => c as u32 - '2' as u32 + 26,
            _ => return Err(KeyError::Character(c)),
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out[n] = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    // 52 * 5 = 260 bits: the last 4 must be zero, or two texts would name one key.
    if acc != 0 {
        return Err(KeyError::Character(s.chars().last().unwrap_or(' ')));
    }
    Ok(out)
}

/// Any Noise parameters with the 25519 DH: snow only uses them to pick the curve when it
/// generates a key pair. Named here so identity (the keys) does not depend on noise (the
/// handshakes that use them).
const KEYGEN_PARAMS: &str = "Noise_NN_25519_ChaChaPoly_BLAKE2s";

/// The X25519 public key of a secret key.
///
/// Always a valid identity: the clamped scalar is a multiple of the cofactor 8 in
/// [2^254, 2^255), never a multiple of the prime order l (8l > 2^255), so the result is a
/// non-neutral point of the prime-order subgroup, never of low order, and X25519 encodes its
/// output canonically (`generated_key_snapshot` checks keys parse back).
pub fn public_key(secret: &[u8; KEY_LEN]) -> PeerId {
    let secret = x25519_dalek::StaticSecret::from(*secret);
    PeerId(x25519_dalek::PublicKey::from(&secret).to_bytes())
}

/// Permission bits that must be clear on a key file: any access by group or others.
pub const KEY_FILE_EXPOSED_BITS: u32 = 0o077;

/// The warning to log when a key file's `mode` lets group or others read (or write) it, naming
/// the file and the fix; `None` when only the owner has access. The key still loads: refusing
/// would take a node offline over a fixable mistake, but the operator must hear about it.
pub fn permission_warning(path: &Path, mode: u32) -> Option<String> {
    (mode & KEY_FILE_EXPOSED_BITS != 0).then(|| {
        format!(
            "key file {} has mode {:03o}: group or others can access the secret key; \
             run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

/// A static X25519 key pair. The secret never appears in `Debug` output.
#[derive(Clone)]
pub struct Keypair {
    secret: [u8; KEY_LEN],
    public: PeerId,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let kp = snow::Builder::new(KEYGEN_PARAMS.parse().expect("valid params"))
            .generate_keypair()
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_secret(&kp.private)
    }

    /// The key pair of a secret key (the public key is derived).
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        let secret: [u8; KEY_LEN] = secret.try_into().map_err(|_| KeyError::Length {
            expected: KEY_LEN,
            found: secret.len(),
        })?;
        let public = public_key(&secret);
        Ok(Self { secret, public })
    }

    pub fn public(&self) -> PeerId {
        self.public
    }

    pub fn secret(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// Reads a key file written by [`Keypair::save`].
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let bad = |reason: String| KeyError::BadFile {
            path: path.display().to_string(),
            reason,
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| bad("no key line".into()))?;
        let secret = decode(line).map_err(|e| bad(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if let Some(warning) = permission_warning(path, meta.permissions().mode()) {
                    tracing::warn!("{warning}");
                }
            }
        }
        Self::from_secret(&secret)
    }

    /// Writes the secret key to a new file readable only by its owner (mode 0600 on Unix).
    /// Fails if the file exists, so an identity is never overwritten by accident.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(io)?;
        writeln!(
            file,
            "# punch secret key; public identity {}\n{}",
            self.public,
            encode(&self.secret)
        )
        .map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Loads the key file, or generates and saves a new key there when it does not exist.
    /// Returns the key pair and whether it was created now.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), KeyError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let kp = Self::generate()?;
        kp.save(path)?;
        Ok((kp, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        // Seeds 1..=0x7f give canonical keys of no small order; 0 and >= 0x80 are refused.
        for seed in 1u8..0x80 {
            let id = PeerId::from_bytes([seed; KEY_LEN]).unwrap();
            let text = id.to_string();
            assert_eq!(text.len(), TEXT_LEN);
            assert_eq!(text.parse::<PeerId>().unwrap(), id);
            assert_eq!(text.to_uppercase().parse::<PeerId>().unwrap(), id);
        }
    }

    #[test]
    fn text_snapshot() {
        let mut bytes = [0u8; KEY_LEN];
        bytes[0] = 0xff;
        bytes[31] = 0x01;
        assert_eq!(
            PeerId::from_bytes(bytes).unwrap().to_string(),
            "74aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaq"
        );
        assert_eq!(PeerId::from_bytes(bytes).unwrap().short(), "74aaaaaa");
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(
            "abc".parse::<PeerId>(),
            Err(KeyError::TextLength { found: 3 })
        ));
        let bad = format!("{}1", "a".repeat(TEXT_LEN - 1));
        assert!(matches!(
            bad.parse::<PeerId>(),
            Err(KeyError::Character('1'))
        ));
        // Non-zero trailing bits would make two texts name the same key.
        let non_canonical = format!("{}b", "a".repeat(TEXT_LEN - 1));
        assert!(non_canonical.parse::<PeerId>().is_err());
    }

    /// The encodings X25519 implementations refuse or treat as low order (libsodium's list):
    /// the canonical low-order points and their aliases p, p + 1, and with bit 255 set.
    fn hex(s: &str) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn refuses_low_order_points() {
        for h in [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ] {
            let bytes = hex(h);
            assert!(
                matches!(PeerId::from_bytes(bytes), Err(KeyError::LowOrder)),
                "{h}"
            );
            // And the list is right: a Diffie-Hellman with each point gives all zeros.
            let secret = x25519_dalek::StaticSecret::from([0x42; KEY_LEN]);
            let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(bytes));
            assert_eq!(shared.as_bytes(), &[0; KEY_LEN], "{h}");
            // Through every parser.
            let text = encode(&bytes);
            assert!(matches!(text.parse::<PeerId>(), Err(KeyError::LowOrder)));
            assert!(matches!(
                PeerId::try_from(&bytes[..]),
                Err(KeyError::LowOrder)
            ));
        }
    }

    #[test]
    fn refuses_non_canonical_encodings() {
        for h in [
            // p, p + 1 (aliases of 0 and 1), and the largest value below 2^255.
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            // Bit 255 set on low-order points (libsodium's list) ...
            "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
            "4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
            "d9ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "daffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "dbffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "0000000000000000000000000000000000000000000000000000000000000080",
        ] {
            let bytes = hex(h);
            assert!(
                matches!(PeerId::from_bytes(bytes), Err(KeyError::NonCanonical)),
                "{h}"
            );
            assert!(matches!(
                encode(&bytes).parse::<PeerId>(),
                Err(KeyError::NonCanonical)
            ));
        }
        // p - 1 is canonical (refused as low order above); p - 2 is an ordinary key.
        let below = hex("ebffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        assert!(PeerId::from_bytes(below).is_ok());
    }

    #[test]
    fn one_secret_has_one_identity() {
        // The same key with bit 255 set is what X25519 computes with too (it ignores the bit):
        // accepting it would let one secret register as a second identity.
        let kp = Keypair::from_secret(&[7; KEY_LEN]).unwrap();
        let mut alias = *kp.public().as_bytes();
        alias[31] |= 0x80;
        assert!(matches!(
            PeerId::from_bytes(alias),
            Err(KeyError::NonCanonical)
        ));
    }

    #[test]
    fn generated_key_snapshot() {
        // A real key derived from a fixed secret parses back through text and bytes.
        let kp = Keypair::from_secret(&[7; KEY_LEN]).unwrap();
        let text = kp.public().to_string();
        assert_eq!(text, SNAPSHOT_PUBLIC);
        assert_eq!(text.parse::<PeerId>().unwrap(), kp.public());
        assert_eq!(
            PeerId::try_from(&kp.public().as_bytes()[..]).unwrap(),
            kp.public()
        );
        for _ in 0..32 {
            let kp = Keypair::generate().unwrap();
            assert_eq!(
                kp.public().to_string().parse::<PeerId>().unwrap(),
                kp.public()
            );
        }
    }

    const SNAPSHOT_PUBLIC: &str = "co7e72xk6icmp7jtld6jyadsdca5c5bhqeuce7wgotzx677jpnwq";

    #[test]
    fn permission_warning_on_group_or_other_bits() {
        let path = Path::new("/keys/id.key");
        assert_eq!(permission_warning(path, 0o100600), None);
        assert_eq!(permission_warning(path, 0o400), None);
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602, 0o100777] {
            let w = permission_warning(path, mode).expect("warns");
            assert!(w.contains("/keys/id.key") && w.contains("chmod 600"), "{w}");
        }
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = std::env::temp_dir().join(format!("punch-key-{}", std::process::id()));
        let path = dir.join("id.key");
        let _ = std::fs::remove_dir_all(&dir);
        let (a, created) = Keypair::load_or_generate(&path).unwrap();
        assert!(created);
        let (b, created) = Keypair::load_or_generate(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        assert_eq!(a.secret(), b.secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            a.save(&path).is_err(),
            "save must not overwrite an identity"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
