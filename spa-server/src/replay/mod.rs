//! Replay cache: a packet seen once is never accepted again.
//!
//! The decision is an atomic check-and-insert in memory (two copies racing cannot
//! both pass). The embedded store makes it durable behind the grant: one writer
//! thread commits whatever has queued up in one redb transaction (group commit), so
//! a burst costs one fsync, not one per packet. The knock does not wait for that
//! fsync (0.3–3 ms, more than the whole rest of the path): a graceful stop drains
//! the queue, so only a crash within those milliseconds could forget a digest
//! (fwknopd never syncs its cache at all). Entries are pruned once their packet is
//! too old to pass the age check anyway (fwknopd never prunes).

#[cfg(feature = "redis")]
pub mod redis;

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// SHA-256 of the packet as received.
pub type PacketDigest = [u8; 32];

/// The replay digest: SHA-256 of the packet text as the pipeline got it (HTTP
/// form already turned back into base64), like fwknopd's, so its digest.cache
/// imports. The text is one spelling per packet because every other spelling is
/// refused before it could be recorded: the `U2FsdGVkX1` / `hQ` prefix left in,
/// bytes outside base64 (whitespace, newline), and `=` padding or non-zero trailing
/// bits ([`spa_core::b64::decode_canonical`]); an HMAC is over the text anyway.
pub fn packet_digest(wire: &[u8]) -> PacketDigest {
    use sha2::Digest;
    sha2::Sha256::digest(wire).into()
}

#[derive(Debug, thiserror::Error)]
/// Its message starts with [`STORE_ERROR_PREFIX`].
#[error("replay store: {0}")]
pub struct ReplayError(pub String);

/// How a [`ReplayError`] reads: a refusal because the store failed, not a replay.
pub const STORE_ERROR_PREFIX: &str = "replay store:";

fn store_err(e: impl std::fmt::Display) -> ReplayError {
    ReplayError(e.to_string())
}

#[async_trait]
pub trait ReplayStore: Send + Sync {
    /// `true` if the digest was new and is now recorded; `false` for a replay.
    /// `stamp` is the packet's timestamp, used for pruning.
    async fn check_and_insert(&self, digest: PacketDigest, stamp: u64)
        -> Result<bool, ReplayError>;
    /// Forget entries stamped before `cutoff`; returns how many went.
    async fn prune(&self, cutoff: u64) -> Result<usize, ReplayError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A cheap early answer, without recording anything: `true` only if the
    /// digest is certainly recorded. Lets decryption (and GPG's costly one) skip
    /// replays; the decision stays with [`ReplayStore::check_and_insert`].
    fn seen(&self, _digest: &PacketDigest) -> bool {
        false
    }
}

/// Hashes the map's keys: SHA-256 digests, or a native knock's ephemeral key,
/// recorded only once it opened under a registered client's key. No sender
/// can fill one bucket with those, and the seed is random per process, so
/// foldhash's fast hash serves; SipHash's resistance to chosen keys bought
/// nothing here and cost a replay flood about 3 %.
type DigestHasher = foldhash::fast::RandomState;

/// Memory only (ENABLE_DIGEST_PERSISTENCE N).
#[derive(Default)]
pub struct MemoryStore {
    seen: Mutex<HashMap<PacketDigest, u64, DigestHasher>>,
}

impl MemoryStore {
    fn insert(&self, digest: PacketDigest, stamp: u64) -> bool {
        let mut seen = self.seen.lock().expect("replay map poisoned");
        match seen.entry(digest) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(stamp);
                true
            }
        }
    }

    fn prune_before(&self, cutoff: u64) -> usize {
        let mut seen = self.seen.lock().expect("replay map poisoned");
        let before = seen.len();
        seen.retain(|_, stamp| *stamp >= cutoff);
        before - seen.len()
    }
}

#[async_trait]
impl ReplayStore for MemoryStore {
    async fn check_and_insert(
        &self,
        digest: PacketDigest,
        stamp: u64,
    ) -> Result<bool, ReplayError> {
        Ok(self.insert(digest, stamp))
    }
    async fn prune(&self, cutoff: u64) -> Result<usize, ReplayError> {
        Ok(self.prune_before(cutoff))
    }
    fn len(&self) -> usize {
        self.seen.lock().expect("replay map poisoned").len()
    }
    fn seen(&self, digest: &PacketDigest) -> bool {
        self.seen
            .lock()
            .expect("replay map poisoned")
            .contains_key(digest)
    }
}

const TABLE: TableDefinition<&[u8; 32], u64> = TableDefinition::new("seen_packets");

enum WriteOp {
    Insert(PacketDigest, u64),
    Prune(u64, oneshot::Sender<Result<usize, ReplayError>>),
}

/// Memory decision + durable redb file, written by one group-commit thread.
pub struct FileStore {
    memory: Arc<MemoryStore>,
    writer: Option<std_mpsc::Sender<WriteOp>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FileStore {
    /// Close the database before returning, so a new store can open the file at once.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FileStore {
    /// Open (or create) the store and load what a previous run recorded.
    pub fn open(path: &Path) -> Result<Self, ReplayError> {
        Self::open_with(path, &[])
    }

    /// Like [`FileStore::open`], also recording `imported` digests (e.g. fwknopd's cache).
    pub fn open_with(path: &Path, imported: &[(PacketDigest, u64)]) -> Result<Self, ReplayError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ReplayError(format!("{}: {e}", dir.display())))?;
        }
        let db =
            Database::create(path).map_err(|e| ReplayError(format!("{}: {e}", path.display())))?;
        let memory = Arc::new(MemoryStore::default());
        {
            let txn = db.begin_write().map_err(store_err)?;
            {
                let mut table = txn.open_table(TABLE).map_err(store_err)?;
                for (digest, stamp) in imported {
                    table.insert(digest, stamp).map_err(store_err)?;
                }
            }
            txn.commit().map_err(store_err)?;
            let read = db.begin_read().map_err(store_err)?;
            let table = read.open_table(TABLE).map_err(store_err)?;
            let mut seen = memory.seen.lock().expect("fresh");
            for row in table.iter().map_err(store_err)? {
                let (k, v) = row.map_err(store_err)?;
                seen.insert(*k.value(), v.value());
            }
        }
        let (tx, rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("replay-writer".into())
            .spawn(move || write_loop(db, rx))
            .map_err(store_err)?;
        Ok(FileStore {
            memory,
            writer: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, op: WriteOp) -> Result<(), ReplayError> {
        let stopped = || ReplayError("writer thread stopped".into());
        self.writer
            .as_ref()
            .ok_or_else(stopped)?
            .send(op)
            .map_err(|_| stopped())
    }
}

fn write_loop(db: Database, rx: std_mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        // Everything queued behind the first op goes into the same transaction.
        let mut ops = vec![first];
        ops.extend(rx.try_iter());
        let result = (|| -> Result<Vec<usize>, Box<redb::Error>> {
            let txn = db.begin_write().map_err(|e| Box::new(e.into()))?;
            let mut pruned = Vec::new();
            {
                let mut table = txn.open_table(TABLE).map_err(|e| Box::new(e.into()))?;
                for op in &ops {
                    match op {
                        WriteOp::Insert(d, stamp) => {
                            table.insert(d, stamp).map_err(|e| Box::new(e.into()))?;
                        }
                        WriteOp::Prune(cutoff, _) => {
                            let old: Vec<[u8; 32]> = table
                                .iter()
                                .map_err(|e| Box::new(e.into()))?
                                .filter_map(|r| r.ok())
                                .filter(|(_, v)| v.value() < *cutoff)
                                .map(|(k, _)| *k.value())
                                .collect();
                            for k in &old {
                                table.remove(k).map_err(|e| Box::new(e.into()))?;
                            }
                            pruned.push(old.len());
                        }
                    }
                }
            }
            txn.commit().map_err(|e| Box::new(e.into()))?;
            Ok(pruned)
        })();
        if let Err(e) = &result {
            // The in-memory cache still refuses these packets until the next restart.
            tracing::error!("replay store: could not record digests: {e}");
        }
        let mut pruned = result.as_ref().map(|p| p.clone().into_iter()).ok();
        for op in ops {
            match op {
                WriteOp::Insert(..) => {}
                WriteOp::Prune(_, ack) => {
                    let n = pruned.as_mut().and_then(|p| p.next());
                    let _ = ack.send(n.ok_or_else(|| ReplayError("prune failed".into())));
                }
            }
        }
    }
}

/// Read fwknopd's digest cache (`DIGEST_FILE`), so packets fwknopd already
/// accepted stay refused after switching to posternd. Each line is
/// `<digest> <proto> <src ip> <src port> <dst ip> <dst port> <time>`, where the
/// digest is the unpadded base64 SHA-256 of the packet as received, the same hash
/// postern keeps. A missing file is an empty cache; lines that do not parse are skipped.
pub fn read_fwknop_cache(path: &Path) -> Result<Vec<(PacketDigest, u64)>, ReplayError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ReplayError(format!("{}: {e}", path.display()))),
    };
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let digest: PacketDigest = spa_core::b64::decode(fields.next()?)?.try_into().ok()?;
            let stamp = fields.nth(5).and_then(|t| t.parse().ok()).unwrap_or(0);
            Some((digest, stamp))
        })
        .collect())
}

/// `--exit-parse-digest-cache` for fwknopd's digest cache: every line must be
/// `<digest> <proto> <src ip> <src port> <dst ip> <dst port> <time>` as fwknopd
/// writes it. fwknopd only skips a bad line at start; here each is reported as
/// `file:line: why`. Returns the number of valid entries (a missing file has none).
pub fn check_fwknop_cache(path: &Path) -> Result<usize, Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(vec![format!("{}: {e}", path.display())]),
    };
    let mut valid = 0;
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match check_cache_line(line) {
            Ok(()) => valid += 1,
            Err(why) => errors.push(format!("{}:{}: {why}", path.display(), i + 1)),
        }
    }
    if errors.is_empty() {
        Ok(valid)
    } else {
        Err(errors)
    }
}

fn check_cache_line(line: &str) -> Result<(), String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [digest, proto, src, sport, dst, dport, time] = fields[..] else {
        return Err(format!(
            "{} fields, a digest cache line has 7",
            fields.len()
        ));
    };
    let bytes = spa_core::b64::decode(digest).ok_or("the digest is not base64")?;
    if bytes.len() != 32 {
        return Err(format!(
            "the digest is {} bytes, SHA-256 is 32",
            bytes.len()
        ));
    }
    proto
        .parse::<u8>()
        .map_err(|_| format!("protocol `{proto}`"))?;
    for (addr, port) in [(src, sport), (dst, dport)] {
        addr.parse::<std::net::Ipv4Addr>()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        port.parse::<u16>().map_err(|_| format!("port `{port}`"))?;
    }
    time.parse::<i64>().map_err(|_| format!("time `{time}`"))?;
    Ok(())
}

/// `--exit-parse-digest-cache` for posternd's own store: open it read-only and
/// count its digests (a missing store has none).
pub fn check_store(path: &Path) -> Result<usize, ReplayError> {
    if !path.exists() {
        return Ok(0);
    }
    let at = |e: &dyn std::fmt::Display| ReplayError(format!("{}: {e}", path.display()));
    // Database::open locks the file: a store a running posternd holds is an error.
    let db = Database::open(path).map_err(|e| at(&e))?;
    let read = db.begin_read().map_err(|e| at(&e))?;
    match read.open_table(TABLE) {
        Ok(table) => {
            use redb::ReadableTableMetadata;
            Ok(table.len().map_err(|e| at(&e))? as usize)
        }
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(at(&e)),
    }
}

/// `--rotate-digest-cache`: rename `path` to `path-old` (as fwknopd), so the
/// next open starts empty. A missing file is nothing to rotate.
pub fn rotate(path: &Path) -> Result<Option<std::path::PathBuf>, ReplayError> {
    let mut old = path.as_os_str().to_owned();
    old.push("-old");
    let old = std::path::PathBuf::from(old);
    match std::fs::rename(path, &old) {
        Ok(()) => Ok(Some(old)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReplayError(format!(
            "Unable to rename digest file: {} to {}: {e}",
            path.display(),
            old.display()
        ))),
    }
}

#[async_trait]
impl ReplayStore for FileStore {
    async fn check_and_insert(
        &self,
        digest: PacketDigest,
        stamp: u64,
    ) -> Result<bool, ReplayError> {
        if !self.memory.insert(digest, stamp) {
            return Ok(false);
        }
        self.send(WriteOp::Insert(digest, stamp))?;
        Ok(true)
    }

    async fn prune(&self, cutoff: u64) -> Result<usize, ReplayError> {
        self.memory.prune_before(cutoff);
        let (ack, done) = oneshot::channel();
        self.send(WriteOp::Prune(cutoff, ack))?;
        done.await
            .map_err(|_| ReplayError("writer thread stopped".into()))?
    }

    fn len(&self) -> usize {
        self.memory.len()
    }
    fn seen(&self, digest: &PacketDigest) -> bool {
        self.memory.seen(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_copy_is_a_replay_even_when_racing() {
        let store = Arc::new(MemoryStore::default());
        let d = packet_digest(b"packet");
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.check_and_insert(d, 100).await.unwrap() })
            })
            .collect();
        let mut passed = 0;
        for t in tasks {
            passed += usize::from(t.await.unwrap());
        }
        assert_eq!(passed, 1);
    }

    #[tokio::test]
    async fn fwknopd_digests_are_imported() {
        let dir = tempfile::tempdir().unwrap();
        let wire = b"+aG2CKkSBK0iVqigLJrahnYNt5WkLNLbsC9HoR1Asgq";
        let b64 = spa_core::b64::encode_nopad(&packet_digest(wire));
        let cache = dir.path().join("digest.cache");
        std::fs::write(
            &cache,
            format!(
                "# fwknopd cache\n{b64} 17 10.0.0.5 40000 10.0.0.1 62201 1700000000\nnot a line\n"
            ),
        )
        .unwrap();
        let imported = read_fwknop_cache(&cache).unwrap();
        assert_eq!(imported, vec![(packet_digest(wire), 1_700_000_000)]);
        let s = FileStore::open_with(&dir.path().join("replay.redb"), &imported).unwrap();
        assert!(!s.check_and_insert(packet_digest(wire), 1).await.unwrap());
        assert!(read_fwknop_cache(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_store_survives_restart_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.redb");
        {
            let s = Arc::new(FileStore::open(&path).unwrap());
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        s.check_and_insert(packet_digest(b"a"), 100).await.unwrap()
                    })
                })
                .collect();
            let mut passed = 0;
            for r in racers {
                passed += usize::from(r.await.unwrap());
            }
            assert_eq!(passed, 1);
            assert!(s.check_and_insert(packet_digest(b"b"), 300).await.unwrap());
        }
        let s = FileStore::open(&path).unwrap();
        assert_eq!(s.len(), 2);
        assert!(
            !s.check_and_insert(packet_digest(b"a"), 100).await.unwrap(),
            "replay after restart"
        );
        assert_eq!(s.prune(200).await.unwrap(), 1);
        assert_eq!(s.len(), 1);
        drop(s);
        assert_eq!(FileStore::open(&path).unwrap().len(), 1);
    }

    #[test]
    fn fwknop_cache_check_names_bad_lines_and_rotation_renames() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("digest.cache");
        assert_eq!(check_fwknop_cache(&cache), Ok(0));
        let good = "7XgadOyqv0tF5xG8uhg2iIrheeNKglCWKmxQDgYP1dY 17 127.0.0.1 40305 127.0.0.1 62201 1313283481";
        std::fs::write(
            &cache,
            format!("{good}\n# c\n{good} x\nAAAA 17 1.2.3.4 1 1.2.3.4 2 3\n"),
        )
        .unwrap();
        let errors = check_fwknop_cache(&cache).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("digest.cache:3:"), "{errors:?}");
        assert!(
            errors[1].contains("digest.cache:4:") && errors[1].contains("32"),
            "{errors:?}"
        );
        let old = rotate(&cache).unwrap().unwrap();
        assert_eq!(old, dir.path().join("digest.cache-old"));
        assert!(!cache.exists() && old.exists());
        assert_eq!(rotate(&cache).unwrap(), None);
    }
}
