//! GPG packets in posternd: decryption off the async pipeline, on a bounded pool.
//!
//! gpgme runs a `gpg` process per operation (tens of milliseconds) and its context
//! is not `Send`. So posternd starts a few dedicated threads that each own their
//! gpgme contexts (one per keyring and gpg program) and take jobs from one bounded
//! queue. A packet whose HMAC verified waits for room in the queue (the
//! pipeline's backpressure); one for a stanza without HMAC is dropped when the
//! queue is full ("overload"). Only packets that passed the cheap checks reach the pool — GPG
//! length, a stanza with GPG whose SOURCE matches the sender, and that stanza's
//! HMAC when it has one — and Rijndael packets never go through it, so a flood
//! of GPG-looking garbage can delay GPG knocks but not Rijndael ones.
//!
//! [`decrypt_for_stanzas`] then applies fwknopd's per-stanza signature policy.
//!
//! # Configuration (access.conf variable / `[[access]]` key)
//!
//! | access.conf | TOML | meaning |
//! | --- | --- | --- |
//! | `GPG_DECRYPT_PW` | `gpg_decrypt_pw` | passphrase of the server's secret key; turns GPG on |
//! | `GPG_ALLOW_NO_PW Y` | `gpg_allow_no_pw` | the secret key has no passphrase; turns GPG on |
//! | `GPG_HOME_DIR` | `gpg_home_dir` | keyring directory (default: the server-wide one, else `$GNUPGHOME` or `~/.gnupg`); must exist |
//! | `GPG_EXE` | `gpg_exe` | gpg program for gpgme |
//! | `GPG_DECRYPT_ID` | `gpg_decrypt_id` | the server key (informational, as in fwknopd) |
//! | `GPG_REQUIRE_SIG` | `gpg_require_sig` | check signatures; the default unless `GPG_DISABLE_SIG Y` |
//! | `GPG_DISABLE_SIG` | `gpg_disable_sig` | do not check signatures (`GPG_REQUIRE_SIG Y` wins) |
//! | `GPG_IGNORE_SIG_VERIFY_ERROR` | `gpg_ignore_sig_verify_error` | accept a signature that does not verify (unknown or untrusted key) if its ID is listed |
//! | `GPG_REMOTE_ID` | `gpg_remote_id` | signer key IDs (8 hex digits as fwknop; 16 also work), comma list |
//! | `GPG_FINGERPRINT_ID` | `gpg_fingerprint_id` | signer fingerprints, comma list |
//!
//! When signatures are checked, at least one of `GPG_REMOTE_ID` / `GPG_FINGERPRINT_ID`
//! is required (fwknopd refuses to start otherwise). Only the first signature counts;
//! it must be good and made by a key of at least marginal validity in the keyring
//! (import the client's key and trust it), and match the lists given. HMAC keys
//! work as for Rijndael, over the `hQ`-prefixed data. Stanzas without
//! `GPG_HOME_DIR` / `GPG_EXE` use the server-wide ones: fwknopd.conf's
//! `GPG_HOME_DIR` / `GPG_EXE`, `[server] gpg_home_dir` / `gpg_exe` in TOML, or
//! posternd's `--gpg-home-dir` / `--gpg-exe` (see `daemon::apply_gpg_defaults`).

use crate::config::AccessStanza;
use spa_core::gpg::{self, check_signatures, Decrypted, GpgError, OpenPgp};
use spa_core::{DecodedMessage, Secret};
use spa_gpg::{GpgOptions, Gpgme};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Default queue length: a second or so of work for the default pool.
pub const DEFAULT_QUEUE: usize = 64;

/// Default number of workers: the CPUs, at most 4 (each decryption is a gpg process).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4)
}

/// Which gpgme context a job needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EngineKey {
    pub home_dir: Option<PathBuf>,
    pub exe: Option<PathBuf>,
}

impl EngineKey {
    pub fn of(stanza: &AccessStanza) -> Self {
        EngineKey {
            home_dir: stanza.gpg_home_dir.clone(),
            exe: stanza.gpg_exe.clone(),
        }
    }
}

struct Job {
    data: Vec<u8>,
    engine: EngineKey,
    passphrase: Option<Secret>,
    reply: oneshot::Sender<Result<Decrypted, GpgError>>,
    /// The job's place in the queue, given back when a worker takes it.
    _place: tokio::sync::OwnedSemaphorePermit,
}

/// Why the pool did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The queue is full: the packet is dropped.
    Busy,
    /// The workers are gone.
    Stopped,
    /// gpg could not decrypt (wrong key, damaged data, …).
    Gpg(String),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Busy => f.write_str("GPG queue full, packet dropped"),
            PoolError::Stopped => f.write_str("GPG workers stopped"),
            PoolError::Gpg(m) => f.write_str(m),
        }
    }
}

/// Counters for logs and benchmarks.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub decrypted: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    /// Jobs waiting in the queue.
    pub queued: AtomicU64,
    /// Workers running gpg right now.
    pub busy: AtomicU64,
}

/// The live worker threads, so shutdown can stop them and wait for gpg runs in
/// progress instead of orphaning them.
#[derive(Debug, Default)]
pub struct Workers {
    live: Mutex<usize>,
    stopped: Condvar,
    stop: AtomicBool,
    /// Wakes idle workers (blocked on the queue, not polling) to see `stop`.
    wake: Mutex<Option<SyncSender<Option<Job>>>>,
}

impl Workers {
    /// Ask the workers to stop (queued jobs are dropped): set the flag, then
    /// wake each idle one with an empty message. A busy one sees the flag
    /// after its job; with the queue full every one is busy.
    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let wake = self.wake.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(wake) = wake {
            let live = *self.live.lock().unwrap_or_else(|p| p.into_inner());
            for _ in 0..live {
                let _ = wake.try_send(None);
            }
        }
    }

    /// [`Self::request_stop`], then wait until every worker has ended; false
    /// on timeout.
    pub fn stop_and_wait(&self, timeout: Duration) -> bool {
        self.request_stop();
        let deadline = Instant::now() + timeout;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        while *live > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            live = self
                .stopped
                .wait_timeout(live, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Counts a worker out when its thread ends, however it ends.
struct Alive(Arc<Workers>);

impl Drop for Alive {
    fn drop(&mut self) {
        let mut live = self.0.live.lock().unwrap_or_else(|p| p.into_inner());
        *live -= 1;
        self.0.stopped.notify_all();
    }
}

/// The worker pool. Threads end when the last handle is dropped.
pub struct GpgPool {
    /// `None` only wakes an idle worker (to see the stop flag).
    tx: SyncSender<Option<Job>>,
    /// One permit per place in the queue (waited for, unlike the channel).
    places: Arc<tokio::sync::Semaphore>,
    workers: usize,
    queue: usize,
    live: Arc<Workers>,
    pub stats: Arc<PoolStats>,
}

impl GpgPool {
    /// Start `workers` threads sharing a queue of `queue` jobs.
    pub fn start(workers: usize, queue: usize) -> std::io::Result<Arc<GpgPool>> {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::sync_channel::<Option<Job>>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(PoolStats::default());
        let live = Arc::new(Workers::default());
        *live.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        for i in 0..workers {
            let rx = rx.clone();
            let stats = stats.clone();
            *live.live.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            let alive = Alive(live.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("gpg-{i}"))
                .spawn(move || {
                    let stop = &alive.0.stop;
                    worker(&rx, &stats, stop);
                    drop(alive);
                });
            spawned?;
        }
        Ok(Arc::new(GpgPool {
            tx,
            places: Arc::new(tokio::sync::Semaphore::new(queue)),
            workers,
            queue,
            live,
            stats,
        }))
    }

    /// The worker threads' liveness, to wait for them at shutdown.
    pub fn live_workers(&self) -> Arc<Workers> {
        self.live.clone()
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Queue `data` for decryption with `engine`'s keyring. With `wait_for_room`
    /// (an authenticated packet) a full queue is waited out; else it is
    /// [`PoolError::Busy`].
    pub async fn decrypt(
        &self,
        data: Vec<u8>,
        engine: EngineKey,
        passphrase: Option<Secret>,
        wait_for_room: bool,
    ) -> Result<Decrypted, PoolError> {
        let place = if wait_for_room {
            self.places.clone().acquire_owned().await.ok()
        } else {
            self.places.clone().try_acquire_owned().ok()
        };
        let Some(place) = place else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::Busy);
        };
        let (reply, result) = oneshot::channel();
        match self.tx.try_send(Some(Job {
            data,
            engine,
            passphrase,
            reply,
            _place: place,
        })) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Busy);
            }
            Err(TrySendError::Disconnected(_)) => return Err(PoolError::Stopped),
        }
        match result.await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(PoolError::Gpg(e.to_string())),
            Err(_) => Err(PoolError::Stopped),
        }
    }
}

fn worker(rx: &Mutex<Receiver<Option<Job>>>, stats: &PoolStats, stop: &AtomicBool) {
    let mut engines: HashMap<EngineKey, Gpgme> = HashMap::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        // Only the waiting worker holds the lock; it is released before the work.
        let job = match rx.lock() {
            // Blocked until there is work or a stop: an idle pool never wakes.
            Ok(guard) => match guard.recv() {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(_) => return,
            },
            Err(_) => return,
        };
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        let Job {
            data,
            engine,
            passphrase,
            reply,
            _place,
        } = job;
        // Taken off the queue: its place is free again.
        drop(_place);
        let job = TakenJob {
            data,
            engine,
            passphrase,
            reply,
        };
        if job.reply.is_closed() || stop.load(Ordering::SeqCst) {
            continue;
        }
        stats.busy.fetch_add(1, Ordering::Relaxed);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(&mut engines, &job)));
        stats.busy.fetch_sub(1, Ordering::Relaxed);
        let result = match outcome {
            Ok(r) => r,
            Err(_) => {
                // A context that panicked is not trusted again.
                engines.remove(&job.engine);
                Err(GpgError::engine("GPG worker panicked"))
            }
        };
        let counter = if result.is_ok() {
            &stats.decrypted
        } else {
            &stats.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let _ = job.reply.send(result);
    }
}

/// The last handle gone: the workers stop (they wait on the queue, which a
/// clone kept for waking them holds open).
impl Drop for GpgPool {
    fn drop(&mut self) {
        self.live.request_stop();
    }
}

/// A job a worker took off the queue.
struct TakenJob {
    data: Vec<u8>,
    engine: EngineKey,
    passphrase: Option<Secret>,
    reply: oneshot::Sender<Result<Decrypted, GpgError>>,
}

fn run_job(engines: &mut HashMap<EngineKey, Gpgme>, job: &TakenJob) -> Result<Decrypted, GpgError> {
    if !engines.contains_key(&job.engine) {
        let opts = GpgOptions {
            home_dir: job.engine.home_dir.clone(),
            exe: job.engine.exe.clone(),
            ..Default::default()
        };
        engines.insert(job.engine.clone(), Gpgme::new(&opts)?);
    }
    let engine = engines.get_mut(&job.engine).expect("just inserted");
    engine.set_passphrase(job.passphrase.clone());
    let result = engine.decrypt_and_verify(&job.data);
    engine.set_passphrase(None);
    result
}

/// A GPG packet accepted by one stanza.
#[derive(Debug)]
pub struct Accepted {
    pub stanza: usize,
    pub decoded: DecodedMessage,
    /// Fingerprint of the accepted signer (None when the stanza does not check signatures).
    pub signer: Option<String>,
}

/// Why no stanza accepted a GPG packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The pool had no room: dropped unread.
    Busy,
    /// Decryption, decoding or the signature policy said no (last reason).
    Denied(String),
}

/// Decrypt `wire`'s GPG data for each candidate stanza (index, length of the part
/// before the HMAC), in order, and return the first stanza whose signature policy
/// accepts it. A keyring and passphrase already tried are not asked again.
/// `authenticated`: a stanza's HMAC verified, so the pool's room is waited for.
pub async fn decrypt_for_stanzas(
    pool: &GpgPool,
    stanzas: &[AccessStanza],
    candidates: &[(usize, usize)],
    wire: &str,
    authenticated: bool,
) -> Result<Accepted, Rejected> {
    type Attempt = (usize, EngineKey, Option<Secret>, Result<Decrypted, String>);
    let mut tried: Vec<Attempt> = Vec::new();
    let mut last = String::from("no GPG stanza");
    for &(index, body_len) in candidates {
        let stanza = &stanzas[index];
        let engine = EngineKey::of(stanza);
        let pass = stanza.gpg_decrypt_pw.clone();
        let earlier = tried
            .iter()
            .position(|(len, e, p, _)| *len == body_len && *e == engine && *p == pass);
        let pos = match earlier {
            Some(pos) => pos,
            None => {
                let result = match gpg::openpgp_data(&wire[..body_len]) {
                    Ok(data) => match pool
                        .decrypt(data, engine.clone(), pass.clone(), authenticated)
                        .await
                    {
                        Ok(d) => Ok(d),
                        Err(PoolError::Busy) => return Err(Rejected::Busy),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                };
                tried.push((body_len, engine, pass, result));
                tried.len() - 1
            }
        };
        let decrypted = match &tried[pos].3 {
            Ok(d) => d,
            Err(e) => {
                last = format!("{}: {e}", stanza.describe());
                continue;
            }
        };
        let decoded = match gpg::decode_decrypted(&decrypted.plaintext) {
            Ok(d) => d,
            Err(e) => {
                last = format!("{}: {e}", stanza.describe());
                continue;
            }
        };
        match check_signatures(&stanza.gpg_signature_policy(), &decrypted.signatures) {
            Ok(sig) => {
                return Ok(Accepted {
                    stanza: index,
                    decoded,
                    signer: sig.map(|s| s.fingerprint.clone()),
                });
            }
            Err(denial) => last = format!("{}: {denial}", stanza.describe()),
        }
    }
    Err(Rejected::Denied(last))
}
