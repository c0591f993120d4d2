//! Write-behind for the state store.
//!
//! A durable commit costs an fsync, one to several milliseconds here and far
//! more on a busy disk; made on the engine thread, it delayed every line that
//! arrived meanwhile (append->element-in-set p99 12 ms with the store on
//! disk, 2.2 ms on tmpfs). So the engine hands its writes to a [`Writer`] and
//! goes on. One thread commits them in submission order, whatever queued
//! meanwhile in the same transaction (one fsync for a burst), and keeps
//! writes that failed (a full disk) to retry every second, compacted to the
//! last value per key.
//!
//! Nothing a crash can lose matters: read positions are written in the same
//! order as the bans decided before them, so a position is never durable
//! ahead of the bans its lines caused, and lines after the last durable
//! position are read again, and decide again, at the next start.
//!
//! Reads through [`Writer::get`] see queued values first, so the engine's
//! read-modify-write of incidents is unchanged; [`Writer::flush`] waits until
//! everything submitted so far is committed (the `ban` verb, shutdown).

use super::{Store, Table, Write, latest_only};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Queued values: (table, key) -> (sequence number, value; `None` = deleted).
type Overlay = HashMap<(Table, String), (u64, Option<Vec<u8>>)>;

#[derive(Default)]
struct Shared {
    queue: Vec<Write>,
    overlay: Overlay,
    /// Sequence number of the last write submitted.
    submitted: u64,
    /// Every write up to this number is committed.
    committed: u64,
    /// Every write up to this number was in a commit attempt that finished.
    attempted: u64,
    failing_since: Option<i64>,
    stop: bool,
}

pub struct Writer {
    store: Arc<Store>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Writer {
    pub fn new(store: Arc<Store>) -> Writer {
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let thread = {
            let (store, shared) = (store.clone(), shared.clone());
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || commit_loop(&store, &shared))
                .ok()
        };
        if thread.is_none() {
            tracing::error!("cannot start the store writer thread; writes are made inline");
        }
        Writer {
            store,
            shared,
            thread,
        }
    }

    /// Queues writes; they are committed in this order, soon.
    pub fn submit(&self, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        if self.thread.is_none() {
            let _ = self.store.apply(&writes);
            return;
        }
        let (lock, wake) = &*self.shared;
        let Ok(mut s) = lock.lock() else { return };
        for w in writes {
            s.submitted += 1;
            let seq = s.submitted;
            let (key, value) = match &w {
                Write::Put(t, k, v) => ((*t, k.clone()), Some(v.clone())),
                Write::Delete(t, k) => ((*t, k.clone()), None),
            };
            s.overlay.insert(key, (seq, value));
            s.queue.push(w);
        }
        wake.notify_all();
    }

    /// Waits until everything submitted so far was tried (at most 10 s);
    /// true when it is committed.
    pub fn flush(&self) -> bool {
        let (lock, wake) = &*self.shared;
        let Ok(mut s) = lock.lock() else {
            return false;
        };
        let target = s.submitted;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // A commit covering `target` was tried (committed implies attempted).
        while s.attempted < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            s = match wake.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
        s.committed >= target
    }

    /// A record, as the last submitted write left it.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, String> {
        read(&self.store, &self.shared, table, key)
    }

    /// A handle that reads records as [`Writer::get`] does, for other
    /// threads (the mail digests read the incidents the engine submitted,
    /// committed or not yet).
    pub fn reader(&self) -> Reader {
        Reader {
            store: self.store.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Records submitted but not yet committed (distinct keys).
    pub fn unsaved(&self) -> usize {
        self.shared.0.lock().map_or(0, |s| s.overlay.len())
    }

    /// Since when (unix seconds) commits have been failing.
    pub fn failing_since(&self) -> Option<i64> {
        self.shared.0.lock().ok().and_then(|s| s.failing_since)
    }
}

/// Reads records as the last submitted write left them (see [`Writer::reader`]).
#[derive(Clone)]
pub struct Reader {
    store: Arc<Store>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
}

impl Reader {
    /// The store itself (committed records only).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, String> {
        read(&self.store, &self.shared, table, key)
    }
}

/// A record as the last submitted write left it: the queue's version if one
/// is queued, else the store's.
fn read<T: DeserializeOwned>(
    store: &Store,
    shared: &(Mutex<Shared>, Condvar),
    table: Table,
    key: &str,
) -> Result<Option<T>, String> {
    let queued = {
        let (lock, _) = shared;
        let s = lock
            .lock()
            .map_err(|_| "store writer poisoned".to_string())?;
        s.overlay
            .get(&(table, key.to_string()))
            .map(|(_, v)| v.clone())
    };
    match queued {
        Some(Some(bytes)) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| e.to_string()),
        Some(None) => Ok(None),
        None => store.get(table, key),
    }
}

impl Drop for Writer {
    /// Commits what is queued (one last attempt), then stops the thread.
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.0.lock() {
            s.stop = true;
        }
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn commit_loop(store: &Store, shared: &(Mutex<Shared>, Condvar)) {
    let (lock, wake) = shared;
    // Writes of failed attempts, retried first (they precede the queue).
    let mut failed: Vec<Write> = Vec::new();
    loop {
        let (batch, upto, stop) = {
            let Ok(mut s) = lock.lock() else { return };
            while s.queue.is_empty() && !s.stop && failed.is_empty() {
                s = match wake.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            if s.queue.is_empty() && failed.is_empty() {
                return; // stopping, nothing left
            }
            let mut batch = std::mem::take(&mut failed);
            batch.append(&mut s.queue);
            (batch, s.submitted, s.stop)
        };
        let ok = store.apply(&batch).is_ok();
        {
            let Ok(mut s) = lock.lock() else { return };
            s.attempted = upto;
            if ok {
                s.committed = upto;
                s.failing_since = None;
                s.overlay.retain(|_, (seq, _)| *seq > upto);
            } else {
                s.failing_since.get_or_insert_with(unix_now);
                failed = if batch.len() > 10_000 {
                    latest_only(batch)
                } else {
                    batch
                };
            }
            wake.notify_all();
        }
        if !ok {
            if stop {
                return; // one last attempt made; the log is re-read at the next start
            }
            // The store reopens at most once a second; new writes wake us sooner.
            let Ok(s) = lock.lock() else { return };
            let _ = wake.wait_timeout(s, Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_queued_writes_and_flush_commits() {
        let dir = std::env::temp_dir().join(format!("portcullis-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(Store::open(&dir).unwrap());
        let w = Writer::new(store.clone());
        for i in 0..1000u32 {
            w.submit(vec![Write::put(Table::Positions, format!("k{i}"), &i)]);
        }
        w.submit(vec![Write::Delete(Table::Positions, "k7".into())]);
        assert_eq!(w.get::<u32>(Table::Positions, "k999").unwrap(), Some(999));
        assert_eq!(w.get::<u32>(Table::Positions, "k7").unwrap(), None);
        // Another thread's reader sees the same (the mail digests read so).
        let r = w.reader();
        let seen = std::thread::spawn(move || r.get::<u32>(Table::Positions, "k998").unwrap());
        assert_eq!(seen.join().unwrap(), Some(998));
        assert!(w.flush());
        assert_eq!(w.unsaved(), 0);
        assert_eq!(
            store.get::<u32>(Table::Positions, "k500").unwrap(),
            Some(500)
        );
        assert_eq!(store.get::<u32>(Table::Positions, "k7").unwrap(), None);
        w.submit(vec![Write::put(Table::Positions, "last".into(), &1u32)]);
        drop(w);
        assert_eq!(store.get::<u32>(Table::Positions, "last").unwrap(), Some(1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
