//! The NAT check, served for the server: a connection on the NAT check port runs the same
//! admission (per-IP slot, first-message timeout, handshake gate) and Noise XK handshake as
//! one on the main port, but carries `Register { probe: true }` from the punch port of a
//! client that is (usually) registered on the main port already:
//!
//! ```text
//! client (punch port)                      server (NAT check port)
//!   Noise XK 1, 2, 3 (+ Register { probe })  ->
//!                                            <-  Registered { observed }, then close
//! ```
//!
//! The registry compares `observed` with the address the client's registration was seen from
//! ([`crate::registry::Registry::nat_checked`]). The server closes first, so the TIME_WAIT of
//! the connection stays here: on the client it would block the next check from the same port
//! to the same address for a minute. A registration on the check port, or a probe on the main
//! port, is a protocol error: answered `BadRequest`, closed, counted, and logged within the
//! failure-log budget like a failed handshake.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use punch_proto::message::{
    ErrorCode, ErrorReply, Register, Registered, ServerMsg, PROTOCOL_VERSION,
};
use punch_proto::PeerId;
use tracing::{debug, info};

use super::{send, Conn, Shared};
use punch_proto::channel::Channel;

/// Which of the server's listeners accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listener {
    /// The main port: registrations and relay connections.
    Main,
    /// The NAT check port: probes only.
    NatCheck,
}

/// Whether a handshake that carried `register` on `listener` is the NAT check's business
/// (a probe, or anything on the check port) rather than a registration.
pub(super) fn is_nat_check(listener: Listener, register: &Register) -> bool {
    register.probe || listener == Listener::NatCheck
}

/// Answers a probe with the address it was seen from, or refuses what does not belong on
/// this port; the connection closes when this returns.
pub(super) async fn serve(
    mut channel: Channel<Conn>,
    shared: &Shared,
    peer: PeerId,
    addr: SocketAddr,
    listener: Listener,
    register: &Register,
) {
    let refusal = match (listener, register.probe) {
        (Listener::NatCheck, true) if register.version == PROTOCOL_VERSION => None,
        (Listener::NatCheck, true) => Some((
            ErrorCode::UnsupportedVersion,
            "unsupported protocol version",
        )),
        (Listener::NatCheck, false) => Some((
            ErrorCode::BadRequest,
            "this port answers NAT checks only; register on the main port",
        )),
        (Listener::Main, _) => Some((
            ErrorCode::BadRequest,
            "NAT checks go to the port Registered names",
        )),
    };
    if let Some((code, detail)) = refusal {
        shared
            .counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        if shared.lock().refusals.may_log_failure() {
            info!(?listener, probe = register.probe, ?code, "closed: {detail}");
        }
        let reply = ServerMsg::Error(ErrorReply {
            request_id: 0,
            code,
            detail: detail.into(),
            retry_after: None,
        });
        let _ = send(&mut channel, reply).await;
        return;
    }
    let mapping = shared.lock().registry.nat_checked(&peer, addr);
    shared
        .counters
        .nat_checks_answered
        .fetch_add(1, Ordering::Relaxed);
    let answer = ServerMsg::Registered(Registered {
        observed: addr,
        ping_interval: shared.config.ping_interval,
        nat_check_port: None,
    });
    match send(&mut channel, answer).await {
        Ok(()) => debug!(?mapping, "NAT check answered"),
        Err(e) => debug!(error = %e, "NAT check: the answer could not be sent"),
    }
}
