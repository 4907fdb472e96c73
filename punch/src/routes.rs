//! Routes streams the listener accepted to the punch they belong to, by the session id of
//! their preamble.
//!
//! The driver inserts a punch's route when its offer arrives and removes it when the punch
//! ends. A stream may arrive a little before its offer (the peer's SYN can beat the
//! rendezvous's message): [`Routes::wait`] then parks a oneshot waiter that [`Routes::insert`]
//! wakes, instead of polling the table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::driver::Inbound;
use crate::lock;

/// Where a punch takes its accepted streams.
pub(crate) type Route = mpsc::Sender<Inbound>;

#[derive(Debug, Default)]
struct Table {
    routes: HashMap<u64, Route>,
    /// Accepted streams waiting for their punch. Bounded by the listener's limit on streams
    /// being routed (`Config::max_pending_inbound`).
    waiters: HashMap<u64, Vec<oneshot::Sender<Route>>>,
}

/// The route table, shared by the driver and the listener's tasks.
#[derive(Debug, Default)]
pub(crate) struct Routes(Mutex<Table>);

impl Routes {
    /// A punch with this session id takes streams on `route`; wakes the streams waiting for it.
    pub fn insert(&self, session: u64, route: Route) {
        let mut t = lock(&self.0);
        for waiter in t.waiters.remove(&session).unwrap_or_default() {
            let _ = waiter.send(route.clone());
        }
        t.routes.insert(session, route);
    }

    /// The punch ended.
    pub fn remove(&self, session: u64) {
        lock(&self.0).routes.remove(&session);
    }

    /// The route of `session`, waiting up to `timeout` for the punch to appear.
    pub async fn wait(&self, session: u64, timeout: Duration) -> Option<Route> {
        let rx = {
            let mut t = lock(&self.0);
            if let Some(route) = t.routes.get(&session) {
                return Some(route.clone());
            }
            let (tx, rx) = oneshot::channel();
            t.waiters.entry(session).or_default().push(tx);
            rx
        };
        let waited = tokio::time::timeout(timeout, rx).await;
        match waited {
            Ok(Ok(route)) => Some(route),
            _ => {
                // Our receiver is gone: forget its sender (and any other abandoned one).
                let mut t = lock(&self.0);
                if let Some(ws) = t.waiters.get_mut(&session) {
                    ws.retain(|w| !w.is_closed());
                    if ws.is_empty() {
                        t.waiters.remove(&session);
                    }
                }
                None
            }
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.0).waiters.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_waiting_stream_is_woken_by_its_punch() {
        let routes = Arc::new(Routes::default());
        let waiting = tokio::spawn({
            let routes = routes.clone();
            async move { routes.wait(7, Duration::from_secs(2)).await }
        });
        while routes.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let (other, _other_rx) = mpsc::channel(1);
        routes.insert(8, other);
        assert_eq!(routes.waiting(), 1, "another session's punch wakes nobody");
        let (tx, _rx) = mpsc::channel(1);
        routes.insert(7, tx.clone());
        let route = waiting.await.unwrap().expect("woken with the route");
        assert!(route.same_channel(&tx), "the route of session 7");
        assert_eq!(routes.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_without_punch_gives_up_and_leaves_no_waiter() {
        let routes = Routes::default();
        assert!(routes.wait(9, Duration::from_secs(2)).await.is_none());
        assert_eq!(routes.waiting(), 0);
        let (tx, _rx) = mpsc::channel(1);
        routes.insert(9, tx);
        assert!(
            routes.wait(9, Duration::ZERO).await.is_some(),
            "present: no wait"
        );
        routes.remove(9);
        assert!(routes.wait(9, Duration::ZERO).await.is_none());
    }
}
