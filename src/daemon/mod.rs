//! `portcullis run`: the long-running daemon.
//!
//! Threads: the engine (owns all state, see [`engine`]), a small tokio runtime
//! for the control socket and signals, notify's inotify thread, and one
//! short-lived thread per action batch.

mod actions;
mod engine;
pub mod logging;
pub mod metrics;
pub mod notify;

use crate::config::Config;
use crate::control::server::{self, Access};
use engine::{Engine, Msg};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Starts everything and blocks until SIGTERM/SIGINT.
/// Runs the daemon until SIGTERM. With `recover`, an unreadable state store
/// is moved aside and the ledger is rebuilt from the kernel's sets.
pub fn run(config_dir: Option<PathBuf>, config: Config, recover: bool) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let socket = config.control_socket();
    let group = config
        .main
        .control_group
        .as_deref()
        .map(server::group_id)
        .transpose()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let listener = rt.block_on(async { server::bind(&socket, group) })?;
    let metrics_listener = match &config.main.metrics {
        Some(m) => Some(
            rt.block_on(tokio::net::TcpListener::bind(m.listen))
                .map_err(|e| format!("metrics: cannot listen on {}: {e}", m.listen))?,
        ),
        None => None,
    };

    // The bouncer API's port and TLS are fixed at start, like the metrics
    // endpoint's; its keys and decisions follow reloads.
    let bouncer = match &config.main.bouncer_api {
        Some(b) => {
            let tls = crate::act::bouncer::tls_config(b)?;
            let listener = std::net::TcpListener::bind(b.listen)
                .map_err(|e| format!("bouncer API: cannot listen on {}: {e}", b.listen))?;
            // Ids unique across restarts, exact in a JSON double.
            let id_base = engine::now_secs() * 1_000_000;
            let api = Arc::new(crate::act::bouncer::Api::new(
                b.listen,
                config.bouncer_keys.clone(),
                id_base,
            ));
            Some((api, listener, tls))
        }
        None => None,
    };
    let engine = Engine::start(
        config_dir,
        config,
        tx.clone(),
        recover,
        bouncer.as_ref().map(|b| b.0.clone()),
    )?;
    if let Some((api, listener, tls)) = bouncer {
        tracing::info!(listen = %api.listen, tls = tls.is_some(), "bouncer API serving");
        crate::act::bouncer::spawn(listener, api, tls)?;
    }

    let wake_pending = Arc::new(AtomicBool::new(false));
    let mut watcher = {
        let (tx, pending) = (std::sync::Mutex::new(tx.clone()), wake_pending.clone());
        crate::watch::Watcher::new(move || {
            if !pending.swap(true, Ordering::SeqCst) {
                let _ = tx.lock().map(|t| t.send(Msg::Wake));
            }
        })?
    };
    watcher.watch(&engine.patterns());

    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine.run(rx, wake_pending))
        .map_err(|e| format!("cannot start the engine: {e}"))?;

    // Control requests travel as Msg::Control through a forwarding channel.
    let (ctl_tx, ctl_rx) = std::sync::mpsc::channel::<server::Envelope>();
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("control-forward".into())
            .spawn(move || {
                for env in ctl_rx {
                    if tx.send(Msg::Control(env)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the control thread: {e}"))?;
    }
    tracing::info!(socket = %socket.display(), "portcullis running");
    // Sources are open and the engine answers; active bans are being
    // re-applied on the action workers (`status` shows `restoring` until done).
    notify::notify("READY=1\nSTATUS=running");

    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let access = Access {
            daemon_uid: unsafe { libc::geteuid() },
            group,
        };
        let serving = tokio::spawn(server::serve(listener, access, ctl_tx, socket.clone()));
        if let Some(l) = metrics_listener {
            tokio::spawn(metrics::serve(l, tx.clone()));
        }
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    notify::notify("RELOADING=1");
                    let _ = tx.send(Msg::Reload);
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        notify::notify("STOPPING=1");
        serving.abort();
        let _ = tx.send(Msg::Shutdown);
        let _ = std::fs::remove_file(&socket);
    });
    drop(watcher);
    engine_thread
        .join()
        .map_err(|_| "the engine thread panicked".to_string())?;
    Ok(())
}
