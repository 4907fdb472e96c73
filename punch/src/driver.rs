//! Carries out one punch: waits for the agreed moment, dials every candidate from the shared
//! port (driven by the pure [`Attempt`]), authenticates every stream that connects, dialed or
//! accepted, and returns the first one chosen (see [`crate::auth`]) as a [`Session`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use punch_proto::message::Offer;
use punch_proto::{Keypair, Role};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::attempt::{Attempt, Failure, Schedule};
use crate::auth::{authenticate, AuthError, Authenticated, Expect};
use crate::client::Event;
use crate::config::Config;
use crate::error::Error;
use crate::session::{PathKind, Session, SessionInfo};
use crate::socket;

/// A stream the listener accepted and routed to this punch by its preamble.
pub(crate) type Inbound = (TcpStream, SocketAddr);

/// What a punch needs from the client.
#[derive(Debug)]
pub(crate) struct PunchCtx {
    pub keypair: Keypair,
    pub local: SocketAddr,
    pub config: Config,
    pub events: broadcast::Sender<Event>,
}

impl PunchCtx {
    /// Sends an event to whoever listens (nobody is fine).
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

type AuthResult = (SocketAddr, bool, Result<Authenticated, AuthError>);

/// Runs the punch described by `offer`. `started` is when the user asked (or the offer came).
pub(crate) async fn run(
    ctx: Arc<PunchCtx>,
    offer: Offer,
    mut inbound: mpsc::Receiver<Inbound>,
    started: Instant,
) -> Result<Session, Error> {
    let config = &ctx.config;
    let expect = Arc::new(Expect {
        role: offer.role,
        keypair: ctx.keypair.clone(),
        peer: offer.peer,
        session_id: offer.session_id,
    });
    let start = tokio::time::Instant::now() + offer.dial_delay;
    let mut attempt = Attempt::new(
        Schedule {
            start: start.into_std(),
            window: config.punch_window,
            retry_interval: config.retry_interval,
        },
        std::iter::once(offer.peer_observed).chain(offer.peer_local.iter().copied()),
    );
    debug!(
        delay_ms = offer.dial_delay.as_millis() as u64,
        "waiting for the dial moment"
    );

    let mut dials: JoinSet<(SocketAddr, std::io::Result<TcpStream>)> = JoinSet::new();
    let mut auths: JoinSet<AuthResult> = JoinSet::new();
    let mut confirms: JoinSet<(SocketAddr, Result<Authenticated, AuthError>)> = JoinSet::new();
    let mut last_auth_error: Option<(SocketAddr, AuthError)> = None;
    let spawn_auth = |auths: &mut JoinSet<AuthResult>, stream, accepted: bool, addr| {
        let expect = expect.clone();
        let timeout = config.auth_timeout;
        auths.spawn(async move {
            let res = match tokio::time::timeout(timeout, authenticate(stream, accepted, &expect))
                .await
            {
                Ok(res) => res,
                Err(_) => Err(AuthError::Io(std::io::ErrorKind::TimedOut.into())),
            };
            (addr, accepted, res)
        });
    };

    let mut dialed = std::collections::HashSet::new();
    loop {
        let now = Instant::now();
        while let Some(addr) = attempt.poll_dial(now) {
            debug!(%addr, "dial");
            if dialed.insert(addr) {
                ctx.emit(Event::Dial {
                    peer: offer.peer,
                    session_id: offer.session_id,
                    addr,
                });
            }
            let (local, timeout) = (ctx.local, config.connect_timeout);
            dials.spawn(async move {
                let res =
                    match tokio::time::timeout(timeout, socket::connect_from(local, addr)).await {
                        Ok(res) => res,
                        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                    };
                (addr, res)
            });
        }
        let wake = tokio::time::Instant::from_std(attempt.poll_timeout());
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {
                if attempt.is_expired(Instant::now()) {
                    break;
                }
            }
            Some(res) = dials.join_next() => {
                let Ok((addr, res)) = res else { continue };
                match res {
                    Ok(stream) => {
                        debug!(%addr, "dial connected; authenticating");
                        attempt.on_connected(addr);
                        spawn_auth(&mut auths, stream, false, addr);
                    }
                    Err(e) => {
                        debug!(%addr, error = %e, "dial failed");
                        let failure = match e.kind() {
                            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset => Failure::Refused,
                            _ => Failure::Other,
                        };
                        attempt.on_dial_failed(Instant::now(), addr, failure, e.to_string());
                    }
                }
            }
            Some((stream, from)) = inbound.recv() => {
                debug!(%from, "accepted a stream for this punch; authenticating");
                spawn_auth(&mut auths, stream, true, from);
            }
            Some(res) = auths.join_next() => {
                let Ok((addr, accepted, res)) = res else { continue };
                match res {
                    Ok(mut auth) => match offer.role {
                        Role::Initiator => match auth.confirm().await {
                            Ok(()) => return Ok(established(&ctx, &offer, auth, started)),
                            Err(e) => debug!(%addr, error = %e, "confirm failed"),
                        },
                        Role::Responder => {
                            let timeout = config.auth_timeout;
                            confirms.spawn(async move {
                                let res = match tokio::time::timeout(timeout, auth.await_confirm()).await {
                                    Ok(Ok(())) => Ok(auth),
                                    Ok(Err(e)) => Err(e),
                                    Err(_) => Err(AuthError::NotConfirmed),
                                };
                                (addr, res)
                            });
                        }
                    },
                    Err(e) => {
                        if e.is_final() {
                            warn!(%addr, error = %e, "stream rejected: authentication failed");
                        } else {
                            debug!(%addr, error = %e, "stream broke during authentication");
                        }
                        if !accepted {
                            attempt.on_auth_failed(Instant::now(), addr, e.to_string(), e.is_final());
                        }
                        if e.is_final() || last_auth_error.is_none() {
                            last_auth_error = Some((addr, e));
                        }
                    }
                }
            }
            Some(res) = confirms.join_next() => {
                let Ok((addr, res)) = res else { continue };
                match res {
                    Ok(auth) => return Ok(established(&ctx, &offer, auth, started)),
                    Err(e) => debug!(%addr, error = %e, "stream not selected"),
                }
            }
        }
    }
    let elapsed = started.elapsed();
    match last_auth_error {
        Some((addr, e)) if e.is_final() => Err(Error::AuthFailed {
            peer: offer.peer,
            addr,
            reason: e.to_string(),
        }),
        _ => Err(Error::PunchTimeout {
            peer: offer.peer,
            elapsed,
            tried: attempt.tried(),
        }),
    }
}

fn established(ctx: &PunchCtx, offer: &Offer, auth: Authenticated, started: Instant) -> Session {
    let info = SessionInfo {
        peer: offer.peer,
        remote: auth.remote,
        path: PathKind::Direct,
        role: offer.role,
        session_id: offer.session_id,
        elapsed: started.elapsed(),
    };
    if let Err(e) = socket::keepalive(auth.get_ref(), KEEPALIVE_IDLE) {
        debug!(error = %e, "could not enable TCP keepalive");
    }
    info!(remote = %info.remote, path = %info.path, ms = info.elapsed.as_millis() as u64, "session established");
    ctx.emit(Event::Established(info.clone()));
    Session::start(auth.into_secure(), info, ctx.config.stream_window)
}

/// TCP keepalive idle time on punched connections (backstop to yamux pings).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
