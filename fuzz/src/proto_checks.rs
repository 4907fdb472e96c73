//! Harnesses for every punch-proto decoder that reads bytes from the network.
//!
//! Each harness takes one fuzz input, drives the decoder, panics when an invariant breaks, and
//! returns whether the input was *accepted* (decoded, or completed the handshake). The fuzz
//! targets call these; `proto/tests/fuzz_regressions.rs` includes this file by path and replays
//! `fuzz/seeds/` (which must be accepted) and `fuzz/regressions/` (which must not panic) on
//! stable Rust. Only dependencies punch-proto already has are used here.
//!
//! Inputs are read with [`Input`]: the first bytes choose sizes and modes, the rest is payload.
//! [`seeds`] writes one accepted input per mode; `fuzz/examples/write_seeds.rs` stores them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use bytes::BytesMut;
use punch_proto::channel::{server_handshake, ChannelError, XK_MESSAGE1_LEN};
use punch_proto::frame::{FrameCodec, FrameError, HEADER_LEN, MAX_CONTROL_FRAME};
use punch_proto::message::{
    check_network, ClientMsg, DecodeError, ErrorCode, ErrorReply, NatMapping, Offer, Register,
    Registered, RelayEnd, RelayTicket, ServerMsg, MAX_ALLOW, MAX_DETAIL_LEN, MAX_DISCOVERED,
    MAX_LOCAL_ADDRS, MAX_NETWORK_LEN, MAX_RECONNECT_WITHIN, PROTOCOL_VERSION,
};
use punch_proto::noise::{
    Handshake, NoiseError, Transport, MAX_MESSAGE_LEN, MAX_PLAINTEXT_LEN, TAG_LEN,
};
use punch_proto::{PeerId, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::common::{block_on, control_pair, frame, keys, peer_pair};
use crate::input::Input;

/// A harness: panics on a broken invariant, returns whether the input was accepted.
pub type Check = fn(&[u8]) -> bool;

/// Every byte-level target of punch-proto, by fuzz target name.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame_codec", frame_codec),
    ("client_msg", client_msg),
    ("server_msg", server_msg),
    ("register_msg", register_msg),
    ("noise_control_responder", noise_control_responder),
    ("noise_peer_responder", noise_peer_responder),
    ("noise_transport", noise_transport),
    ("control_handshake_stream", control_handshake_stream),
];

/// Operations per input in the sequence harnesses: enough for every interleaving that matters,
/// few enough that one input stays fast.
const MAX_OPS: usize = 64;

// ---------------------------------------------------------------------------------------------
// frame_codec

/// `FrameCodec` fed a byte stream in chunks of fuzzed sizes, checked against a reference parser.
///
/// Input: 3 bytes of maximum (clamped to 65535), a chunk-size count (0..8) and that many chunk
/// sizes (1..=256 bytes; none: the whole stream at once), then the stream.
/// Invariants: frames and the final error are exactly the reference's; every frame is non-empty
/// and at most the maximum; nothing is consumed on "need more bytes" or an error; nothing is
/// reserved for a rejected length and at most one frame is reserved for an accepted one;
/// `decode_eof` fails exactly when a partial frame is left; the encoder re-creates the exact
/// wire bytes of every frame and refuses what the decoder refuses.
pub fn frame_codec(data: &[u8]) -> bool {
    let mut input = Input::new(data);
    let requested = usize::from(input.u8()) << 16 | usize::from(input.u16());
    let mut codec = FrameCodec::new(requested);
    let max = codec.max();
    assert_eq!(max, requested.min(usize::from(u16::MAX)), "maximum clamped");
    let n_chunks = usize::from(input.u8() % 8);
    let chunks: Vec<usize> = input
        .bytes(n_chunks)
        .iter()
        .map(|&b| usize::from(b) + 1)
        .collect();
    let stream = input.rest();
    let reference = reference_frames(stream, max);

    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut frames = Vec::new();
    let mut error = None;
    let mut sizes = chunks.iter().cycle();
    'feed: loop {
        let size = sizes.next().copied().unwrap_or(stream.len());
        let end = (fed + size).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            let (len, cap) = (buf.len(), buf.capacity());
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(
                        !f.is_empty() && f.len() <= max,
                        "frame of {} bytes",
                        f.len()
                    );
                    assert_eq!(buf.len(), len - HEADER_LEN - f.len(), "consumed one frame");
                    frames.push(f);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), len, "nothing consumed while waiting for bytes");
                    check_reservation(&buf, codec);
                    break;
                }
                Err(e) => {
                    assert_eq!(buf.len(), len, "nothing consumed by a rejected frame");
                    assert_eq!(buf.capacity(), cap, "nothing reserved for a rejected frame");
                    error = Some(e);
                    break 'feed;
                }
            }
        }
        if fed == stream.len() {
            break;
        }
    }

    assert_eq!(frames.len(), reference.frames.len(), "frame count");
    for (f, r) in frames.iter().zip(&reference.frames) {
        assert_eq!(&f[..], &stream[r.clone()], "frame content");
        let mut out = BytesMut::new();
        codec
            .encode(&f[..], &mut out)
            .expect("a decoded frame encodes");
        assert_eq!(
            &out[..],
            &stream[r.start - HEADER_LEN..r.end],
            "exact wire bytes"
        );
    }
    match (&error, &reference.end) {
        (None, RefEnd::Open) => {
            assert_eq!(
                &buf[..],
                &stream[reference.consumed..],
                "partial frame kept"
            );
            match codec.decode_eof(&mut buf) {
                Ok(None) => assert_eq!(reference.consumed, stream.len()),
                Err(_) => assert!(reference.consumed < stream.len()),
                Ok(Some(_)) => panic!("decode_eof produced a frame decode did not"),
            }
        }
        (Some(FrameError::Empty), RefEnd::Empty) => {}
        (Some(FrameError::Oversized { len, max: m }), RefEnd::Oversized(r)) => {
            assert_eq!((*len, *m), (*r, max));
        }
        (got, want) => panic!("decoder ended with {got:?}, reference with {want:?}"),
    }
    assert!(matches!(
        codec.encode(&b""[..], &mut BytesMut::new()),
        Err(FrameError::Empty)
    ));
    if max < usize::from(u16::MAX) {
        let big = vec![0u8; max + 1];
        assert!(matches!(
            codec.encode(&big[..], &mut BytesMut::new()),
            Err(FrameError::Oversized { .. })
        ));
    }
    error.is_none() && !frames.is_empty()
}

#[derive(Debug)]
enum RefEnd {
    /// The stream ended, possibly inside a frame.
    Open,
    Empty,
    Oversized(usize),
}

#[derive(Debug)]
struct Reference {
    frames: Vec<Range<usize>>,
    consumed: usize,
    end: RefEnd,
}

/// The frame format, written from its spec: `len: u16 BE` (1..=max), then `len` bytes.
fn reference_frames(stream: &[u8], max: usize) -> Reference {
    let mut frames = Vec::new();
    let mut pos = 0;
    let end = loop {
        if stream.len() - pos < HEADER_LEN {
            break RefEnd::Open;
        }
        let len = usize::from(u16::from_be_bytes([stream[pos], stream[pos + 1]]));
        if len == 0 {
            break RefEnd::Empty;
        }
        if len > max {
            break RefEnd::Oversized(len);
        }
        if stream.len() - pos - HEADER_LEN < len {
            break RefEnd::Open;
        }
        frames.push(pos + HEADER_LEN..pos + HEADER_LEN + len);
        pos += HEADER_LEN + len;
    };
    Reference {
        frames,
        consumed: pos,
        end,
    }
}

/// Decodes a copy of `buf` with exact capacity: on "need more bytes" the codec may reserve
/// room for the announced frame, but only for a length it accepts, and no more than the frame
/// needs (or the buffer's own amortized growth).
fn check_reservation(buf: &BytesMut, mut codec: FrameCodec) {
    let mut copy = BytesMut::from(&buf[..]);
    let cap = copy.capacity();
    assert!(matches!(codec.decode(&mut copy), Ok(None)));
    if copy.capacity() > cap {
        assert!(
            copy.len() >= HEADER_LEN,
            "reserved before the header arrived"
        );
        let announced = usize::from(u16::from_be_bytes([copy[0], copy[1]]));
        assert!(announced <= codec.max(), "reserved for a rejected length");
        let bound = (2 * cap).max(HEADER_LEN + announced).max(64);
        assert!(
            copy.capacity() <= bound,
            "reserved {} bytes for a {announced}-byte frame with {} buffered",
            copy.capacity(),
            copy.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Control messages

/// The largest encoded control message that still fits one control frame after encryption.
const MAX_CONTROL_PLAINTEXT: usize = MAX_CONTROL_FRAME - TAG_LEN;

/// `ClientMsg::decode` of arbitrary bytes; and encode-then-decode of a message built from them.
/// Invariants: no panic; a decoded message re-encodes to bytes that decode to it again and
/// re-encode identically; every message fits a control frame and survives a round trip.
pub fn client_msg(data: &[u8]) -> bool {
    let decoded = ClientMsg::decode(data);
    if let Ok(m) = &decoded {
        round_trip_client(m);
    }
    round_trip_client(&build_client_msg(&mut Input::new(data)));
    decoded.is_ok()
}

fn round_trip_client(m: &ClientMsg) {
    let wire = m.encode();
    assert!(
        wire.len() <= MAX_CONTROL_PLAINTEXT,
        "{m:?} does not fit a frame"
    );
    let back = ClientMsg::decode(&wire).expect("an encoded client message decodes");
    assert_eq!(&back, m);
    assert_eq!(back.encode(), wire, "encoding is canonical");
}

/// An identity from the input; bytes that are no valid key (low order, non-canonical) become
/// a fixed valid key, since no `PeerId` can hold them.
fn build_peer(input: &mut Input) -> PeerId {
    PeerId::from_bytes(input.array())
        .unwrap_or_else(|_| punch_proto::identity::public_key(&[1; 32]))
}

fn build_client_msg(input: &mut Input) -> ClientMsg {
    match input.u8() % 5 {
        0 => ClientMsg::Ping { nonce: input.u64() },
        1 => ClientMsg::Pong { nonce: input.u64() },
        3 => ClientMsg::Discover {
            request_id: input.u64(),
            max: input.u32(),
        },
        2 => ClientMsg::Upgrade {
            request_id: input.u64(),
            peer: build_peer(input),
            session_id: input.u64(),
        },
        _ => ClientMsg::Connect {
            request_id: input.u64(),
            peer: build_peer(input),
        },
    }
}

/// `ServerMsg::decode` of arbitrary bytes; and encode-then-decode of a message built from them.
/// Invariants: no panic; a decoded message survives encode -> decode unchanged and canonically;
/// a built message decodes to itself up to the documented lossy parts of encoding (see
/// [`expected_server`]), or is refused for the two things the decoder rejects that the encoder
/// passes (port 0, an identity named twice in `Discovered`).
pub fn server_msg(data: &[u8]) -> bool {
    let decoded = ServerMsg::decode(data);
    if let Ok(m) = &decoded {
        let wire = m.encode();
        let back = ServerMsg::decode(&wire).expect("a decoded server message re-encodes");
        assert_eq!(&back, m);
        assert_eq!(back.encode(), wire, "encoding is canonical");
    }
    let built = build_server_msg(&mut Input::new(data));
    let wire = built.encode();
    assert!(
        wire.len() <= MAX_CONTROL_PLAINTEXT,
        "{built:?} does not fit a frame"
    );
    match (ServerMsg::decode(&wire), expected_server(&built)) {
        (Ok(got), Some(want)) => assert_eq!(got, want, "round trip of {built:?}"),
        (Err(DecodeError::Address { port: 0, .. }), None)
            if !matches!(built, ServerMsg::Discovered { .. }) => {}
        (Err(DecodeError::Duplicate { field: "peers" }), None)
            if matches!(built, ServerMsg::Discovered { .. }) => {}
        (got, want) => panic!("{built:?} decoded to {got:?}, expected {want:?}"),
    }
    decoded.is_ok()
}

/// `Register::decode` of arbitrary bytes (the payload of handshake message 3); and
/// encode-then-decode of a registration built from them. Invariants as for [`server_msg`];
/// besides, a decoded network name is always valid ([`check_network`]), and a built one the
/// check refuses is refused by the decoder (unless an address with port 0 is refused first).
pub fn register_msg(data: &[u8]) -> bool {
    let decoded = Register::decode(data);
    if let Ok(m) = &decoded {
        let wire = m.encode();
        let back = Register::decode(&wire).expect("a decoded registration re-encodes");
        assert_eq!(&back, m);
        assert_eq!(back.encode(), wire, "encoding is canonical");
        assert!(m.network.len() <= MAX_NETWORK_LEN, "{m:?}");
        assert_eq!(check_network(&m.network), Ok(()), "{m:?}");
    }
    let mut input = Input::new(data);
    let built = Register {
        version: input.u32(),
        accept_inbound: input.bool(),
        local_addrs: build_addrs(&mut input),
        // Up to 79 identities: more than the 64 the encoder keeps.
        allow: (0..input.u8() % 80)
            .map(|_| build_peer(&mut input))
            .collect(),
        network: build_network(&mut input),
        probe: input.bool(),
    };
    let wire = built.encode();
    assert!(wire.len() <= MAX_CONTROL_PLAINTEXT);
    let mut want = built.clone();
    want.local_addrs.truncate(MAX_LOCAL_ADDRS);
    want.allow.truncate(MAX_ALLOW);
    match Register::decode(&wire) {
        Ok(got) => {
            assert_eq!(check_network(&want.network), Ok(()), "{want:?} accepted");
            assert_eq!(got, want);
        }
        Err(DecodeError::Address { port: 0, .. }) if has_port0(&want.local_addrs) => {}
        Err(DecodeError::Network(_)) if check_network(&want.network).is_err() => {}
        Err(e) => panic!("{built:?} was refused: {e}"),
    }
    decoded.is_ok()
}

/// A network name: mostly a valid one (of the real names, or any bytes of `[a-z0-9-]` up to
/// the limit), sometimes any text up to 80 bytes (too long, capitals, Unicode).
fn build_network(input: &mut Input) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
    match input.u8() % 4 {
        0 => String::new(),
        1 => ["kaspa-mainnet", "kaspa-testnet-10", "kaspa-simnet"][usize::from(input.u8() % 3)]
            .to_owned(),
        2 => {
            let n = usize::from(input.u8()) % (MAX_NETWORK_LEN + 1);
            let bytes = input.bytes(n);
            bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
                .collect()
        }
        _ => String::from_utf8_lossy(input.long_bytes(80)).into_owned(),
    }
}

fn build_addr(input: &mut Input) -> SocketAddr {
    let port = input.u16();
    let ip = if input.bool() {
        IpAddr::V6(Ipv6Addr::from(input.array::<16>()))
    } else {
        IpAddr::V4(Ipv4Addr::from(input.array::<4>()))
    };
    SocketAddr::new(ip, port)
}

/// Up to 23 addresses: more than the 16 the encoder keeps.
fn build_addrs(input: &mut Input) -> Vec<SocketAddr> {
    let n = input.u8() % 24;
    (0..n).map(|_| build_addr(input)).collect()
}

/// Any duration up to 136 years, with sub-millisecond parts.
fn build_duration(input: &mut Input) -> Duration {
    Duration::new(u64::from(input.u32()), input.u32() % 1_000_000_000)
}

/// Every code the protocol names, in wire order (1, 2, ...): an `Unknown` raw value in
/// `1..=KNOWN_CODES.len()` decodes as the named code.
const KNOWN_CODES: [ErrorCode; 11] = [
    ErrorCode::PeerOffline,
    ErrorCode::PeerRefuses,
    ErrorCode::RateLimited,
    ErrorCode::SelfConnect,
    ErrorCode::BadRequest,
    ErrorCode::ServerFull,
    ErrorCode::UnsupportedVersion,
    ErrorCode::TooManyConnections,
    ErrorCode::NotAllowed,
    ErrorCode::NetworkFull,
    ErrorCode::WrongNetwork,
];

fn build_server_msg(input: &mut Input) -> ServerMsg {
    match input.u8() % 8 {
        0 => ServerMsg::Ping { nonce: input.u64() },
        // Up to u32::MAX ms: far beyond the 10 minutes the encoder sends at most.
        7 => ServerMsg::GoingAway {
            reconnect_within: build_duration(input),
        },
        1 => ServerMsg::Pong {
            nonce: input.u64(),
            // Zero is "none" on the wire.
            server_time_us: Some(input.u64()).filter(|&t| t != 0),
        },
        5 => ServerMsg::Discovered {
            request_id: input.u64(),
            // Up to 79 identities: more than the 64 the encoder keeps; a repeated one (an
            // invalid key's stand-in, or the same bytes twice) is refused by the decoder.
            peers: (0..input.u8() % 80).map(|_| build_peer(input)).collect(),
        },
        2 => ServerMsg::Registered(Registered {
            observed: build_addr(input),
            ping_interval: build_duration(input),
            // Zero is "none" on the wire.
            nat_check_port: Some(input.u16()).filter(|&p| p != 0),
        }),
        3 => ServerMsg::Offer(Offer {
            session_id: input.u64(),
            request_id: input.u64(),
            peer: build_peer(input),
            peer_observed: build_addr(input),
            role: if input.bool() {
                Role::Responder
            } else {
                Role::Initiator
            },
            dial_delay: build_duration(input),
            // Zero is "none" on the wire.
            dial_at_us: Some(input.u64()).filter(|&t| t != 0),
            peer_local: build_addrs(input),
            relay: input.bool().then(|| RelayTicket {
                token: input.array(),
                after: build_duration(input),
            }),
            // Zero is "none" on the wire.
            upgrade: Some(input.u64()).filter(|&s| s != 0),
            peer_nat: match input.u8() % 3 {
                0 => NatMapping::Unknown,
                1 => NatMapping::EndpointIndependent,
                _ => NatMapping::EndpointDependent,
            },
        }),
        4 => ServerMsg::RelayEnded {
            session_id: input.u64(),
            reason: match input.u8() % 5 {
                0 => RelayEnd::Bytes,
                1 => RelayEnd::Duration,
                2 => RelayEnd::Idle,
                3 => RelayEnd::Shutdown,
                _ => RelayEnd::Unknown(i32::from_be_bytes(input.array())),
            },
        },
        _ => {
            let code = match usize::from(input.u8() % 13) {
                i if i < KNOWN_CODES.len() => KNOWN_CODES[i],
                _ => ErrorCode::Unknown(i32::from_be_bytes(input.array())),
            };
            ServerMsg::Error(ErrorReply {
                request_id: input.u64(),
                code,
                retry_after: input.bool().then(|| build_duration(input)),
                // Lossy UTF-8 puts 3-byte characters across the 256-byte cut.
                detail: String::from_utf8_lossy(input.long_bytes(400)).into_owned(),
            })
        }
    }
}

fn has_port0(addrs: &[SocketAddr]) -> bool {
    addrs.iter().any(|a| a.port() == 0)
}

/// Whole milliseconds, saturating at `u32::MAX` ms: how durations travel.
fn wire_millis(d: Duration) -> Duration {
    let ms = d.as_millis().min(u128::from(u32::MAX));
    Duration::from_millis(u64::try_from(ms).expect("at most u32::MAX"))
}

/// What `decode(encode(m))` must give: durations in whole milliseconds saturating at
/// `u32::MAX` ms (a `GoingAway` window at [`MAX_RECONNECT_WITHIN`]), a zero `retry_after` omitted, details cut to 256 bytes at a character
/// boundary, at most 16 local addresses and 64 discovered identities, an `Unknown` code that a
/// known code uses decoding as that code; `None` when `m` holds port 0 or (among the identities
/// kept) one identity twice, which the decoder refuses.
fn expected_server(m: &ServerMsg) -> Option<ServerMsg> {
    Some(match m.clone() {
        ServerMsg::Discovered {
            request_id,
            mut peers,
        } => {
            peers.truncate(MAX_DISCOVERED);
            let distinct: std::collections::HashSet<_> = peers.iter().collect();
            if distinct.len() != peers.len() {
                return None;
            }
            ServerMsg::Discovered { request_id, peers }
        }
        ServerMsg::GoingAway { reconnect_within } => ServerMsg::GoingAway {
            reconnect_within: wire_millis(reconnect_within.min(MAX_RECONNECT_WITHIN)),
        },
        ServerMsg::Registered(mut r) => {
            if r.observed.port() == 0 {
                return None;
            }
            r.ping_interval = wire_millis(r.ping_interval);
            ServerMsg::Registered(r)
        }
        ServerMsg::Offer(mut o) => {
            o.peer_local.truncate(MAX_LOCAL_ADDRS);
            if o.peer_observed.port() == 0 || has_port0(&o.peer_local) {
                return None;
            }
            o.dial_delay = wire_millis(o.dial_delay);
            if let Some(t) = o.relay.as_mut() {
                t.after = wire_millis(t.after);
            }
            ServerMsg::Offer(o)
        }
        ServerMsg::RelayEnded {
            session_id,
            reason: RelayEnd::Unknown(raw),
        } => {
            // A raw code a known reason uses decodes as that reason.
            let known = [
                RelayEnd::Bytes,
                RelayEnd::Duration,
                RelayEnd::Idle,
                RelayEnd::Shutdown,
            ];
            let reason = usize::try_from(raw)
                .ok()
                .and_then(|r| r.checked_sub(1))
                .and_then(|i| known.get(i).copied())
                .unwrap_or(RelayEnd::Unknown(raw));
            ServerMsg::RelayEnded { session_id, reason }
        }
        ServerMsg::Error(mut e) => {
            let mut cut = e.detail.len().min(MAX_DETAIL_LEN);
            while !e.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            e.detail.truncate(cut);
            e.retry_after = e.retry_after.map(wire_millis).filter(|d| !d.is_zero());
            if let ErrorCode::Unknown(raw) = e.code {
                if let Some(&known) = usize::try_from(raw)
                    .ok()
                    .and_then(|r| r.checked_sub(1))
                    .and_then(|i| KNOWN_CODES.get(i))
                {
                    e.code = known;
                }
            }
            ServerMsg::Error(e)
        }
        other => other,
    })
}

// ---------------------------------------------------------------------------------------------
// Noise

/// The rendezvous side of the XK handshake (`Handshake::control_server`).
///
/// Input: a mode byte, then
/// - mode 0: a fuzzed message 1, read directly;
/// - mode 1: a pin byte (odd: the client pins a stranger's key) and a message-1 payload, then
///   as mode 3;
/// - mode 2: a pin byte, then a fuzzed message 3 after genuine messages 1 and 2;
/// - mode 3: a pin byte, a message-3 payload (2-byte length) and a tamper position (2 bytes)
///   and mask (1 byte, 0: untouched) for the genuine message 3.
///
/// Invariants: message 2 is 48 bytes (never an amplifier); message 1 meant for another key is
/// refused; a fuzzed or tampered message 3 is refused and leaves no usable transport; a genuine
/// one yields its payload byte for byte, `Register::decode` of it does not panic, and the
/// transport names the client.
pub fn noise_control_responder(data: &[u8]) -> bool {
    let mut input = Input::new(data);
    let k = keys();
    let mut server = Handshake::control_server(&k.server).expect("responder builds");
    let mode = input.u8() % 4;
    if mode == 0 {
        let m1 = input.rest();
        return match server.read(m1) {
            Ok(payload) => {
                assert_eq!(payload.len() + XK_MESSAGE1_LEN, m1.len());
                let m2 = server
                    .write(&[])
                    .expect("message 2 after an accepted message 1");
                assert_eq!(m2.len(), XK_MESSAGE1_LEN, "message 2 is never an amplifier");
                true
            }
            Err(_) => false,
        };
    }
    let pin = if input.bool() { &k.stranger } else { &k.server };
    let mut client = Handshake::control_client(&k.client, &pin.public()).expect("initiator builds");
    let payload1 = if mode == 1 {
        input.short_bytes()
    } else {
        &[][..]
    };
    let read1 = server.read(&client.write(payload1).expect("message 1"));
    if pin.public() != k.server.public() {
        assert!(
            read1.is_err(),
            "message 1 for another server key was accepted"
        );
        return false;
    }
    assert_eq!(read1.expect("genuine message 1"), payload1);
    let m2 = server.write(&[]).expect("message 2");
    assert_eq!(m2.len(), XK_MESSAGE1_LEN, "message 2 is never an amplifier");
    assert!(client.read(&m2).expect("genuine message 2").is_empty());

    let (m3, payload3, genuine) = if mode == 2 {
        (input.rest().to_vec(), Vec::new(), false)
    } else {
        let payload = input.long_bytes(MAX_CONTROL_FRAME).to_vec();
        let (at, mask) = (usize::from(input.u16()), input.u8());
        let mut m3 = client.write(&payload).expect("message 3");
        if mask != 0 {
            let i = at % m3.len();
            m3[i] ^= mask;
        }
        (m3, payload, mask == 0)
    };
    match server.read(&m3) {
        Ok(payload) => {
            assert!(genuine, "a fuzzed or tampered message 3 was accepted");
            assert_eq!(payload, payload3);
            let _ = Register::decode(&payload);
            let transport = server.into_transport().expect("handshake finished");
            assert_eq!(transport.remote(), k.client.public());
            true
        }
        Err(e) => {
            assert!(!genuine, "genuine message 3 refused: {e}");
            assert!(
                server.into_transport().is_err(),
                "a refused message 3 still gave a transport"
            );
            false
        }
    }
}

/// The responder of a punched stream (`Handshake::peer(Role::Responder, ..)`).
///
/// Input: the session id (8 bytes), a mode byte, then
/// - even mode: a fuzzed message 1;
/// - odd mode: a flags byte (1: the initiator is a stranger, 2: it uses another session id
///   whose difference is the next byte + 1), a message-1 payload, a tamper position and mask
///   (1 byte each), and the responder's message-2 payload.
///
/// Invariants: a fuzzed message 1 never authenticates (`ss` needs the initiator's secret); a
/// stranger, another session or any tampering is refused; a genuine message 1 yields its
/// payload, and the finished transports name each other and carry data both ways.
pub fn noise_peer_responder(data: &[u8]) -> bool {
    let mut input = Input::new(data);
    let k = keys();
    let session = input.u64();
    let mut responder = Handshake::peer(Role::Responder, &k.server, &k.client.public(), session)
        .expect("responder builds");
    if input.u8() & 1 == 0 {
        assert!(
            responder.read(input.rest()).is_err(),
            "a fuzzed message 1 authenticated"
        );
        return false;
    }
    let flags = input.u8();
    let (stranger, other_session) = (flags & 1 != 0, flags & 2 != 0);
    let key = if stranger { &k.stranger } else { &k.client };
    let their_session = if other_session {
        session ^ (1 + u64::from(input.u8()))
    } else {
        session
    };
    let mut initiator = Handshake::peer(Role::Initiator, key, &k.server.public(), their_session)
        .expect("initiator builds");
    let payload = input.short_bytes();
    let (at, mask) = (usize::from(input.u8()), input.u8());
    let mut m1 = initiator.write(payload).expect("message 1");
    if mask != 0 {
        let i = at % m1.len();
        m1[i] ^= mask;
    }
    let genuine = !stranger && !other_session && mask == 0;
    match responder.read(&m1) {
        Err(e) => {
            assert!(!genuine, "genuine message 1 refused: {e}");
            assert!(responder.into_transport().is_err());
            false
        }
        Ok(got) => {
            assert!(
                genuine,
                "accepted message 1 (stranger {stranger}, other session {other_session}, mask {mask})"
            );
            assert_eq!(got, payload);
            let reply = input.short_bytes();
            let m2 = responder.write(reply).expect("message 2");
            assert_eq!(initiator.read(&m2).expect("genuine message 2"), reply);
            let mut i = initiator.into_transport().expect("initiator finished");
            let mut r = responder.into_transport().expect("responder finished");
            assert_eq!(i.remote(), k.server.public());
            assert_eq!(r.remote(), k.client.public());
            exchange(&mut i, &mut r, payload);
            exchange(&mut r, &mut i, reply);
            true
        }
    }
}

fn exchange(from: &mut Transport, to: &mut Transport, plaintext: &[u8]) {
    let (mut ct, mut pt) = (Vec::new(), Vec::new());
    from.encrypt(plaintext, &mut ct).expect("encrypt");
    to.decrypt(&ct, &mut pt).expect("decrypt");
    assert_eq!(pt, plaintext);
}

/// One direction of a transport pair under test.
struct Direction {
    /// Ciphertexts sent so far; the index is the nonce they were sealed with.
    sent: Vec<(Vec<u8>, Vec<u8>)>,
    /// The nonce the receiver expects next (snow does not advance it on a failed decrypt).
    next: usize,
}

/// `Transport::decrypt` after a completed handshake, against an attacker who sees, drops,
/// reorders, replays, truncates and tampers with the other side's messages and sends junk.
///
/// Input: a byte choosing the handshake (odd: control XK, even: punched KK with the session id
/// from the next 8 bytes), then operations (one byte: low bit is the direction, the rest the
/// kind): encrypt a short or a sized plaintext; deliver message N with an optional tamper
/// (position, mask); deliver junk; deliver an oversized message; deliver a truncated message.
///
/// Invariants: a message decrypts exactly when it is the untampered one with the expected
/// nonce, and then to its plaintext, appended to what the output held; every failure leaves
/// the output as it was; plaintexts over the limit and messages over 65535 bytes are refused
/// as too large.
pub fn noise_transport(data: &[u8]) -> bool {
    let mut input = Input::new(data);
    let k = keys();
    let (a, b) = if input.bool() {
        control_pair(k)
    } else {
        peer_pair(k, input.u64())
    };
    let mut ends = [a, b];
    let mut dirs = [
        Direction {
            sent: Vec::new(),
            next: 0,
        },
        Direction {
            sent: Vec::new(),
            next: 0,
        },
    ];
    let mut delivered = false;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let from = usize::from(op & 1);
        let [sender, receiver] = if from == 0 {
            let [a, b] = &mut ends;
            [a, b]
        } else {
            let [a, b] = &mut ends;
            [b, a]
        };
        let dir = &mut dirs[from];
        let prefix = vec![op; usize::from(op % 3)];
        let mut out = prefix.clone();
        match (op >> 1) % 6 {
            kind @ (0 | 1) => {
                let plaintext = if kind == 0 {
                    input.short_bytes().to_vec()
                } else {
                    vec![op; usize::from(input.u16())]
                };
                let mut ct = Vec::new();
                match sender.encrypt(&plaintext, &mut ct) {
                    Ok(()) => {
                        assert!(plaintext.len() <= MAX_PLAINTEXT_LEN);
                        assert_eq!(ct.len(), plaintext.len() + TAG_LEN);
                        dir.sent.push((plaintext, ct));
                    }
                    Err(NoiseError::TooLarge { .. }) => {
                        assert!(plaintext.len() > MAX_PLAINTEXT_LEN);
                        assert!(ct.is_empty());
                    }
                    Err(e) => panic!("encrypt failed: {e}"),
                }
            }
            2 => {
                if dir.sent.is_empty() {
                    continue;
                }
                let n = usize::from(input.u8()) % dir.sent.len();
                let (at, mask) = (usize::from(input.u16()), input.u8());
                let (plaintext, mut ct) = dir.sent[n].clone();
                if mask != 0 {
                    let i = at % ct.len();
                    ct[i] ^= mask;
                }
                let genuine = n == dir.next && mask == 0;
                match receiver.decrypt(&ct, &mut out) {
                    Ok(()) => {
                        assert!(
                            genuine,
                            "accepted message {n} (expected {}, mask {mask})",
                            dir.next
                        );
                        assert_eq!(out[..prefix.len()], prefix[..]);
                        assert_eq!(out[prefix.len()..], plaintext[..]);
                        dir.next += 1;
                        delivered = true;
                    }
                    Err(e) => {
                        assert!(!genuine, "genuine message {n} refused: {e}");
                        assert_eq!(out, prefix, "a failed decrypt left output behind");
                    }
                }
            }
            3 => {
                let junk = input.short_bytes();
                assert!(receiver.decrypt(junk, &mut out).is_err(), "junk decrypted");
                assert_eq!(out, prefix);
            }
            4 => {
                let big = vec![op; MAX_MESSAGE_LEN + 1 + usize::from(input.u8())];
                assert!(matches!(
                    receiver.decrypt(&big, &mut out),
                    Err(NoiseError::TooLarge { .. })
                ));
                assert_eq!(out, prefix);
            }
            _ => {
                let Some((_, ct)) = dir.sent.get(dir.next) else {
                    continue;
                };
                let cut = usize::from(input.u8()) % ct.len();
                assert!(receiver.decrypt(&ct[..cut], &mut out).is_err());
                assert_eq!(out, prefix);
            }
        }
    }
    delivered
}

// ---------------------------------------------------------------------------------------------
// channel::server_handshake

/// Bytes the scripted client may write in total (the duplex buffer holds them all, so a
/// server that stopped reading never blocks the script).
const MAX_WRITTEN: usize = 1 << 20;
/// A handshake that has not ended this long after the client closed its side is a hang.
const HANG: Duration = Duration::from_secs(10);

/// `channel::server_handshake` over an in-memory stream, against a scripted client.
///
/// Input: a flags byte (1: the client pins a stranger's key; 2: message 1 carries the payload
/// that follows), then operations: write genuine message 1 (and, if it opened the stream,
/// read message 2); write genuine message 3 with a payload (once message 2 is in); write raw
/// bytes; write a well-framed junk frame; yield. Then the client closes its side.
///
/// Invariants: the handshake always ends once the client has closed its side; it succeeds
/// exactly when the stream starts with a genuine empty-payload message 1 followed by a genuine
/// message 3 that fits a control frame and holds a valid registration, and then yields that
/// registration and the client's identity, with a working channel; a first frame of the wrong
/// size is refused as such before any Noise work; the server writes nothing but one 50-byte
/// message 2, and that exactly in answer to a valid message 1 (a replayed one included).
pub fn control_handshake_stream(data: &[u8]) -> bool {
    block_on(async {
        tokio::time::timeout(HANG, control_handshake_stream_async(data))
            .await
            .expect("server_handshake did not end after the client closed its side")
    })
}

async fn control_handshake_stream_async(data: &[u8]) -> bool {
    let mut input = Input::new(data);
    let k = keys();
    let flags = input.u8();
    let pin = if flags & 1 != 0 {
        &k.stranger
    } else {
        &k.server
    };
    let payload1 = if flags & 2 != 0 {
        input.short_bytes()
    } else {
        &[][..]
    };
    let m1_genuine = pin.public() == k.server.public() && payload1.is_empty();
    let mut client = Handshake::control_client(&k.client, &pin.public()).expect("initiator builds");
    let m1 = frame(&client.write(payload1).expect("message 1"));
    let (mut near, far) = tokio::io::duplex(2 * MAX_WRITTEN);

    let script = async {
        let mut written: Vec<u8> = Vec::new();
        let mut m2_read = false;
        let mut m3: Option<(Vec<u8>, Vec<u8>)> = None;
        for _ in 0..MAX_OPS {
            if input.is_empty() {
                break;
            }
            let bytes = match input.u8() % 5 {
                0 => {
                    let answer_due = m1_genuine && written.is_empty();
                    if near.write_all(&m1).await.is_err() {
                        break;
                    }
                    written.extend_from_slice(&m1);
                    if answer_due {
                        let mut m2 = [0u8; HEADER_LEN + XK_MESSAGE1_LEN];
                        near.read_exact(&mut m2)
                            .await
                            .expect("no message 2 in answer to a genuine message 1");
                        assert_eq!(m2[..HEADER_LEN], [0, 48]);
                        client.read(&m2[HEADER_LEN..]).expect("genuine message 2");
                        m2_read = true;
                    }
                    continue;
                }
                1 => {
                    if !m2_read {
                        continue;
                    }
                    if m3.is_none() {
                        let payload = input.long_bytes(MAX_CONTROL_FRAME).to_vec();
                        let msg = client.write(&payload).expect("message 3");
                        m3 = Some((frame(&msg), payload));
                    }
                    m3.as_ref().map(|(f, _)| f.clone()).unwrap_or_default()
                }
                2 => input.short_bytes().to_vec(),
                3 => frame(input.short_bytes()),
                _ => {
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            if written.len() + bytes.len() > MAX_WRITTEN || near.write_all(&bytes).await.is_err() {
                break;
            }
            written.extend_from_slice(&bytes);
        }
        let _ = near.shutdown().await;
        (written, m3, m2_read)
    };
    let (result, (written, m3, m2_read)) = tokio::join!(server_handshake(far, &k.server), script);

    let expected = match &m3 {
        Some((m3_frame, payload))
            if m1_genuine
                && m3_frame.len() <= HEADER_LEN + MAX_CONTROL_FRAME
                && written.len() >= m1.len() + m3_frame.len()
                && written[..m1.len()] == m1[..]
                && written[m1.len()..m1.len() + m3_frame.len()] == m3_frame[..] =>
        {
            Register::decode(payload).ok()
        }
        _ => None,
    };
    let accepted = match result {
        Ok(mut acc) => {
            let want = expected.expect("server_handshake accepted a stream it must refuse");
            assert_eq!(acc.peer, k.client.public());
            assert_eq!(acc.channel.remote(), acc.peer);
            assert_eq!(acc.register, want);
            acc.channel.send(b"registered").await.expect("send");
            let mut transport = client.into_transport().expect("client finished");
            let mut header = [0u8; HEADER_LEN];
            near.read_exact(&mut header).await.expect("frame header");
            let mut ct = vec![0u8; usize::from(u16::from_be_bytes(header))];
            near.read_exact(&mut ct).await.expect("frame");
            let mut pt = Vec::new();
            transport.decrypt(&ct, &mut pt).expect("the channel works");
            assert_eq!(pt, b"registered");
            true
        }
        Err(e) => {
            assert!(expected.is_none(), "genuine handshake refused: {e}");
            if written.len() >= HEADER_LEN {
                let len = usize::from(u16::from_be_bytes([written[0], written[1]]));
                if (1..=MAX_CONTROL_FRAME).contains(&len)
                    && len != XK_MESSAGE1_LEN
                    && written.len() >= HEADER_LEN + len
                {
                    assert!(
                        matches!(e, ChannelError::HandshakeLength { index: 1, .. }),
                        "a {len}-byte first frame gave {e}"
                    );
                }
            }
            false
        }
    };
    // The server answers exactly a valid message 1 with one message 2, never more than it
    // received. Not only the genuine client's: a message 1 captured from any client (libFuzzer
    // finds them through its comparison tracing) stays valid, since it depends only on the
    // client's ephemeral and the server's static key, and is answered by design; the replay
    // leads nowhere, as message 3 cannot be forged.
    let answered = written.len() >= HEADER_LEN + XK_MESSAGE1_LEN
        && written[..HEADER_LEN] == [0, 48]
        && Handshake::control_server(&k.server)
            .expect("responder builds")
            .read(&written[HEADER_LEN..HEADER_LEN + XK_MESSAGE1_LEN])
            .is_ok();
    // The server has dropped its end: read what the script did not.
    let mut rest = Vec::new();
    near.read_to_end(&mut rest).await.expect("read to the end");
    let m2_len = HEADER_LEN + XK_MESSAGE1_LEN;
    let sent = rest.len() + if m2_read { m2_len } else { 0 };
    assert_eq!(sent, if answered { m2_len } else { 0 }, "server output");
    if !rest.is_empty() {
        assert_eq!(rest[..HEADER_LEN], [0, 48]);
    }
    accepted
}

// ---------------------------------------------------------------------------------------------
// Seeds

/// One accepted input per mode of every target, stored under `fuzz/seeds/<target>/<name>`.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let cat = |parts: &[&[u8]]| parts.concat();
    let register = Register {
        version: PROTOCOL_VERSION,
        local_addrs: vec![
            "192.168.1.5:4000".parse().expect("addr"),
            "[fd00::1]:4000".parse().expect("addr"),
        ],
        accept_inbound: true,
        allow: vec![],
        network: String::new(),
        probe: false,
    }
    .encode();
    let reg_len = u16::try_from(register.len()).expect("small").to_be_bytes();
    let offer = ServerMsg::Offer(Offer {
        session_id: 7,
        request_id: 1,
        peer: keys().client.public(),
        peer_observed: "203.0.113.7:4000".parse().expect("addr"),
        peer_local: vec!["10.0.0.2:4000".parse().expect("addr")],
        role: Role::Responder,
        dial_delay: Duration::from_millis(250),
        dial_at_us: Some(5_000_250),
        relay: None,
        upgrade: None,
        peer_nat: NatMapping::Unknown,
    });
    let error = ServerMsg::Error(ErrorReply {
        request_id: 3,
        code: ErrorCode::RateLimited,
        detail: "more than 20 punch requests per minute".into(),
        retry_after: Some(Duration::from_millis(1500)),
    });
    let registered = ServerMsg::Registered(Registered {
        observed: "198.51.100.1:4000".parse().expect("addr"),
        ping_interval: Duration::from_secs(5),
        nat_check_port: None,
    });
    let mut frames = vec![0x00, 0x10, 0x00, 3, 1, 7, 255];
    for m in [&offer, &error, &registered] {
        frames.extend_from_slice(&frame(&m.encode()));
    }
    vec![
        ("frame_codec", "three_messages_in_chunks", frames),
        (
            "frame_codec",
            "one_frame",
            cat(&[&[0, 0, 100, 0], &frame(b"x")]),
        ),
        (
            "client_msg",
            "ping",
            ClientMsg::Ping { nonce: 300 }.encode(),
        ),
        (
            "client_msg",
            "connect",
            ClientMsg::Connect {
                request_id: 1,
                peer: keys().server.public(),
            }
            .encode(),
        ),
        ("server_msg", "offer", offer.encode()),
        ("server_msg", "error", error.encode()),
        ("server_msg", "registered", registered.encode()),
        (
            "server_msg",
            "pong",
            ServerMsg::Pong {
                nonce: 9,
                server_time_us: Some(5_000_000),
            }
            .encode(),
        ),
        ("register_msg", "register", register.clone()),
        (
            "register_msg",
            "register_allow",
            Register {
                version: PROTOCOL_VERSION,
                local_addrs: vec![],
                accept_inbound: true,
                allow: vec![
                    keys().server.public(),
                    punch_proto::identity::public_key(&[2; 32]),
                ],
                network: String::new(),
                probe: false,
            }
            .encode(),
        ),
        (
            "register_msg",
            "register_network",
            Register {
                version: PROTOCOL_VERSION,
                local_addrs: vec![],
                accept_inbound: true,
                allow: vec![],
                network: "kaspa-testnet-10".into(),
                probe: false,
            }
            .encode(),
        ),
        (
            "client_msg",
            "discover",
            ClientMsg::Discover {
                request_id: 2,
                max: 16,
            }
            .encode(),
        ),
        (
            "server_msg",
            "going_away",
            ServerMsg::GoingAway {
                reconnect_within: Duration::from_secs(100),
            }
            .encode(),
        ),
        (
            "server_msg",
            "discovered",
            ServerMsg::Discovered {
                request_id: 2,
                peers: vec![
                    keys().server.public(),
                    punch_proto::identity::public_key(&[2; 32]),
                ],
            }
            .encode(),
        ),
        (
            "noise_control_responder",
            "message1_payload",
            cat(&[&[1, 0, 5], b"hello", &reg_len, &register, &[0, 0, 0]]),
        ),
        (
            "noise_control_responder",
            "genuine_register",
            cat(&[&[3, 0], &reg_len, &register, &[0, 0, 0]]),
        ),
        (
            "noise_peer_responder",
            "genuine",
            cat(&[
                &7u64.to_be_bytes(),
                &[1, 0, 4],
                b"ping",
                &[0, 0, 4],
                b"pong",
            ]),
        ),
        (
            "noise_transport",
            "control_both_ways",
            cat(&[
                &[1, 0, 5],
                b"hello",
                &[4, 0, 0, 0, 0, 1, 3],
                b"hey",
                &[5, 0, 0, 0, 0],
            ]),
        ),
        (
            "noise_transport",
            "peer_out_of_order",
            cat(&[
                &[0],
                &9u64.to_be_bytes(),
                &[
                    0, 1, b'a', 0, 1, b'b', 4, 1, 0, 0, 0, 4, 0, 0, 0, 0, 4, 1, 0, 0, 0,
                ],
            ]),
        ),
        (
            "control_handshake_stream",
            "genuine",
            cat(&[&[0, 0, 1], &reg_len, &register, &[4]]),
        ),
    ]
}
