//! Peer identities and key files.
//!
//! A peer *is* its Noise static public key (X25519, 32 bytes). The one textual form used
//! everywhere (CLI, logs, config, key files) is lowercase RFC 4648 base32 without padding:
//! 52 characters, safe in shells, URLs and file names, and case-insensitive on input.
//! Logs use [`PeerId::short`], the first [`SHORT_LEN`] characters.

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

impl PeerId {
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
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
        Ok(Self(arr))
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
        decode(s).map(Self)
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
pub fn public_key(secret: &[u8; KEY_LEN]) -> PeerId {
    let secret = x25519_dalek::StaticSecret::from(*secret);
    PeerId::from_bytes(x25519_dalek::PublicKey::from(&secret).to_bytes())
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
        for seed in 0u8..=255 {
            let id = PeerId([seed; KEY_LEN]);
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
            PeerId(bytes).to_string(),
            "74aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaq"
        );
        assert_eq!(PeerId(bytes).short(), "74aaaaaa");
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
