//! The relay connection: how a peer asks the rendezvous to splice it to the other side of a
//! punch that could not go direct.
//!
//! ```text
//! peer -> relay   HELLO = "PRLY" | token (16 bytes, from the peer's Offer)      20 bytes
//! relay           holds the connection (reads nothing more) until the other side's HELLO
//!                 with the other token of the same punch arrives, then copies bytes both
//!                 ways, unchanged, until either side closes or a limit ends the session
//! relay -> peer   REFUSAL = "PRLN" | code (1 byte) | 7 zero bytes, then close      12 bytes
//! ```
//!
//! After its HELLO a peer writes at once what it writes on a direct stream (the punch
//! preamble, Noise KK, yamux), without waiting: the relay's pairing costs no round trip. The
//! relay sees only ciphertext and cannot pose as either peer (KK binds both static keys). A
//! refusal is as long as a punch preamble, so a peer reading the other side's preamble reads
//! the refusal instead, and [`parse_refusal`] tells the two apart.

use crate::message::RELAY_TOKEN_LEN;

/// First bytes of a relay connection.
pub const HELLO_MAGIC: [u8; 4] = *b"PRLY";
pub const HELLO_LEN: usize = HELLO_MAGIC.len() + RELAY_TOKEN_LEN;
/// First bytes of a refusal.
pub const REFUSAL_MAGIC: [u8; 4] = *b"PRLN";
/// A refusal is as long as a punch preamble (magic and a u64 session id).
pub const REFUSAL_LEN: usize = 12;

/// Why the relay refused a relay connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No punch has this token (never issued, expired, or already used).
    #[error("the relay knows no punch with this token (expired or used)")]
    UnknownToken,
    /// The relay carries its most relayed sessions.
    #[error("the relay is full")]
    Full,
    /// One of the two peers already has its most relayed sessions.
    #[error("a peer has too many relayed sessions")]
    PeerLimit,
    /// The connection's source address already has its most relayed sessions.
    #[error("too many relayed sessions from this address")]
    SourceLimit,
    /// The other side did not come within the relay's pairing time.
    #[error("the other peer did not reach the relay in time")]
    PeerAbsent,
    /// A code this version does not know (a newer server).
    #[error("the relay refused (code {0})")]
    Unknown(u8),
}

impl Refusal {
    pub fn code(self) -> u8 {
        match self {
            Refusal::UnknownToken => 1,
            Refusal::Full => 2,
            Refusal::PeerLimit => 3,
            Refusal::SourceLimit => 4,
            Refusal::PeerAbsent => 5,
            Refusal::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Refusal {
        match code {
            1 => Refusal::UnknownToken,
            2 => Refusal::Full,
            3 => Refusal::PeerLimit,
            4 => Refusal::SourceLimit,
            5 => Refusal::PeerAbsent,
            other => Refusal::Unknown(other),
        }
    }
}

pub fn hello(token: &[u8; RELAY_TOKEN_LEN]) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(&HELLO_MAGIC);
    h[4..].copy_from_slice(token);
    h
}

/// The token of a HELLO, or `None` if the bytes are not one.
pub fn parse_hello(bytes: &[u8; HELLO_LEN]) -> Option<[u8; RELAY_TOKEN_LEN]> {
    if bytes[..4] != HELLO_MAGIC {
        return None;
    }
    let mut token = [0u8; RELAY_TOKEN_LEN];
    token.copy_from_slice(&bytes[4..]);
    Some(token)
}

pub fn refusal(reason: Refusal) -> [u8; REFUSAL_LEN] {
    let mut r = [0u8; REFUSAL_LEN];
    r[..4].copy_from_slice(&REFUSAL_MAGIC);
    r[4] = reason.code();
    r
}

/// The refusal in 12 bytes read where the other side's punch preamble was expected, or
/// `None` if they are not a refusal.
pub fn parse_refusal(bytes: &[u8; REFUSAL_LEN]) -> Option<Refusal> {
    (bytes[..4] == REFUSAL_MAGIC).then(|| Refusal::from_code(bytes[4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_refusal_round_trip_and_differ_from_each_other() {
        let token = [0xab; RELAY_TOKEN_LEN];
        let h = hello(&token);
        assert_eq!(&h[..4], b"PRLY");
        assert_eq!(parse_hello(&h), Some(token));
        let mut not = h;
        not[0] = b'X';
        assert_eq!(parse_hello(&not), None);
        for r in [
            Refusal::UnknownToken,
            Refusal::Full,
            Refusal::PeerLimit,
            Refusal::SourceLimit,
            Refusal::PeerAbsent,
            Refusal::Unknown(200),
        ] {
            assert_eq!(parse_refusal(&refusal(r)), Some(r));
        }
        // A punch preamble is not a refusal.
        let mut preamble = [0u8; REFUSAL_LEN];
        preamble[..4].copy_from_slice(b"PNCH");
        assert_eq!(parse_refusal(&preamble), None);
    }
}
