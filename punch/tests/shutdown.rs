//! `Client::shutdown` ends every task the client spawned: the driver, the listener, punches in
//! progress and accepted streams still being routed.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use punch::{Client, Config, Error, Event, Incoming};
use punch_proto::Keypair;
use punch_rendezvous::Server;
use tokio::net::TcpStream;

const REGISTER: Duration = Duration::from_secs(10);

async fn client(server: &Server, accept: bool) -> (Client, Incoming) {
    let mut config = Config::new(
        server.local_addr(),
        server.identity(),
        Keypair::generate().unwrap(),
    );
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.accept_inbound = accept;
    let (c, inc) = Client::start(config).await.unwrap();
    c.wait_registered(REGISTER).await.unwrap();
    (c, inc)
}

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[test]
fn shutdown_ends_every_task_of_the_client() {
    // The rendezvous runs on a runtime of its own, so the clients' runtime counts only the
    // clients' tasks. Its dial margin keeps both punches waiting for their dial moment.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut config =
        punch_rendezvous::Config::new("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap());
    config.dial_margin = Duration::from_secs(60);
    let server = server_rt.block_on(Server::spawn(config)).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(alive(), 0);
        let (a, _) = client(&server, false).await;
        let (b, mut b_in) = client(&server, true).await;
        let (mut a_events, mut b_events) = (a.events(), b.events());
        let connect = a.connect(b.id());
        tokio::pin!(connect);
        let is_offer = |e: Result<Event, _>| matches!(e, Ok(Event::Offer { .. }));
        let (mut a_offer, mut b_offer) = (false, false);
        while !(a_offer && b_offer) {
            tokio::select! {
                res = &mut connect => panic!("connect ended early: {res:?}"),
                e = a_events.recv() => a_offer |= is_offer(e),
                e = b_events.recv() => b_offer |= is_offer(e),
            }
        }
        // A stranger's stream that never sends its preamble is being routed too.
        let with_punches = alive();
        let _stranger = TcpStream::connect(a.local_addr()).await.unwrap();
        tokio::time::timeout(REGISTER, async {
            while alive() == with_punches {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the stranger's stream is accepted");
        // Two drivers, two listeners, two punches, one routed stream.
        assert_eq!(alive(), 7);

        a.shutdown().await;
        assert_eq!(alive(), 3, "only B's driver, listener and punch are left");
        assert!(matches!(connect.await, Err(Error::Shutdown)));
        assert!(matches!(a.connect(b.id()).await, Err(Error::Shutdown)));
        b.shutdown().await;
        assert_eq!(alive(), 0, "a task of the clients outlived shutdown");
        assert!(b_in.next().await.is_none());
    });
    drop(server);
}
