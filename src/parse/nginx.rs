//! nginx `log_format` strings, compiled into a [`Template`](super::template::Template).
//!
//! Accepts either the format string alone or the whole directive as it stands
//! in `nginx.conf` (`log_format name escape=json '...' '...';`), so operators
//! can paste what they have.

use super::event::StdField;
use super::template::{Escape, Piece, Var};
use super::time::TimeShape;

/// nginx's built-in `combined` format.
pub const COMBINED: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent""#;

/// The seed deployment's audit format, with the API-key id last.
pub const API_AUDIT: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_length $request_time $upstream_response_time $http_x_api_key_id"#;

/// Traefik 1.x's common log format (`accessLog.format = "common"`), as an
/// nginx-style template: request count, router and server URL, then the
/// duration with a `ms` suffix. Traefik writes an empty quoted field as a
/// bare `-`, which the built-in `traefik_clf` accepts.
pub const TRAEFIK_CLF: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_count "$traefik_router" "$traefik_server_url" ${request_duration}ms"#;

/// Splits a pasted `log_format` directive into its escape mode and format string.
fn unwrap_directive(s: &str) -> Result<(Option<Escape>, String), String> {
    let t = s.trim();
    let Some(rest) = t.strip_prefix("log_format") else {
        return Ok((None, s.to_string()));
    };
    let rest = rest.trim_start();
    let mut escape = None;
    let mut body = String::new();
    let mut i = 0;
    let b = rest.as_bytes();
    // Skip the format's name.
    while i < b.len() && !b[i].is_ascii_whitespace() {
        i += 1;
    }
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] == b';' {
            break;
        }
        if b[i] == b'\'' || b[i] == b'"' {
            let q = b[i];
            let end = rest[i + 1..]
                .find(q as char)
                .ok_or("unterminated quote in log_format directive")?;
            body.push_str(&rest[i + 1..i + 1 + end]);
            i += end + 2;
        } else {
            let end = rest[i..].find(|c: char| c.is_ascii_whitespace() || c == ';');
            let word = &rest[i..i + end.unwrap_or(rest.len() - i)];
            escape = Some(match word {
                "escape=default" => Escape::Nginx,
                "escape=json" => Escape::Json,
                "escape=none" => Escape::None,
                _ => return Err(format!("unexpected `{word}` in log_format directive")),
            });
            i += word.len();
        }
    }
    Ok((escape, body))
}

fn var_for(name: &str, api_key_var: &str) -> Var {
    if name == api_key_var {
        return Var::Text(StdField::ApiKey);
    }
    match name {
        "remote_addr" => Var::Peer,
        "time_local" => Var::Time(TimeShape::Clf),
        "time_iso8601" => Var::Time(TimeShape::Iso8601),
        "msec" => Var::Time(TimeShape::EpochSeconds),
        "request" => Var::Request,
        "request_method" => Var::Text(StdField::Method),
        "request_uri" | "uri" => Var::Text(StdField::Path),
        "server_protocol" => Var::Text(StdField::Protocol),
        "status" => Var::Status,
        "body_bytes_sent" => Var::Bytes,
        "request_time" => Var::RequestSeconds,
        "http_user_agent" => Var::Text(StdField::UserAgent),
        "http_referer" => Var::Text(StdField::Referer),
        "http_x_forwarded_for" => Var::Text(StdField::ForwardedFor),
        "remote_user" => Var::Text(StdField::RemoteUser),
        "host" | "http_host" => Var::Text(StdField::Host),
        other => Var::Extra(other.to_string()),
    }
}

/// Compiles a `log_format` string into pieces. `escape` is the config's
/// choice; a pasted directive's `escape=` wins over it.
pub fn compile(
    format: &str,
    escape: Escape,
    api_key_var: &str,
) -> Result<(Vec<Piece>, Escape), String> {
    let (directive_escape, body) = unwrap_directive(format)?;
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let next = body[i..].find('$').map_or(b.len(), |n| i + n);
            lit.push_str(&body[i..next]);
            i = next;
            continue;
        }
        let (name, len) = if b.get(i + 1) == Some(&b'{') {
            let end = body[i + 2..]
                .find('}')
                .ok_or("unterminated `${` in log_format")?;
            (&body[i + 2..i + 2 + end], end + 3)
        } else {
            let n = b[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            (&body[i + 1..i + 1 + n], n + 1)
        };
        if name.is_empty() {
            return Err(format!(
                "`$` without a variable name at byte {i} of the log_format"
            ));
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut lit)));
        }
        pieces.push(Piece::Var(var_for(name, api_key_var)));
        i += len;
    }
    if !lit.is_empty() {
        pieces.push(Piece::Literal(lit));
    }
    Ok((pieces, directive_escape.unwrap_or(escape)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_compiles() {
        let (p, e) = compile(COMBINED, Escape::Nginx, "http_x_api_key_id").unwrap();
        assert_eq!(e, Escape::Nginx);
        assert_eq!(p[0], Piece::Var(Var::Peer));
        assert_eq!(p[1], Piece::Literal(" - ".into()));
        assert_eq!(p.last(), Some(&Piece::Literal("\"".into())));
    }

    #[test]
    fn pasted_directive_with_escape() {
        let d = "log_format j escape=json '{\"a\":\"$remote_addr\",' '\"k\":\"${http_x_key}\"}';";
        let (p, e) = compile(d, Escape::Nginx, "http_x_key").unwrap();
        assert_eq!(e, Escape::Json);
        assert_eq!(
            p,
            vec![
                Piece::Literal("{\"a\":\"".into()),
                Piece::Var(Var::Peer),
                Piece::Literal("\",\"k\":\"".into()),
                Piece::Var(Var::Text(StdField::ApiKey)),
                Piece::Literal("\"}".into()),
            ]
        );
        assert!(compile("log_format x bogus '$a'", Escape::Nginx, "k").is_err());
        assert!(compile("$", Escape::Nginx, "k").is_err());
    }
}
