use super::*;

const SYN: u16 = 1;
const ACK: u16 = 2;
const RST: u16 = 8;
const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const PING: u8 = 2;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn limits() -> GuardLimits {
    GuardLimits {
        max_unread: 1024 * 1024,
        max_pending_replies: 4,
        write_stall: s(5),
        read_stall: s(7),
    }
}

fn guard() -> (Guard, Instant) {
    let t0 = Instant::now();
    (Guard::new(limits(), 8, t0), t0)
}

/// A data frame: header and `len` body bytes.
fn data(flags: u16, stream: u32, len: u32) -> Vec<u8> {
    let mut f = encode_header(DATA, flags, stream, len).to_vec();
    f.resize(HEADER_LEN + len as usize, 0xAB);
    f
}

fn frame(ty: u8, flags: u16, stream: u32, length: u32) -> Vec<u8> {
    encode_header(ty, flags, stream, length).to_vec()
}

/// The peer opens stream 1; we acknowledge with the window yamux grants (16 MiB total).
fn opened(g: &mut Guard, t: Instant) {
    g.on_read(&frame(WINDOW_UPDATE, SYN, 1, 0)).unwrap();
    g.on_written(
        &frame(WINDOW_UPDATE, ACK, 1, 16 * 1024 * 1024 - 256 * 1024),
        t,
    );
}

#[test]
fn data_within_the_written_window_is_counted_as_unread() {
    let (mut g, t0) = guard();
    opened(&mut g, t0);
    g.on_read(&data(0, 1, 1000)).unwrap();
    g.on_read(&data(0, 1, 500)).unwrap();
    assert_eq!(g.unread(), 1500 + 2 * FRAME_OVERHEAD);
    // A frame counts in full until its last byte is read (yamux keeps its buffer).
    g.on_delivered(1, 600);
    assert_eq!(g.unread(), 1500 + 2 * FRAME_OVERHEAD);
    g.on_delivered(1, 600);
    assert_eq!(g.unread(), 500 + FRAME_OVERHEAD);
    g.check_invariants();
    g.on_released(1);
    assert_eq!(g.unread(), 0);
    assert_eq!(g.streams(), 0);
    g.check_invariants();
}

#[test]
fn data_beyond_the_window_is_a_violation_before_it_is_buffered() {
    let (mut g, t0) = guard();
    g.on_read(&frame(WINDOW_UPDATE, SYN, 1, 0)).unwrap();
    // No window update written yet: only the initial 256 KiB may come.
    g.on_read(&data(0, 1, 200 * 1024)).unwrap();
    let err = g.on_read(&data(0, 1, 100 * 1024)).unwrap_err();
    assert_eq!(
        err,
        Violation::WindowExceeded {
            stream: 1,
            len: 100 * 1024,
            window: 56 * 1024
        }
    );
    // Sticky: later bytes fail the same way.
    assert_eq!(g.on_read(&[0; 3]), Err(err));
    assert_eq!(g.violation(), Some(err));
    let _ = t0;
}

#[test]
fn a_window_update_we_wrote_extends_what_the_peer_may_send() {
    let (mut g, t0) = guard();
    opened(&mut g, t0);
    // 16 MiB in total may arrive, in frames split across reads at odd places.
    let frames: Vec<u8> = (0..16).flat_map(|_| data(0, 1, 1024 * 1024)).collect();
    for chunk in frames.chunks(7_919) {
        g.on_read(chunk).unwrap();
    }
    assert!(g.on_read(&data(0, 1, 1)).is_err());
}

#[test]
fn data_for_an_untracked_stream_is_ignored() {
    let (mut g, _) = guard();
    g.on_read(&data(0, 99, 300 * 1024)).unwrap();
    assert_eq!(g.unread(), 0);
}

#[test]
fn an_ack_for_a_ping_we_never_wrote_is_a_violation() {
    let (mut g, t0) = guard();
    g.on_written(&frame(PING, SYN, 0, 7), t0);
    g.on_read(&frame(PING, ACK, 0, 7)).unwrap();
    assert_eq!(
        g.on_read(&frame(PING, ACK, 0, u32::MAX)),
        Err(Violation::UnsolicitedPingAck { id: u32::MAX })
    );
}

#[test]
fn a_ping_flood_while_writes_are_stuck_pauses_reading_and_answers_resume_it() {
    let (mut g, t0) = guard();
    g.on_write_blocked(t0);
    for id in 0..4 {
        assert!(g.may_read(t0));
        g.on_read(&frame(PING, SYN, 0, id)).unwrap();
    }
    assert!(!g.may_read(t0), "4 replies owed: stop reading");
    assert_eq!(g.pending_replies(), 4);
    // The socket takes our answers again.
    g.on_written(&frame(PING, ACK, 0, 0), t0 + s(1));
    assert!(g.may_read(t0 + s(1)));
}

#[test]
fn stream_openings_owe_a_reply_and_a_reset_answers_one() {
    let (mut g, t0) = guard();
    for id in [1, 3, 5, 7] {
        g.on_read(&frame(WINDOW_UPDATE, SYN, id, 0)).unwrap();
    }
    assert!(!g.may_read(t0));
    // yamux refuses one opening (over its cap): RST|ACK forgets the stream.
    g.on_written(&frame(WINDOW_UPDATE, ACK | RST, 7, 0), t0);
    assert_eq!(g.streams(), 3);
    assert!(g.may_read(t0));
}

#[test]
fn the_stream_table_is_bounded() {
    let (mut g, _) = guard();
    let max = 8 + 4;
    for i in 0..max as u32 {
        g.on_read(&frame(WINDOW_UPDATE, SYN, 2 * i + 1, 0)).unwrap();
    }
    assert_eq!(
        g.on_read(&frame(WINDOW_UPDATE, SYN, 999, 0)),
        Err(Violation::TooManyStreams { max })
    );
    g.check_invariants();
}

#[test]
fn a_full_unread_budget_pauses_reading_until_the_application_reads() {
    let (mut g, t0) = guard();
    opened(&mut g, t0);
    g.on_read(&data(0, 1, 1024 * 1024 - FRAME_OVERHEAD as u32))
        .unwrap();
    assert!(!g.may_read(t0));
    assert_eq!(g.verdict(t0 + s(6)), None);
    assert_eq!(
        g.verdict(t0 + s(7)),
        Some(Verdict::ReaderStalled {
            stalled: s(7),
            unread: 1024 * 1024
        })
    );
    assert!(
        !g.on_delivered(1, 1),
        "part of the frame read: its buffer is still held"
    );
    assert!(
        g.on_delivered(1, 1024 * 1024),
        "reading the rest lifts the pause"
    );
    assert!(g.may_read(t0 + s(8)));
    assert_eq!(g.verdict(t0 + s(30)), None);
}

#[test]
fn writes_stuck_past_the_limit_end_the_session_and_progress_resets_the_clock() {
    let (mut g, t0) = guard();
    g.on_write_blocked(t0);
    g.on_write_blocked(t0 + s(3));
    assert_eq!(g.verdict(t0 + s(4)), None);
    assert_eq!(
        g.verdict(t0 + s(5)),
        Some(Verdict::PeerNotReading { stalled: s(5) })
    );
    g.on_written(&[], t0 + s(5));
    assert_eq!(g.verdict(t0 + s(9)), None);
    g.on_write_blocked(t0 + s(9));
    assert_eq!(g.verdict(t0 + s(13)), None);
}

#[test]
fn a_frame_that_is_not_yamux_is_malformed() {
    let (mut g, _) = guard();
    let mut f = frame(DATA, 0, 1, 0);
    f[0] = 1;
    assert_eq!(
        g.on_read(&f),
        Err(Violation::Malformed { version: 1, ty: 0 })
    );
    let (mut g, _) = guard();
    assert_eq!(
        g.on_read(&frame(9, 0, 1, 0)),
        Err(Violation::Malformed { version: 0, ty: 9 })
    );
}
