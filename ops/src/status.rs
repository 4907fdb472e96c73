//! The local status socket: a running node answers `punch status` over a unix socket.
//!
//! The protocol is one JSON document per connection: the server writes the status as it is at
//! accept, then closes; it reads nothing, so a client cannot make it parse anything. The socket
//! lives in the node's state directory (beside its key) with mode 0600, so only the node's
//! user (and root) can ask. At most [`MAX_CONNECTIONS`] answers are written at once and each
//! write is bounded by [`WRITE_TIMEOUT`] (a client that does not read is dropped).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Answers being written at once; more connections are closed at accept.
pub const MAX_CONNECTIONS: usize = 8;
/// An answer not read within this is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// `query` gives up after this: a status answer is written at once.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer `query` reads (a node with thousands of sessions stays far below).
pub const MAX_ANSWER: u64 = 16 << 20;

/// Why the status socket could not be served or asked.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Another process answers on the socket already.
    #[error("{0} is in use: another instance is running (or remove the file if it is not)")]
    InUse(PathBuf),
    #[error("status socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Nothing listens there (the node is not running, or runs with another state directory).
    #[error("no node answers at {path} ({source}): is it running, with this key file or --status-socket?")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the node at {0} did not answer in time")]
    Timeout(PathBuf),
    #[error("the node at {0} answered something that is not JSON: {1}")]
    Malformed(PathBuf, serde_json::Error),
}

/// The default socket path of a node whose key file is `key_file`: beside it, named after it
/// (`node.key` -> `node.key.status`), so two nodes with two keys in one directory never meet.
pub fn socket_beside(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".status");
    PathBuf::from(name)
}

/// A running status socket; dropping it stops serving and removes the socket file.
#[derive(Debug)]
pub struct StatusServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl StatusServer {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves `status()` (called at each connection) as JSON at `path`, mode 0600. A leftover
/// socket file nobody answers on (a crash) is replaced; one that answers is refused
/// ([`StatusError::InUse`]).
pub async fn serve<F>(path: &Path, status: F) -> Result<StatusServer, StatusError>
where
    F: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    let io_err = |source| StatusError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(StatusError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    info!(path = %path.display(), "status socket ready (punch status)");
    let status = Arc::new(status);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "status socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                debug!("status socket: too many connections; closed");
                continue;
            };
            let doc = status();
            tokio::spawn(async move {
                let mut stream = stream;
                let mut bytes = match serde_json::to_vec_pretty(&doc) {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(error = %e, "status socket: encoding failed");
                        return;
                    }
                };
                bytes.push(b'\n');
                let write = async {
                    stream.write_all(&bytes).await?;
                    stream.shutdown().await
                };
                if tokio::time::timeout(WRITE_TIMEOUT, write).await.is_err() {
                    debug!("status socket: reader too slow; dropped");
                }
                drop(permit);
            });
        }
    });
    Ok(StatusServer {
        path: path.to_owned(),
        task,
    })
}

/// Asks the node at `path` for its status.
pub async fn query(path: &Path) -> Result<serde_json::Value, StatusError> {
    let ask = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| StatusError::NotRunning {
                path: path.to_owned(),
                source,
            })?;
        let mut bytes = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut bytes)
            .await
            .map_err(|source| StatusError::Io {
                path: path.to_owned(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| StatusError::Malformed(path.to_owned(), e))
    };
    tokio::time::timeout(QUERY_TIMEOUT, ask)
        .await
        .map_err(|_| StatusError::Timeout(path.to_owned()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_with_the_status_of_the_moment_owner_only_and_refuses_a_second_server() {
        let dir = std::env::temp_dir().join(format!("punch-ops-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = socket_beside(&dir.join("node.key"));
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = n.clone();
        let server = serve(&path, move || {
            let v = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            serde_json::json!({ "asked": v })
        })
        .await
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(query(&path).await.unwrap()["asked"], 0);
        assert_eq!(query(&path).await.unwrap()["asked"], 1);
        assert!(matches!(
            serve(&path, || serde_json::Value::Null).await,
            Err(StatusError::InUse(_))
        ));
        drop(server);
        assert!(!path.exists());
        assert!(matches!(
            query(&path).await,
            Err(StatusError::NotRunning { .. })
        ));
        // A stale socket file (a crash) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let again = serve(&path, || serde_json::json!({ "ok": true }))
            .await
            .unwrap();
        assert_eq!(query(&path).await.unwrap()["ok"], true);
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
