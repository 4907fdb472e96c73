//! All socket2 work: sockets sharing one local port for TCP simultaneous open.
//!
//! The control connection to the rendezvous, the listener and every punch dial are bound to the
//! *same* local port, so the address the rendezvous observes (the NAT's mapping of that port)
//! is the address the punch dials from. Every such socket sets SO_REUSEADDR and SO_REUSEPORT
//! before binding; otherwise the second bind fails with EADDRINUSE. Two sockets bound to the
//! same port cannot connect to the same remote at once (EADDRNOTAVAIL: 4-tuple collision);
//! callers treat that as "already connected that way" and retry later.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Accept queue length of the punch listener: punches arrive a few at a time.
const LISTEN_BACKLOG: i32 = 128;

fn reuse_socket(addr: &SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        // Keep IPv4 and IPv6 punches apart: a v6 socket on the port must not claim v4 traffic.
        socket.set_only_v6(true)?;
    }
    socket.bind(&SockAddr::from(*addr))?;
    Ok(socket)
}

/// A listener on `local` that shares its port with the control connection and the dials.
pub fn listen(local: SocketAddr) -> io::Result<TcpListener> {
    let socket = reuse_socket(&local)?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `remote` from `local` (usually the shared punch port). Both ends doing this at
/// the same moment is a TCP simultaneous open: one connection, both `connect`s succeed.
pub async fn connect_from(local: SocketAddr, remote: SocketAddr) -> io::Result<TcpStream> {
    let socket = reuse_socket(&local)?;
    let std_stream: std::net::TcpStream = socket.into();
    TcpSocket::from_std_stream(std_stream).connect(remote).await
}

/// Turns on TCP keepalive so that a dead path is noticed and NAT mappings see traffic even when
/// the session is idle (yamux pings too; this is the kernel-level backstop).
pub fn keepalive(stream: &TcpStream, idle: std::time::Duration) -> io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listener_and_dials_share_a_port() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = listener.local_addr().unwrap();
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dial = connect_from(local, target.local_addr().unwrap())
            .await
            .unwrap();
        assert_eq!(dial.local_addr().unwrap(), local);
        let (_, seen) = target.accept().await.unwrap();
        assert_eq!(seen, local, "the dial leaves from the listener's port");
    }

    #[tokio::test]
    async fn simultaneous_open_on_loopback() {
        // Two sockets dial each other from fixed ports at once; with or without the listeners
        // picking up a SYN first, each side ends up with a working connection.
        let la = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let lb = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let (a, b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
        let (ra, rb) = tokio::join!(connect_from(a, b), connect_from(b, a));
        let ok_a = ra.is_ok() || la.accept().await.is_ok();
        let ok_b = rb.is_ok() || lb.accept().await.is_ok();
        assert!(ok_a && ok_b);
    }
}
