//! The watch stage: bytes from log files, cut into lines.
//!
//! [`lines`] cuts a byte stream into lines; [`tail`] follows one path through
//! rotation; [`Watcher`] turns inotify events on the files' directories into
//! wake-ups, with a periodic poll as a safety net so no change is missed for
//! good even if an event is.

pub mod journal;
pub mod lines;
pub mod syslog;
pub mod tail;

use notify::{RecursiveMode, Watcher as _};
use std::path::{Path, PathBuf};

/// The characters that make a `logpath` a glob.
pub const GLOB_CHARS: [char; 3] = ['*', '?', '['];

/// Expands a jail's `logpath` entries (globs allowed) to the paths that exist now,
/// plus the literal paths that do not exist yet (they are waited for).
pub fn expand(patterns: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        let is_glob = p.contains(GLOB_CHARS);
        if !is_glob {
            out.push(PathBuf::from(p));
            continue;
        }
        match glob::glob(p) {
            Ok(paths) => out.extend(paths.flatten().filter(|p| p.is_file())),
            Err(e) => tracing::error!(pattern = p, "invalid glob: {e}"),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Watches directories and calls `wake` on any change in them.
pub struct Watcher {
    inner: notify::RecommendedWatcher,
    dirs: Vec<PathBuf>,
}

impl Watcher {
    pub fn new(wake: impl Fn() + Send + 'static) -> Result<Watcher, String> {
        let inner = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| wake())
            .map_err(|e| format!("cannot start inotify: {e}"))?;
        Ok(Watcher {
            inner,
            dirs: Vec::new(),
        })
    }

    /// Watches the directories of `patterns` (for globs, the part before the
    /// first wildcard). Directories that do not exist are skipped (the
    /// periodic poll still finds files that appear there).
    pub fn watch(&mut self, patterns: &[String]) {
        for p in patterns {
            let head: PathBuf = Path::new(p)
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(GLOB_CHARS))
                .collect();
            let dir = if head.as_os_str() == p.as_str() {
                head.parent().map(Path::to_path_buf)
            } else {
                Some(head)
            };
            let Some(dir) = dir.filter(|d| d.is_dir()) else {
                continue;
            };
            if self.dirs.contains(&dir) {
                continue;
            }
            match self.inner.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.dirs.push(dir),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "cannot watch directory (polling instead): {e}")
                }
            }
        }
    }
}
