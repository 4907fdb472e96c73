//! The Noise layer: typed, sans-IO handshakes and transport state for both channels.
//!
//! **Control channel (client -> rendezvous): `Noise_XK_25519_ChaChaPoly_BLAKE2s`.**
//! The client pins the server's static key (K) and transmits its own static key encrypted (X):
//!
//! ```text
//! client -> server   e, es                 (1: no payload)
//! server -> client   e, ee                 (2: no payload)
//! client -> server   s, se  + Register     (3: the registration rides here)
//! ```
//!
//! Why XK rather than IK: in IK the client's first message carries its identity and could carry
//! the registration, but it depends only on the client's keys, so anyone who captured it can
//! replay it and the server cannot tell. In XK the client proves its identity in message 3,
//! which is encrypted under `ee` and `se` mixed with the server's *fresh* ephemeral from
//! message 2: a replayed message 1 leads nowhere, and a replayed message 3 does not decrypt.
//! The only state change (registration) happens after message 3, so nothing can be replayed
//! into one. It costs half a round trip more than IK, once per control connection; in return
//! the client's identity is hidden from passive observers too. The server answers message 1
//! with exactly one message of 48 bytes, never more than the 48 it received (no amplification).
//!
//! **Punched stream (peer <-> peer): `Noise_KK_25519_ChaChaPoly_BLAKE2s`.** Both static keys are
//! known from the rendezvous offer, so KK authenticates both sides in one round trip. TCP
//! simultaneous open has no natural client, so the role is an explicit input, assigned by the
//! rendezvous. The prologue binds the session id: a stream from another (stale) session fails
//! the handshake.
//!
//! ```text
//! initiator -> responder   e, es, ss
//! responder -> initiator   e, ee, se
//! ```

use crate::identity::{KeyError, Keypair, PeerId};

/// Control channel parameters (see the module doc for why XK).
pub const CONTROL_PARAMS: &str = "Noise_XK_25519_ChaChaPoly_BLAKE2s";
/// Punched-stream parameters (see the module doc for why KK).
pub const PEER_PARAMS: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";
/// Prologue of the control channel: a version bump changes it, so mismatched versions fail
/// the handshake instead of misparsing each other.
pub const CONTROL_PROLOGUE: &[u8] = b"punch/control/1";
/// Prefix of the punched-stream prologue; the session id (8 bytes, big endian) follows.
pub const PEER_PROLOGUE: &[u8] = b"punch/peer/1";
/// The largest Noise message (the spec's limit).
pub const MAX_MESSAGE_LEN: usize = 65535;
/// Authentication tag added to every encrypted payload.
pub const TAG_LEN: usize = 16;
/// The largest plaintext one transport message carries.
pub const MAX_PLAINTEXT_LEN: usize = MAX_MESSAGE_LEN - TAG_LEN;

/// Which side of a Noise handshake we play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Initiator,
    Responder,
}

/// Why a Noise operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// The peer sent a message that does not decrypt or parse: wrong key, tampering, replay.
    #[error("noise handshake or decryption failed: {0}")]
    Crypto(snow::Error),
    /// The handshake completed with a key other than the one we expected.
    #[error("remote identity {found} is not the expected {expected}")]
    UnexpectedPeer { expected: PeerId, found: PeerId },
    /// The peer's static key is not a usable identity (low order or non-canonical): with a
    /// low-order key the handshake's Diffie-Hellman results are known to anybody, so it
    /// authenticates nothing.
    #[error("remote static key refused: {0}")]
    BadRemoteKey(KeyError),
    #[error("message of {len} bytes exceeds the Noise limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// A caller's output buffer cannot hold the result (a local bug, not the peer's fault).
    #[error("output buffer of {have} bytes, {need} needed")]
    BufferTooSmall { need: usize, have: usize },
    #[error("handshake has not finished")]
    Unfinished,
}

impl From<snow::Error> for NoiseError {
    fn from(e: snow::Error) -> Self {
        NoiseError::Crypto(e)
    }
}

/// A handshake in progress, consumed into a [`Transport`] when finished.
pub struct Handshake {
    state: snow::HandshakeState,
    expected: Option<PeerId>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.state.is_initiator())
            .field("finished", &self.state.is_handshake_finished())
            .finish()
    }
}

impl Handshake {
    /// The client side of the control channel, pinned to the server's key.
    pub fn control_client(local: &Keypair, server: &PeerId) -> Result<Self, NoiseError> {
        let state = snow::Builder::new(CONTROL_PARAMS.parse()?)
            .prologue(CONTROL_PROLOGUE)
            .local_private_key(local.secret())
            .remote_public_key(server.as_bytes())
            .build_initiator()?;
        Ok(Self {
            state,
            expected: Some(*server),
        })
    }

    /// The server side of the control channel; any client key is accepted, and learned.
    pub fn control_server(local: &Keypair) -> Result<Self, NoiseError> {
        let state = snow::Builder::new(CONTROL_PARAMS.parse()?)
            .prologue(CONTROL_PROLOGUE)
            .local_private_key(local.secret())
            .build_responder()?;
        Ok(Self {
            state,
            expected: None,
        })
    }

    /// One side of a punched stream: `remote` must hold the key the rendezvous named.
    pub fn peer(
        role: Role,
        local: &Keypair,
        remote: &PeerId,
        session_id: u64,
    ) -> Result<Self, NoiseError> {
        let mut prologue = PEER_PROLOGUE.to_vec();
        prologue.extend_from_slice(&session_id.to_be_bytes());
        let builder = snow::Builder::new(PEER_PARAMS.parse()?)
            .prologue(&prologue)
            .local_private_key(local.secret())
            .remote_public_key(remote.as_bytes());
        let state = match role {
            Role::Initiator => builder.build_initiator()?,
            Role::Responder => builder.build_responder()?,
        };
        Ok(Self {
            state,
            expected: Some(*remote),
        })
    }

    /// Writes the next handshake message carrying `payload`.
    pub fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        let n = self.state.write_message(payload, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads the next handshake message and returns its payload.
    pub fn read(&mut self, message: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(NoiseError::TooLarge {
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let mut buf = vec![0u8; message.len()];
        let n = self.state.read_message(message, &mut buf)?;
        // The message that reveals the remote static key (XK 3 on the server) is refused, and
        // its payload never returned, when that key is not a valid identity.
        self.checked_remote()?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The remote static key if known yet, through the checked constructor.
    fn checked_remote(&self) -> Result<Option<PeerId>, NoiseError> {
        self.state
            .get_remote_static()
            .map(|k| PeerId::try_from(k).map_err(NoiseError::BadRemoteKey))
            .transpose()
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The remote static key, once the handshake has revealed it.
    /// `None` also when the key is not a valid identity ([`Handshake::read`] refuses it).
    pub fn remote(&self) -> Option<PeerId> {
        self.checked_remote().ok().flatten()
    }

    /// Finishes the handshake, checking the remote key when one was expected.
    pub fn into_transport(self) -> Result<Transport, NoiseError> {
        if !self.state.is_handshake_finished() {
            return Err(NoiseError::Unfinished);
        }
        let remote = self.checked_remote()?.ok_or(NoiseError::Unfinished)?;
        if let Some(expected) = self.expected {
            if expected != remote {
                return Err(NoiseError::UnexpectedPeer {
                    expected,
                    found: remote,
                });
            }
        }
        Ok(Transport {
            state: self.state.into_transport_mode()?,
            remote,
        })
    }
}

/// An established Noise session: encrypts and decrypts transport messages in order.
pub struct Transport {
    state: snow::TransportState,
    remote: PeerId,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// The authenticated identity of the other side.
    pub fn remote(&self) -> PeerId {
        self.remote
    }

    /// Encrypts `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes), appending to `out`.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(NoiseError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let start = out.len();
        out.resize(start + plaintext.len() + TAG_LEN, 0);
        let n = self.state.write_message(plaintext, &mut out[start..])?;
        out.truncate(start + n);
        Ok(())
    }

    /// Encrypts `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes) into the front of `out`,
    /// which must hold `plaintext.len() + TAG_LEN` bytes; returns the message length. For
    /// callers that keep one buffer for many messages instead of growing a `Vec` each time.
    pub fn encrypt_into(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, NoiseError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(NoiseError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let need = plaintext.len() + TAG_LEN;
        if out.len() < need {
            return Err(NoiseError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        Ok(self.state.write_message(plaintext, &mut out[..need])?)
    }

    /// Decrypts one transport message into the front of `out`, which must hold
    /// `message.len()` bytes (the plaintext and room for the tag, which the cipher uses as
    /// scratch); returns the plaintext length. What follows the plaintext in `out` is
    /// unspecified afterwards, and all of it when decryption fails.
    pub fn decrypt_into(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, NoiseError> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(NoiseError::TooLarge {
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        if out.len() < message.len() {
            return Err(NoiseError::BufferTooSmall {
                need: message.len(),
                have: out.len(),
            });
        }
        Ok(self
            .state
            .read_message(message, &mut out[..message.len()])?)
    }

    /// Decrypts one transport message, appending the plaintext to `out`.
    pub fn decrypt(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(NoiseError::TooLarge {
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let start = out.len();
        out.resize(start + message.len(), 0);
        match self.state.read_message(message, &mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a control handshake; the client pins `wrong_pin` instead of the server's key if given.
    fn run_control(wrong_pin: Option<PeerId>) -> Result<(Transport, Transport), NoiseError> {
        let server_key = Keypair::generate().unwrap();
        let client_key = Keypair::generate().unwrap();
        let pinned = wrong_pin.unwrap_or(server_key.public());
        let mut c = Handshake::control_client(&client_key, &pinned)?;
        let mut s = Handshake::control_server(&server_key)?;
        let m1 = c.write(&[])?;
        assert_eq!(m1.len(), 48, "message 1 is e (32) + tag (16)");
        s.read(&m1)?;
        let m2 = s.write(&[])?;
        assert!(m2.len() <= m1.len(), "never answer with more than received");
        c.read(&m2)?;
        let m3 = c.write(b"register")?;
        assert_eq!(s.read(&m3)?, b"register");
        let (ct, st) = (c.into_transport()?, s.into_transport()?);
        assert_eq!(st.remote(), client_key.public());
        Ok((ct, st))
    }

    #[test]
    fn control_handshake_and_transport() {
        let (mut c, mut s) = run_control(None).unwrap();
        let (mut ct, mut pt) = (Vec::new(), Vec::new());
        c.encrypt(b"hello", &mut ct).unwrap();
        s.decrypt(&ct, &mut pt).unwrap();
        assert_eq!(pt, b"hello");
        // Replaying a transport message fails: the nonce has moved on.
        pt.clear();
        assert!(s.decrypt(&ct, &mut pt).is_err());
        assert!(pt.is_empty());
    }

    #[test]
    fn into_slices_round_trip_and_refuse_short_buffers() {
        let (mut c, mut s) = run_control(None).unwrap();
        let mut sealed = [0u8; 64];
        assert!(matches!(
            c.encrypt_into(b"hello", &mut sealed[..20]),
            Err(NoiseError::BufferTooSmall { need: 21, have: 20 })
        ));
        let n = c.encrypt_into(b"hello", &mut sealed).unwrap();
        assert_eq!(n, 5 + TAG_LEN);
        // The appending form reads what the slice form wrote, and the other way round.
        let mut opened = Vec::new();
        s.decrypt(&sealed[..n], &mut opened).unwrap();
        assert_eq!(opened, b"hello");
        let mut again = Vec::new();
        c.encrypt(b"world!", &mut again).unwrap();
        let mut out = [0u8; 64];
        assert!(matches!(
            s.decrypt_into(&again, &mut out[..again.len() - 1]),
            Err(NoiseError::BufferTooSmall { .. })
        ));
        let n = s.decrypt_into(&again, &mut out).unwrap();
        assert_eq!(&out[..n], b"world!");
    }

    #[test]
    fn client_pinned_to_wrong_server_key_fails() {
        let wrong = Keypair::generate().unwrap().public();
        assert!(matches!(
            run_control(Some(wrong)),
            Err(NoiseError::Crypto(_))
        ));
    }

    #[test]
    fn replayed_message_three_fails() {
        let server_key = Keypair::generate().unwrap();
        let client_key = Keypair::generate().unwrap();
        let mut c = Handshake::control_client(&client_key, &server_key.public()).unwrap();
        let mut s = Handshake::control_server(&server_key).unwrap();
        let m1 = c.write(&[]).unwrap();
        s.read(&m1).unwrap();
        c.read(&s.write(&[]).unwrap()).unwrap();
        let m3 = c.write(b"register").unwrap();
        s.read(&m3).unwrap();
        // An attacker replays messages 1 and 3 to a fresh server handshake.
        let mut s2 = Handshake::control_server(&server_key).unwrap();
        s2.read(&m1).unwrap();
        let _fresh_m2 = s2.write(&[]).unwrap();
        assert!(s2.read(&m3).is_err());
    }

    fn peer_pair(
        session_a: u64,
        session_b: u64,
        b_expects: Option<PeerId>,
    ) -> Result<(Transport, Transport), NoiseError> {
        let a = Keypair::generate().unwrap();
        let b = Keypair::generate().unwrap();
        let mut ha = Handshake::peer(Role::Initiator, &a, &b.public(), session_a)?;
        let mut hb = Handshake::peer(
            Role::Responder,
            &b,
            &b_expects.unwrap_or(a.public()),
            session_b,
        )?;
        hb.read(&ha.write(&[])?)?;
        ha.read(&hb.write(&[])?)?;
        Ok((ha.into_transport()?, hb.into_transport()?))
    }

    #[test]
    fn peer_handshake() {
        let (mut a, mut b) = peer_pair(7, 7, None).unwrap();
        let (mut ct, mut pt) = (Vec::new(), Vec::new());
        b.encrypt(b"pong", &mut ct).unwrap();
        a.decrypt(&ct, &mut pt).unwrap();
        assert_eq!(pt, b"pong");
    }

    #[test]
    fn peer_handshake_rejects_impostor_and_stale_session() {
        let stranger = Keypair::generate().unwrap().public();
        assert!(peer_pair(7, 7, Some(stranger)).is_err());
        assert!(peer_pair(7, 8, None).is_err());
    }

    #[test]
    fn oversized_plaintext_is_refused() {
        let (mut a, _) = peer_pair(1, 1, None).unwrap();
        let mut out = Vec::new();
        let big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            a.encrypt(&big, &mut out),
            Err(NoiseError::TooLarge { .. })
        ));
    }
}
