//! Leadership on PostgreSQL: one row, `leader_lease`, names the replica that
//! may write, its advertised address and an epoch, the fencing token every
//! commit of the PostgreSQL store checks (`PostgresStore::fenced`).
//!
//! - **Acquire**: one transaction, `SELECT … FOR UPDATE` (which waits for
//!   commits in flight, see `PostgresStore::fenced`) then the `UPDATE` (or
//!   the first `INSERT`): the row is taken only when its lease has expired
//!   by the database's clock, and the epoch grows by one with each new
//!   holder.
//! - **Renew**: one `UPDATE … WHERE holder = $1 AND epoch = $2`, every
//!   lease / 5, extending `expires_at` to `now() + lease`.
//! - **Step down on our own clock**: the holder stops serving once
//!   `lease − margin` has passed since the *start* of its last successful
//!   renewal, measured on its monotonic clock, whatever the database says:
//!   by then another replica may take the row only after `expires_at`,
//!   which is at least `lease` after that start by the database's clock, so
//!   the two never serve at once as long as the clocks' rates differ by
//!   less than `margin / lease` (20 % with the defaults).
//!
//! The lease uses its own connection (never a pooled one), with a short
//! `statement_timeout` and TCP keepalives; no advisory lock is involved.

use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use super::pg::{error_text, redact_url};

/// Timings of the leader lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimings {
    /// How long a lease lasts from a renewal's start (default 10 s).
    pub lease: Duration,
    /// How long before the lease's end the holder steps down (default 2 s).
    pub margin: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self { lease: Duration::from_secs(10), margin: Duration::from_secs(2) }
    }
}

impl LeaseTimings {
    /// How often the holder renews: a fifth of the lease.
    pub fn renew_every(&self) -> Duration {
        self.lease / 5
    }

    /// How long after a renewal's start the holder stops serving.
    pub fn serve_for(&self) -> Duration {
        self.lease.saturating_sub(self.margin)
    }
}

/// Who holds the lease, as the database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The holder's id.
    pub holder: String,
    /// Its advertised address.
    pub address: String,
    /// Its epoch.
    pub epoch: u64,
    /// Milliseconds until its lease expires (negative: expired).
    pub expires_in_ms: i64,
}

/// The outcome of an election attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Election {
    /// This replica leads at `epoch`; the attempt started at `started`.
    Won {
        /// The fencing epoch.
        epoch: u64,
        /// When the attempt started (the lease counts from here).
        started: Instant,
    },
    /// Another replica holds an unexpired lease.
    Lost(Holder),
}

/// One replica's side of the leader lease, on a dedicated connection.
pub struct Leadership {
    client: Client,
    holder: String,
    address: String,
    timings: LeaseTimings,
    shown: String,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("holder", &self.holder)
            .field("address", &self.address)
            .field("database", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// Connects (a connection of its own) as `holder`, advertising
    /// `address`. The schema must exist (open a `PostgresStore` first).
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub fn connect(url: &str, holder: &str, address: &str, timings: LeaseTimings) -> Result<Self, String> {
        let shown = redact_url(url);
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| error_text(&e))?;
        let bound = timings.renew_every().max(Duration::from_millis(500));
        config
            .connect_timeout(timings.renew_every().max(Duration::from_secs(1)))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(2))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(2)
            .tcp_user_timeout(bound)
            .application_name("orchestrator-leader");
        let mut client = config.connect(NoTls).map_err(|e| format!("{shown}: {}", error_text(&e)))?;
        let timeout_ms = timings.renew_every().as_millis().max(100);
        client
            .batch_execute(&format!(
                "SET statement_timeout = {timeout_ms}; SET lock_timeout = {timeout_ms}; \
                 SET idle_in_transaction_session_timeout = {}",
                bound.as_millis()
            ))
            .map_err(|e| format!("{shown}: {}", error_text(&e)))?;
        Ok(Self { client, holder: holder.to_owned(), address: address.to_owned(), timings, shown })
    }

    /// The timings.
    pub fn timings(&self) -> LeaseTimings {
        self.timings
    }

    /// Takes the lease if it is free or expired (by the database's clock).
    ///
    /// # Errors
    ///
    /// The database failed.
    pub fn try_acquire(&mut self) -> Result<Election, String> {
        let started = Instant::now();
        let lease_ms = i64::try_from(self.timings.lease.as_millis()).unwrap_or(i64::MAX) as f64;
        let mut tx = self.client.transaction().map_err(|e| error_text(&e))?;
        // FOR UPDATE waits for commits in flight (they hold FOR KEY SHARE):
        // no commit of the old epoch can land after the takeover.
        let row = tx
            .query_opt("SELECT epoch, expires_at < now() FROM leader_lease FOR UPDATE", &[])
            .map_err(|e| error_text(&e))?;
        let epoch = match row {
            None => {
                let inserted = tx
                    .execute(
                        "INSERT INTO leader_lease (id, holder, address, epoch, expires_at)
                         VALUES (TRUE, $1, $2, 1, now() + $3 * interval '1 millisecond')
                         ON CONFLICT (id) DO NOTHING",
                        &[&self.holder, &self.address, &lease_ms],
                    )
                    .map_err(|e| error_text(&e))?;
                (inserted == 1).then_some(1)
            }
            Some(r) if r.get::<_, bool>(1) => {
                let epoch = r.get::<_, i64>(0) + 1;
                tx.execute(
                    "UPDATE leader_lease SET holder = $1, address = $2, epoch = $3,
                         expires_at = now() + $4 * interval '1 millisecond'",
                    &[&self.holder, &self.address, &epoch, &lease_ms],
                )
                .map_err(|e| error_text(&e))?;
                Some(epoch)
            }
            Some(_) => None,
        };
        match epoch {
            Some(epoch) => {
                tx.commit().map_err(|e| error_text(&e))?;
                Ok(Election::Won { epoch: epoch as u64, started })
            }
            None => {
                tx.rollback().map_err(|e| error_text(&e))?;
                let holder = self.current()?.unwrap_or(Holder {
                    holder: String::new(),
                    address: String::new(),
                    epoch: 0,
                    expires_in_ms: 0,
                });
                Ok(Election::Lost(holder))
            }
        }
    }

    /// Extends the lease held at `epoch`. `Ok(false)`: it is no longer
    /// ours (another replica took it).
    ///
    /// # Errors
    ///
    /// The database failed or timed out.
    pub fn renew(&mut self, epoch: u64) -> Result<bool, String> {
        let lease_ms = i64::try_from(self.timings.lease.as_millis()).unwrap_or(i64::MAX);
        let n = self
            .client
            .execute(
                "UPDATE leader_lease SET expires_at = now() + $3 * interval '1 millisecond'
                 WHERE holder = $1 AND epoch = $2",
                &[&self.holder, &(i64::try_from(epoch).unwrap_or(i64::MAX)), &(lease_ms as f64)],
            )
            .map_err(|e| error_text(&e))?;
        Ok(n == 1)
    }

    /// Ends the lease held at `epoch` at once (a clean shutdown), so that
    /// another replica need not wait for it to expire.
    ///
    /// # Errors
    ///
    /// The database failed.
    pub fn release(&mut self, epoch: u64) -> Result<(), String> {
        self.client
            .execute(
                "UPDATE leader_lease SET expires_at = now() - interval '1 millisecond' WHERE holder = $1 AND epoch = $2",
                &[&self.holder, &(i64::try_from(epoch).unwrap_or(i64::MAX))],
            )
            .map(|_| ())
            .map_err(|e| error_text(&e))
    }

    /// The lease row, if any.
    ///
    /// # Errors
    ///
    /// The database failed.
    pub fn current(&mut self) -> Result<Option<Holder>, String> {
        let row = self
            .client
            .query_opt(
                "SELECT holder, address, epoch,
                        (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::BIGINT
                 FROM leader_lease",
                &[],
            )
            .map_err(|e| error_text(&e))?;
        Ok(row.map(|r| Holder {
            holder: r.get(0),
            address: r.get(1),
            epoch: r.get::<_, i64>(2) as u64,
            expires_in_ms: r.get(3),
        }))
    }
}

/// The lease kept by a leader: renewed on a thread of its own, watched on
/// another; dropped (or [`stop`](Self::stop)ped) on shutdown.
#[derive(Debug)]
pub struct Keeper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    renewer: Option<std::thread::JoinHandle<Leadership>>,
    epoch: u64,
}

impl Leadership {
    /// Keeps the lease won at `epoch` (the attempt started at `started`):
    /// renews every `lease / 5`; calls `lost` once, with the reason, when
    /// another replica took the lease or when `lease − margin` has passed
    /// since the start of the last successful renewal (the database
    /// unreachable, slow, or this process paused).
    pub fn keep(self, epoch: u64, started: Instant, lost: impl Fn(String) + Send + Sync + 'static) -> Keeper {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let last_ok = Arc::new(Mutex::new(started));
        let lost: Arc<dyn Fn(String) + Send + Sync> = Arc::new(lost);
        let fired = Arc::new(AtomicBool::new(false));
        let fire = {
            let (lost, fired) = (Arc::clone(&lost), Arc::clone(&fired));
            move |why: String| {
                if !fired.swap(true, Ordering::AcqRel) {
                    lost(why);
                }
            }
        };
        let fire = Arc::new(fire);
        let timings = self.timings;
        // The watchdog: the monotonic clock alone decides.
        {
            let (stop, last_ok, fire) = (Arc::clone(&stop), Arc::clone(&last_ok), Arc::clone(&fire));
            std::thread::Builder::new()
                .name("leader-watchdog".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let since = last_ok.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                        if since >= timings.serve_for() {
                            fire(format!(
                                "leadership given up: no successful lease renewal for {since:?} (lease {:?} minus \
                                 margin {:?}); another replica may take over",
                                timings.lease, timings.margin
                            ));
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
                .expect("spawn the leader watchdog");
        }
        let renewer = {
            let stop = Arc::clone(&stop);
            let fired = Arc::clone(&fired);
            let mut me = self;
            std::thread::Builder::new()
                .name("leader-renewer".into())
                .spawn(move || {
                    // Once leadership is given up it is not renewed again.
                    while !stop.load(Ordering::Acquire) && !fired.load(Ordering::Acquire) {
                        let next = Instant::now() + timings.renew_every();
                        while Instant::now() < next && !stop.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let attempt = Instant::now();
                        match me.renew(epoch) {
                            Ok(true) => *last_ok.lock().unwrap_or_else(|p| p.into_inner()) = attempt,
                            Ok(false) => {
                                let holder = me.current().ok().flatten();
                                fire(format!(
                                    "leadership lost: the lease at epoch {epoch} was taken over{}",
                                    holder
                                        .map(|h| format!(" by {} at {} (epoch {})", h.holder, h.address, h.epoch))
                                        .unwrap_or_default()
                                ));
                                break;
                            }
                            Err(e) => tracing::warn!("renewing the leader lease failed: {e}"),
                        }
                    }
                    me
                })
                .expect("spawn the leader renewer")
        };
        Keeper { stop, renewer: Some(renewer), epoch }
    }
}

impl Keeper {
    /// Stops renewing and, if `release`, ends the lease at once so that a
    /// standby need not wait for it to expire.
    pub fn stop(mut self, release: bool) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(renewer) = self.renewer.take()
            && let Ok(mut leadership) = renewer.join()
            && release
        {
            match leadership.release(self.epoch) {
                Ok(()) => tracing::info!(epoch = self.epoch, "leader lease released"),
                Err(e) => tracing::warn!("releasing the leader lease failed ({e}); it expires by itself"),
            }
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}
