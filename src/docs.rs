//! The manual page `portcullis(1)`, made from the CLI's own definition so
//! it cannot fall behind it: clap_mangen's synopsis and options, a section
//! per command with its arguments, then the hand-written FILES,
//! ENVIRONMENT, EXIT STATUS and EXAMPLES (`packaging/man/portcullis.1.extra`).
//! `portcullis.toml(5)` is hand-written (`packaging/man/portcullis.toml.5`).

use std::io::{self, Write};

const EXTRA: &str = include_str!("../packaging/man/portcullis.1.extra");

/// Renders `portcullis(1)` for `cmd` (the top-level clap command).
pub fn man_page(cmd: &clap::Command) -> io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(&mut out, cmd.get_name(), sub)?;
    }
    out.extend_from_slice(EXTRA.as_bytes());
    if !EXTRA.ends_with('\n') {
        out.push(b'\n');
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// `.SS portcullis NAME ARGS`, what it does, and each argument.
fn command(out: &mut Vec<u8>, parent: &str, sub: &clap::Command) -> io::Result<()> {
    let args: Vec<&clap::Arg> = sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    let mut synopsis = format!("{parent} {}", sub.get_name());
    for a in args.iter().filter(|a| a.is_positional()) {
        let name = a.get_id().as_str().to_uppercase();
        synopsis.push_str(&if a.is_required_set() {
            format!(" {name}")
        } else {
            format!(" [{name}]")
        });
    }
    if args.iter().any(|a| !a.is_positional()) {
        synopsis.push_str(" [OPTIONS]");
    }
    writeln!(out, ".SS \"{}\"", roff(&synopsis))?;
    if let Some(about) = sub.get_long_about().or(sub.get_about()) {
        writeln!(out, "{}", roff(&about.to_string()))?;
    }
    for a in &args {
        let mut head = String::new();
        if a.is_positional() {
            head.push_str(&format!("\\fI{}\\fR", a.get_id().as_str().to_uppercase()));
        } else {
            if let Some(s) = a.get_short() {
                head.push_str(&format!("\\fB\\-{s}\\fR, "));
            }
            if let Some(l) = a.get_long() {
                head.push_str(&format!("\\fB\\-\\-{}\\fR", roff(l)));
            }
            if a.get_action().takes_values() {
                let v = a
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map_or_else(|| "VALUE".to_string(), |v| v.to_string());
                head.push_str(&format!(" \\fI{}\\fR", roff(&v)));
            }
        }
        writeln!(out, ".TP\n{head}")?;
        if let Some(help) = a.get_long_help().or(a.get_help()) {
            writeln!(out, "{}", roff(&help.to_string()))?;
        }
    }
    if let Some(inner) = sub.get_subcommands().find(|s| !s.is_hide_set()) {
        command(out, &format!("{parent} {}", sub.get_name()), inner)?;
    }
    Ok(())
}

/// Text safe in roff: backslashes and hyphens escaped, no line starting
/// with a control character.
fn roff(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    t.lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
