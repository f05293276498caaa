//! A fault-injecting TCP proxy: put it between a worker and the
//! orchestrator and switch its behaviour during a test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Close every new connection at once (like a refused connection).
    Refuse,
    /// Accept and hold: nothing is forwarded, nothing is closed.
    Blackhole,
    /// Forward, delaying each chunk.
    Delay(Duration),
}

/// The proxy. Dropping it stops it.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    upstream: Arc<Mutex<SocketAddr>>,
    /// Bumped to cut every live connection.
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (cuts, cuts_rx) = watch::channel(0u64);
        let upstream = Arc::new(Mutex::new(upstream));
        let task = {
            let upstream = Arc::clone(&upstream);
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let _ = socket.set_nodelay(true);
                    let to = *upstream.lock().unwrap_or_else(|p| p.into_inner());
                    tokio::spawn(handle(socket, to, mode_rx.clone(), cuts_rx.clone()));
                }
            })
        };
        Self { addr, mode, upstream, cuts, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` + [`addr`](Self::addr).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the behaviour; live connections follow it (a blackholed or
    /// refusing proxy also cuts the connections that are open).
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if matches!(mode, Mode::Refuse | Mode::Blackhole) {
            self.cut();
        }
    }

    /// The current behaviour.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Closes every live connection now.
    pub fn cut(&self) {
        self.cuts.send_modify(|c| *c += 1);
    }

    /// Points new connections at another upstream (a restarted orchestrator).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
        self.cut();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut cuts: watch::Receiver<u64>,
) {
    cuts.mark_unchanged();
    let current = *mode.borrow_and_update();
    match current {
        Mode::Refuse => return,
        Mode::Blackhole => {
            // Hold the connection until it is cut or the mode changes.
            tokio::select! {
                _ = cuts.changed() => {}
                _ = mode.changed() => {}
            }
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = { server }.into_split();
    let up = pump(&mut cr, &mut sw, mode.clone());
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !wait_mode(&mut mode.clone()).await {
                return;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cuts.changed() => {}
    }
}

async fn pump<R: AsyncReadExt + Unpin, W: AsyncWriteExt + Unpin>(
    r: &mut R,
    w: &mut W,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !wait_mode(&mut mode).await {
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Applies the current mode to one chunk: `false` to drop the connection.
async fn wait_mode(mode: &mut watch::Receiver<Mode>) -> bool {
    let current = *mode.borrow();
    match current {
        Mode::Pass => true,
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            true
        }
        Mode::Refuse | Mode::Blackhole => false,
    }
}
