//! State beside the pipeline: bans, read positions and offence counts,
//! persisted in an embedded store.
//!
//! redb (pure Rust, copy-on-write B-trees, each commit atomic and durable): a
//! `kill -9` at any moment leaves the last committed state, and it needs no C
//! toolchain, unlike SQLite. Values are JSON, so a store can be inspected and
//! its records evolve by adding fields.

pub mod incidents;
mod writer;

pub use writer::{Reader, Writer};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;

const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("bans");
const POSITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("positions");
const OFFENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("offences");
const INCIDENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("incidents");
const WEBHOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhook_queue");
/// What CrowdSec bouncers may hold (see `act::bouncer`): value → until.
const BOUNCER: TableDefinition<&str, &[u8]> = TableDefinition::new("bouncer_values");

/// Which table a write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Bans,
    Positions,
    Offences,
    Incidents,
    Webhooks,
    Bouncer,
}

impl Table {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Bans => BANS,
            Table::Positions => POSITIONS,
            Table::Offences => OFFENCES,
            Table::Incidents => INCIDENTS,
            Table::Webhooks => WEBHOOKS,
            Table::Bouncer => BOUNCER,
        }
    }
}

/// Collapses writes to the last one per (table, key), in their order: what
/// a long outage of the store keeps in memory (positions are rewritten every
/// second, so most writes supersede earlier ones).
pub fn latest_only(writes: Vec<Write>) -> Vec<Write> {
    let key = |w: &Write| match w {
        Write::Put(t, k, _) | Write::Delete(t, k) => (format!("{t:?}"), k.clone()),
    };
    let mut last: std::collections::HashMap<(String, String), usize> = Default::default();
    for (i, w) in writes.iter().enumerate() {
        last.insert(key(w), i);
    }
    writes
        .into_iter()
        .enumerate()
        .filter(|(i, w)| last[&key(w)] == *i)
        .map(|(_, w)| w)
        .collect()
}

/// One pending write.
#[derive(Debug, Clone)]
pub enum Write {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

impl Write {
    pub fn put<T: Serialize>(table: Table, key: String, value: &T) -> Write {
        Write::Put(
            table,
            key,
            serde_json::to_vec(value).expect("state records serialise"),
        )
    }
}

/// The embedded store. After a write fails (a full disk), redb refuses every
/// later write ("Previous I/O error occurred"), so the next write first
/// reopens the file (at most once a second), which recovers the last
/// committed state; errors are counted for `status` and the metrics.
pub struct Store {
    path: std::path::PathBuf,
    db: std::sync::RwLock<Option<Database>>,
    health: std::sync::Mutex<StoreHealth>,
}

/// What `status` shows of the store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreHealth {
    /// Failed writes since start.
    pub errors: u64,
    pub last_error: Option<String>,
    /// Since when (unix seconds) writes have been failing; `None` when fine.
    pub failing_since: Option<i64>,
    #[serde(skip)]
    broken: bool,
    #[serde(skip)]
    last_reopen: Option<std::time::Instant>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs a store operation so that a panic inside redb (it has `unreachable!`s
/// for some corruptions) becomes an error naming the problem, never a crash.
fn guard<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    quiet_panics_in_guard();
    GUARDED.with(|g| g.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(false));
    match r {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(format!("the store is corrupted ({what})"))
        }
    }
}

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic caught by [`guard`] becomes an error with its own message, so the
/// default hook's "panicked at" and backtrace are not printed for it; every
/// other panic is reported as before.
fn quiet_panics_in_guard() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
}

/// How the daemon's store was opened.
pub struct Opened {
    pub store: Store,
    /// The store holds no history (a first start, a lost or moved-aside
    /// file): the kernel's sets are then the only record of active bans.
    pub fresh: bool,
    /// The ban records, read by the check (not decoded yet: see
    /// [`Store::decode`]), so a million bans are walked once at start.
    pub bans: Vec<(String, Vec<u8>)>,
}

impl Store {
    /// Opens (or creates) `DIR/state.redb`.
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create state dir {}: {e}", dir.display()))?;
        let path = dir.join("state.redb");
        let store = guard(|| {
            let db = Database::create(&path).map_err(err)?;
            Ok(Store {
                path: path.clone(),
                db: std::sync::RwLock::new(Some(db)),
                health: std::sync::Mutex::new(StoreHealth::default()),
            })
        })
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // Create the tables so reads never meet a missing one.
        store
            .with_db(|db| Store::apply_inner(db, &[]))
            .map_err(|e| format!("cannot initialise {}: {e}", path.display()))?;
        Ok(store)
    }

    /// Opens the daemon's store and reads every table once, so corruption is
    /// found now, with advice, rather than as a crash later. With `recover`,
    /// an unreadable file is moved aside (`state.redb.corrupt-UNIXTIME`) and
    /// a fresh store is started.
    pub fn open_checked(dir: &Path, recover: bool) -> Result<Opened, String> {
        let path = dir.join("state.redb");
        let fresh = !path.exists();
        let attempt = Store::open(dir).and_then(|s| {
            let bans = s.check()?;
            Ok((s, bans))
        });
        match attempt {
            Ok((store, bans)) => Ok(Opened { store, fresh, bans }),
            Err(e) if recover => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = dir.join(format!("state.redb.corrupt-{now}"));
                std::fs::rename(&path, &aside).map_err(|e2| {
                    format!("{e}; and cannot move it aside to {}: {e2}", aside.display())
                })?;
                tracing::error!(
                    store = %path.display(),
                    moved_to = %aside.display(),
                    "state store unreadable ({e}); moved aside, starting a fresh one and adopting the kernel's bans"
                );
                Ok(Opened {
                    store: Store::open(dir)?,
                    fresh: true,
                    bans: Vec::new(),
                })
            }
            Err(e) => Err(format!(
                "the state store {} cannot be read: {e}. Bans already in the kernel stay \
                 enforced. Start with `portcullis run --recover` to move the file aside and \
                 rebuild the ledger from the kernel's sets (read positions and incident history \
                 are lost; logs are then read from their end)",
                path.display()
            )),
        }
    }

    /// Reads every record of every table (and decodes nothing): finds a
    /// corrupted file. Returns the ban records, which the start needs next.
    fn check(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            let bans = Store::rows(&tx.open_table(BANS).map_err(err)?)?;
            for t in [POSITIONS, OFFENCES, INCIDENTS, WEBHOOKS, BOUNCER] {
                let t = tx.open_table(t).map_err(err)?;
                for row in t.iter().map_err(err)? {
                    row.map_err(err)?;
                }
            }
            Ok(bans)
        })
    }

    fn rows(
        t: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut rows = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            rows.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(rows)
    }

    /// The store's health, for `status` and metrics.
    pub fn health(&self) -> StoreHealth {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Reopens the file after a failed write (at most once a second).
    fn reopen_if_broken(&self) {
        let due = self.health.lock().is_ok_and(|mut h| {
            let due = h.broken
                && h.last_reopen
                    .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
            if due {
                h.last_reopen = Some(std::time::Instant::now());
            }
            due
        });
        if !due {
            return;
        }
        let Ok(mut db) = self.db.write() else { return };
        // The old handle must be closed before the file can be opened again.
        drop(db.take());
        let path = self.path.clone();
        match guard(|| Database::create(&path).map_err(err)) {
            Ok(d) => {
                *db = Some(d);
                if let Ok(mut h) = self.health.lock() {
                    h.broken = false;
                }
            }
            Err(e) => tracing::debug!("reopening {}: {e}", self.path.display()),
        }
    }

    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, String>) -> Result<T, String> {
        let db = self
            .db
            .read()
            .map_err(|_| "store lock poisoned".to_string())?;
        let db = db
            .as_ref()
            .ok_or("the store is closed after an I/O error; reopening")?;
        guard(|| f(db))
    }

    /// Applies writes in one atomic, durable transaction.
    pub fn apply(&self, writes: &[Write]) -> Result<(), String> {
        if writes.is_empty() && !self.db.read().is_ok_and(|d| d.is_none()) {
            return Ok(());
        }
        self.reopen_if_broken();
        let r = self.with_db(|db| Store::apply_inner(db, writes));
        if let Ok(mut h) = self.health.lock() {
            match &r {
                Ok(()) => {
                    if let Some(since) = h.failing_since.take() {
                        tracing::warn!(
                            store = %self.path.display(),
                            failing_for_secs = unix_now() - since,
                            "state store writes work again"
                        );
                    }
                }
                Err(e) => {
                    h.errors += 1;
                    h.broken = true;
                    if h.failing_since.is_none() {
                        h.failing_since = Some(unix_now());
                        tracing::error!(
                            store = %self.path.display(),
                            "cannot write the state store ({e}); bans stay enforced and are \
                             kept in memory, and writing is retried every second"
                        );
                    }
                    h.last_error = Some(e.clone());
                }
            }
        }
        r
    }

    fn apply_inner(db: &Database, writes: &[Write]) -> Result<(), String> {
        let tx = db.begin_write().map_err(err)?;
        {
            let mut bans = tx.open_table(BANS).map_err(err)?;
            let mut positions = tx.open_table(POSITIONS).map_err(err)?;
            let mut offences = tx.open_table(OFFENCES).map_err(err)?;
            let mut incidents = tx.open_table(INCIDENTS).map_err(err)?;
            let mut webhooks = tx.open_table(WEBHOOKS).map_err(err)?;
            let mut bouncer = tx.open_table(BOUNCER).map_err(err)?;
            for w in writes {
                let (table, key) = match w {
                    Write::Put(t, k, _) | Write::Delete(t, k) => (t, k.as_str()),
                };
                let t = match table {
                    Table::Bans => &mut bans,
                    Table::Positions => &mut positions,
                    Table::Offences => &mut offences,
                    Table::Incidents => &mut incidents,
                    Table::Webhooks => &mut webhooks,
                    Table::Bouncer => &mut bouncer,
                };
                match w {
                    Write::Put(_, _, v) => {
                        t.insert(key, v.as_slice()).map_err(err)?;
                    }
                    Write::Delete(..) => {
                        t.remove(key).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }

    /// One record.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, String> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            let t = tx.open_table(table.def()).map_err(err)?;
            match t.get(key).map_err(err)? {
                Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(err),
                None => Ok(None),
            }
        })
    }

    /// Deletes the oldest records (by key order) beyond `keep`.
    pub fn prune(&self, table: Table, keep: usize) -> Result<usize, String> {
        self.with_db(|db| Store::prune_inner(db, table, keep))
    }

    fn prune_inner(db: &Database, table: Table, keep: usize) -> Result<usize, String> {
        let tx = db.begin_write().map_err(err)?;
        let removed;
        {
            let mut t = tx.open_table(table.def()).map_err(err)?;
            let len = t.len().map_err(err)? as usize;
            let excess = len.saturating_sub(keep);
            let keys: Vec<String> = t
                .iter()
                .map_err(err)?
                .take(excess)
                .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
                .collect();
            for k in &keys {
                t.remove(k.as_str()).map_err(err)?;
            }
            removed = keys.len();
        }
        tx.commit().map_err(err)?;
        Ok(removed)
    }

    /// Every record of a table. Records that no longer decode are skipped
    /// with a warning rather than stopping the daemon.
    pub fn load<T: DeserializeOwned + Send>(
        &self,
        table: Table,
    ) -> Result<Vec<(String, T)>, String> {
        self.with_db(|db| Store::load_inner(db, table))
    }

    /// The records of `table` whose key `keep` accepts (the positions table
    /// also holds cursors of other shapes, under keys starting with NUL).
    pub fn load_where<T: DeserializeOwned + Send>(
        &self,
        table: Table,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, T)>, String> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(err)?;
            let mut rows = Store::rows(&tx.open_table(table.def()).map_err(err)?)?;
            rows.retain(|(k, _)| keep(k));
            Ok(Store::decode(rows))
        })
    }

    /// Every record of `table`. The rows are read in one pass and decoded on
    /// every core when there are many (a million bans at start).
    fn load_inner<T: DeserializeOwned + Send>(
        db: &Database,
        table: Table,
    ) -> Result<Vec<(String, T)>, String> {
        let tx = db.begin_read().map_err(err)?;
        let rows = Store::rows(&tx.open_table(table.def()).map_err(err)?)?;
        Ok(Store::decode(rows))
    }

    /// Decodes records read raw (on every core when there are many);
    /// records that no longer decode are skipped with a warning.
    pub fn decode<T: DeserializeOwned + Send>(
        mut rows: Vec<(String, Vec<u8>)>,
    ) -> Vec<(String, T)> {
        let decode = |rows: Vec<(String, Vec<u8>)>| -> Vec<(String, T)> {
            rows.into_iter()
                .filter_map(|(k, v)| match serde_json::from_slice(&v) {
                    Ok(rec) => Some((k, rec)),
                    Err(e) => {
                        tracing::warn!(key = k, "skipping unreadable state record: {e}");
                        None
                    }
                })
                .collect()
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        if cores < 2 || rows.len() < 20_000 {
            return decode(rows);
        }
        let per = rows.len().div_ceil(cores);
        let mut parts = Vec::new();
        while rows.len() > per {
            parts.push(rows.split_off(rows.len() - per));
        }
        parts.push(rows);
        parts.reverse();
        std::thread::scope(|scope| {
            let running: Vec<_> = parts
                .into_iter()
                .map(|part| scope.spawn(move || decode(part)))
                .collect();
            running
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("portcullis-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&dir).unwrap();
            s.apply(&[
                Write::put(Table::Bans, "a".into(), &1u32),
                Write::put(Table::Bans, "b".into(), &2u32),
                Write::Delete(Table::Bans, "a".into()),
                Write::put(Table::Positions, "p".into(), &"x"),
            ])
            .unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let bans: Vec<(String, u32)> = s.load(Table::Bans).unwrap();
        assert_eq!(bans, vec![("b".to_string(), 2)]);
        assert_eq!(s.load::<String>(Table::Positions).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
