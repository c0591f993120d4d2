//! The `portcullis` command.

use clap::{Parser, Subcommand};
use portcullis::config::{Config, ConfigError, ConfigFiles, embedded};
use portcullis::control::{Request, cli as render, client};
use portcullis::detect::Target;
use portcullis::parse::wrap::Wrap;
use portcullis::replay::Selection;
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_CONFIG_DIR: &str = "/etc/portcullis";

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Log-tailing incident detection and auto-ban for API ingress hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Config directory (portcullis.toml, jails.d/, filters.d/). Default:
    /// /etc/portcullis if it exists, else the built-in defaults.
    #[arg(long, short = 'c', value_name = "DIR")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SocketArg {
    #[command(flatten)]
    config: ConfigArg,
    /// Control socket. Default: the config's `control_socket`.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the daemon's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr, or the journal under systemd).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// If the state store cannot be read, move it aside and rebuild the
        /// ledger from the bans the kernel still enforces.
        #[arg(long)]
        recover: bool,
    },
    /// Show every jail (sources, lines, matches, tracked keys, bans, last decision), or one.
    Status {
        jail: Option<String>,
        #[command(flatten)]
        sock: SocketArg,
    },
    /// List active bans and revocations.
    Bans {
        #[arg(long, short = 'j', value_name = "NAME")]
        jail: Option<String>,
        #[command(flatten)]
        sock: SocketArg,
    },
    /// Remove bans of an address, a CIDR (every ban inside it), or `key:ID`.
    Unban {
        #[arg(required_unless_present = "all")]
        target: Option<String>,
        #[arg(long, short = 'j', value_name = "NAME")]
        jail: Option<String>,
        /// Every ban (of `--jail`, or of all jails).
        #[arg(long, conflicts_with = "target")]
        all: bool,
        #[command(flatten)]
        sock: SocketArg,
    },
    /// Ban by hand: an address, a CIDR, or `key:ID`.
    Ban {
        target: String,
        #[arg(long, short = 'j', value_name = "NAME")]
        jail: String,
        /// How long, e.g. `1h`; default: the jail's bantime.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        #[command(flatten)]
        sock: SocketArg,
    },
    /// Re-read the config; an invalid one is refused and the running one kept.
    Reload {
        #[command(flatten)]
        sock: SocketArg,
    },
    /// Incident records, newest first; `incidents show ID` for one, complete.
    Incidents {
        #[command(subcommand)]
        show: Option<IncidentCmd>,
        /// Only those detected within this long, e.g. `24h`.
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        #[command(flatten)]
        sock: SocketArg,
    },
    /// Write the man page and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
    /// Delete the kernel rules and sets `[firewall]` made, bans included
    /// (for the package's removal script, once the daemon has stopped).
    #[command(hide = true)]
    FirewallRemove {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove every ban.
    Flush {
        /// Confirm.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        sock: SocketArg,
    },
    /// Validate the config; print every error with file, line and column,
    /// then warnings (ignored files, missing log directories, ...).
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Print `{"ok", "errors", "warnings", ...}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the jails over log files (or `-` for stdin) and print what would be done.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this jail (repeatable); names a disabled jail to try it.
        #[arg(long, short = 'j', value_name = "NAME")]
        jail: Vec<String>,
        /// Read the files with this format instead of each jail's own.
        #[arg(long, value_name = "NAME")]
        format: Option<String>,
        /// Wrapping of the lines: none, cri, docker (container runtimes),
        /// syslog (raw syslog messages), journal (`journalctl -o json`).
        #[arg(long, value_parser = parse_wrap)]
        wrap: Option<Wrap>,
        /// JSON lines: one per decision, then a summary.
        #[arg(long)]
        json: bool,
        /// Threads to use (default: every core): one feeds the jails in log
        /// order, the others read and parse (a regular file in byte ranges,
        /// each thread its own). The output does not depend on it.
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Log files; `-` reads stdin.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum IncidentCmd {
    /// One incident: evidence, actions and their outcome, resolution.
    Show {
        id: String,
        #[command(flatten)]
        sock: SocketArg,
    },
}

fn parse_wrap(s: &str) -> Result<Wrap, String> {
    match s {
        "none" => Ok(Wrap::None),
        "cri" => Ok(Wrap::Cri),
        "docker" => Ok(Wrap::Docker),
        "syslog" => Ok(Wrap::Syslog),
        "journal" => Ok(Wrap::Journal),
        _ => Err("use none, cri, docker, syslog or journal".into()),
    }
}

/// The directory looked at when `--config` is not given. The environment
/// variable exists for packaging tests and unusual layouts.
fn default_config_dir() -> PathBuf {
    std::env::var_os("PORTCULLIS_CONFIG_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR), PathBuf::from)
}

/// The config directory in use, or `None` for the built-in config.
fn config_dir(arg: &ConfigArg) -> Option<PathBuf> {
    let default_dir = default_config_dir();
    match &arg.config {
        Some(dir) => Some(dir.clone()),
        None if default_dir.join("portcullis.toml").exists() => Some(default_dir),
        None => None,
    }
}

fn load_config(arg: &ConfigArg) -> Result<Config, Vec<ConfigError>> {
    Config::load(&config_files(arg)?)
}

fn config_files(arg: &ConfigArg) -> Result<ConfigFiles, Vec<ConfigError>> {
    let default_dir = default_config_dir();
    Ok(match config_dir(arg) {
        Some(dir) => ConfigFiles::read_dir(&dir).map_err(|e| vec![e])?,
        None => {
            eprintln!(
                "portcullis: no {}/portcullis.toml; using the built-in default config",
                default_dir.display()
            );
            embedded::files()
        }
    })
}

/// `portcullis check`: every error (parse, cross-reference, and what would
/// stop `run`), then warnings; exit 1 on any error.
fn check(arg: &ConfigArg, json: bool) -> ExitCode {
    let report = portcullis::config::report::Report::of(config_files(arg));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).unwrap_or_default()
        );
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        match report.summary() {
            Some(line) => println!("{line}"),
            None => print_errors(&report.errors),
        }
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_errors(errors: &[ConfigError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!(
        "{} error{} in the config",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}

/// Sends a request and prints the answer; non-zero exit on any failure.
fn socket_path(sock: &SocketArg) -> PathBuf {
    sock.socket
        .clone()
        .unwrap_or_else(|| client::socket_from_config(config_dir(&sock.config).as_deref()))
}

fn ctl(sock: &SocketArg, req: Request, show: impl Fn(&serde_json::Value) -> String) -> ExitCode {
    let socket = socket_path(sock);
    match client::call(&socket, &req) {
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::from(e.exit_code())
        }
        Ok(resp) if !resp.ok => {
            if sock.json {
                println!("{}", serde_json::to_string(&resp).unwrap_or_default());
            }
            let error = resp.error.unwrap_or_default();
            eprintln!("portcullis: {error}");
            // The daemon refuses a peer by its credentials before reading.
            if error.starts_with("permission denied") {
                ExitCode::from(4)
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(resp) => {
            if sock.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&resp.data).unwrap_or_default()
                );
            } else {
                println!("{}", show(&resp.data));
            }
            ExitCode::SUCCESS
        }
    }
}

/// After an unban: a network ban that still covers the address keeps it
/// blocked, which the operator would not guess.
fn warn_still_covered(sock: &SocketArg, net: ipnet::IpNet) {
    let Ok(resp) = client::call(&socket_path(sock), &Request::Bans { jail: None }) else {
        return;
    };
    for b in resp.data.as_array().into_iter().flatten() {
        let Some(Ok(Target::Address(other))) = b["target"]["value"].as_str().map(Target::parse)
        else {
            continue;
        };
        if other != net && other.contains(&net) {
            let jail = b["jail"].as_str().unwrap_or("?");
            eprintln!(
                "portcullis: warning: {} is still blocked by the ban of {other} (jail {}); \
                 lift it with `{}`",
                net.addr(),
                portcullis::text::printable(jail),
                render::unban_command(&other.to_string(), jail),
            );
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // `portcullis bans | head` ends quietly, as other commands do,
        // instead of panicking on a write to a closed pipe.
        // SAFETY: no other thread exists yet.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Run {
            config: arg,
            recover,
        } => {
            portcullis::daemon::logging::init();
            let config = match load_config(&arg) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors {
                        tracing::error!("{e}");
                    }
                    tracing::error!("{} error(s) in the config; not started", errors.len());
                    return ExitCode::FAILURE;
                }
            };
            match portcullis::daemon::run(config_dir(&arg), config, recover) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("not started: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status {
            jail: Some(jail),
            sock,
        } if !sock.json => {
            // Its bans too, as `fail2ban-client status JAIL` lists them.
            let socket = socket_path(&sock);
            let bans = client::call(
                &socket,
                &Request::Bans {
                    jail: Some(jail.clone()),
                },
            )
            .ok()
            .filter(|r| r.ok)
            .map(|r| r.data)
            .unwrap_or_default();
            ctl(&sock, Request::Status { jail: Some(jail) }, |d| {
                render::status_jail(d, &bans)
            })
        }
        Command::Status { jail, sock } => ctl(&sock, Request::Status { jail }, render::status),
        Command::Bans { jail, sock } => ctl(&sock, Request::Bans { jail }, render::bans),
        Command::Unban {
            target,
            jail,
            all,
            sock,
        } => {
            let code = ctl(
                &sock,
                Request::Unban {
                    target: target.clone(),
                    jail,
                    all,
                },
                |d| render::ban_list(d, "unbanned"),
            );
            if code == ExitCode::SUCCESS
                && let Some(Ok(Target::Address(net))) = target.as_deref().map(Target::parse)
            {
                warn_still_covered(&sock, net);
            }
            code
        }
        Command::Ban {
            target,
            jail,
            duration,
            sock,
        } => ctl(
            &sock,
            Request::Ban {
                target,
                jail,
                duration,
            },
            |d| {
                let mut out = render::ban_list(&serde_json::json!([d]), "banned");
                if d["persisted"] == false {
                    out.push_str(&format!(
                        "\nWARNING: enforced, but NOT saved to the state store ({}); it is saved \
                         when the store accepts writes again, and lost if the daemon restarts first",
                        d["store_error"].as_str().unwrap_or("store error")
                    ));
                }
                out
            },
        ),
        Command::Reload { sock } => ctl(&sock, Request::Reload, |d| {
            format!(
                "reloaded: {} jails; counters kept for {}",
                d["jails"], d["kept_counters"]
            )
        }),
        Command::Incidents {
            show: Some(IncidentCmd::Show { id, sock }),
            ..
        } => ctl(&sock, Request::Incident { id }, render::incident),
        Command::Incidents {
            show: None,
            since,
            sock,
        } => ctl(&sock, Request::Incidents { since }, render::incidents),
        Command::GenerateAssets { dir } => match generate_assets(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis: {e}");
                ExitCode::FAILURE
            }
        },
        Command::FirewallRemove { config } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(errors) => {
                    print_errors(&errors);
                    return ExitCode::FAILURE;
                }
            };
            let Some(fw) = &config.main.firewall else {
                return ExitCode::SUCCESS;
            };
            match portcullis::act::firewall::remove_rules(
                fw,
                &config.ignore,
                config.firewall_scopes(),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Flush { yes, sock } => {
            if !yes {
                eprintln!(
                    "portcullis: flush removes every ban; run it again with --yes to confirm"
                );
                return ExitCode::FAILURE;
            }
            ctl(&sock, Request::Flush, |d| {
                format!("removed {} bans", d["removed"])
            })
        }
        Command::Check { config, json } => check(&config, json),
        Command::Replay {
            config,
            jail,
            format,
            wrap,
            json,
            threads,
            files,
        } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(errors) => {
                    print_errors(&errors);
                    return ExitCode::FAILURE;
                }
            };
            let sel = Selection {
                jails: jail,
                format,
                wrap,
            };
            match portcullis::replay::output::run(&config, &sel, &files, json, threads) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The man page ([`portcullis::docs`]) and bash, zsh and fish completions (clap_complete).
fn generate_assets(dir: &std::path::Path) -> Result<(), String> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cmd = Cli::command();
    let man = portcullis::docs::man_page(&cmd).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("portcullis.1"), man).map_err(|e| e.to_string())?;
    for (shell, file) in [
        (Shell::Bash, "portcullis.bash"),
        (Shell::Zsh, "_portcullis"),
        (Shell::Fish, "portcullis.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "portcullis", &mut out);
        std::fs::write(dir.join(file), out).map_err(|e| e.to_string())?;
    }
    Ok(())
}
