//! The simulated rendezvous: the real [`Registry`] behind a little glue standing in for the
//! server's connection drivers (register at handshake message 3 with its RTT sample, send
//! `Registered`, ping every interval, pass `Connect` to the registry, carry out its actions).

use punch_proto::message::{ClientMsg, ErrorReply, Register, Registered, ServerMsg};
use punch_rendezvous::registry::{self, ConnId};

use super::{Packet, ServerConn, Sim};

impl Sim {
    pub(super) fn server_receive(&mut self, client: usize, conn: ConnId, packet: Packet) {
        let now = self.now;
        match packet {
            Packet::Syn if !self.server.up => self.send(false, client, conn, Packet::Refused),
            Packet::Syn => {
                // Accepted by the kernel even when the process hangs; message 2 needs the process.
                self.server.conns.insert(
                    conn,
                    ServerConn {
                        client,
                        peer: None,
                        handshake_sent: now,
                        next_ping: now,
                        ping: None,
                    },
                );
                if !self.server.hung {
                    self.send(false, client, conn, Packet::SynAck);
                }
            }
            _ if self.server.hung => {}
            Packet::Hello(bytes) => self.register(client, conn, &bytes),
            Packet::Frame(bytes) => self.server_frame(conn, &bytes),
            Packet::Fin => {
                if let Some(c) = self.server.conns.remove(&conn) {
                    if let Some(peer) = c.peer {
                        self.server.registry.unregister(&peer, conn);
                    }
                }
            }
            Packet::SynAck | Packet::Refused => unreachable!("server-bound packets only"),
        }
    }

    fn register(&mut self, client: usize, conn: ConnId, bytes: &[u8]) {
        let now = self.now;
        let Some(c) = self.server.conns.get(&conn) else {
            return;
        };
        let rtt = now - c.handshake_sent;
        let register = Register::decode(bytes).expect("the client's registration decodes");
        let (peer, observed) = (self.nodes[client].id, self.nodes[client].public);
        match self
            .server
            .registry
            .register(conn, peer, observed, &register, rtt)
        {
            Ok(actions) => {
                let interval = self.server.ping_interval;
                if let Some(c) = self.server.conns.get_mut(&conn) {
                    c.peer = Some(peer);
                    c.next_ping = now + interval;
                }
                let msg = ServerMsg::Registered(Registered {
                    observed,
                    ping_interval: interval,
                    nat_check_port: None,
                });
                self.send(false, client, conn, Packet::Frame(msg.encode()));
                self.dispatch(actions);
            }
            Err(code) => {
                let msg = ServerMsg::Error(ErrorReply {
                    request_id: 0,
                    code,
                    detail: format!("registration refused: {code:?}"),
                    retry_after: None,
                });
                self.send(false, client, conn, Packet::Frame(msg.encode()));
                self.send(false, client, conn, Packet::Fin);
                self.server.conns.remove(&conn);
            }
        }
    }

    fn server_frame(&mut self, conn: ConnId, bytes: &[u8]) {
        let now = self.now;
        let Some(c) = self.server.conns.get_mut(&conn) else {
            return;
        };
        let (client, Some(peer)) = (c.client, c.peer) else {
            return;
        };
        match ClientMsg::decode(bytes).expect("the client's messages decode") {
            ClientMsg::Pong { nonce } => {
                if let Some((expected, sent)) = c.ping {
                    if expected == nonce {
                        c.ping = None;
                        self.server.registry.rtt_sample(&peer, conn, now - sent);
                    }
                }
            }
            ClientMsg::Ping { nonce } => {
                let msg = ServerMsg::Pong {
                    nonce,
                    server_time_us: Some(registry::clock_us(self.server.epoch, now)),
                };
                self.send(false, client, conn, Packet::Frame(msg.encode()));
            }
            ClientMsg::Connect {
                request_id,
                peer: target,
            } => {
                let actions = self
                    .server
                    .registry
                    // The simulated links have no send queue to fill: every connection can send.
                    .connect(now, conn, peer, request_id, target, |_| true);
                self.dispatch(actions);
            }
            other => panic!("unexpected client message {other:?}"),
        }
    }

    pub(super) fn server_pings(&mut self) {
        let now = self.now;
        let interval = self.server.ping_interval;
        let due: Vec<ConnId> = self
            .server
            .conns
            .iter()
            .filter(|(_, c)| c.peer.is_some() && c.next_ping <= now)
            .map(|(id, _)| *id)
            .collect();
        for conn in due {
            let nonce = self.seq();
            let c = self.server.conns.get_mut(&conn).expect("listed above");
            c.ping = Some((nonce, now));
            c.next_ping = now + interval;
            let client = c.client;
            self.send(
                false,
                client,
                conn,
                Packet::Frame(ServerMsg::Ping { nonce }.encode()),
            );
        }
    }

    fn dispatch(&mut self, actions: Vec<registry::Action>) {
        for action in actions {
            match action {
                registry::Action::Send { conn, msg } => {
                    if let Some(client) = self.server.conns.get(&conn).map(|c| c.client) {
                        if let ServerMsg::Offer(o) = &msg {
                            let to = self.nodes[client].name;
                            self.log(
                                "server",
                                format_args!(
                                    "offer to {to}: session {} delay {:?}",
                                    o.session_id, o.dial_delay
                                ),
                            );
                        }
                        self.send(false, client, conn, Packet::Frame(msg.encode()));
                    }
                }
                registry::Action::Close { conn, .. } => {
                    if let Some(c) = self.server.conns.remove(&conn) {
                        self.send(false, c.client, conn, Packet::Fin);
                    }
                }
            }
        }
    }
}
