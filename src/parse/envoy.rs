//! Envoy text format strings (`%OPERATOR%`), compiled into a
//! [`Template`](super::template::Template). Envoy does not escape values; the
//! template refuses lines whose quotes do not add up (see its module docs).

use super::event::StdField;
use super::template::{Piece, Var};
use super::time::TimeShape;

/// Envoy's default access log format.
pub const DEFAULT: &str = r#"[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%""#;

fn var_for(op: &str, api_key_header: &str, has_direct: bool) -> Var {
    // START_TIME(%Y...) and friends: the argument is a strftime format; the
    // default output is RFC 3339, which is what we read.
    let (name, arg) = match op.find('(') {
        Some(i) => (
            &op[..i],
            op[i + 1..].strip_suffix(')').unwrap_or(&op[i + 1..]),
        ),
        None => (op, ""),
    };
    let header = arg
        .split(['?', ')'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match (name, header.as_str()) {
        ("START_TIME", _) => Var::Time(TimeShape::Iso8601),
        ("REQ", ":method") => Var::Text(StdField::Method),
        ("REQ", ":path" | "x-envoy-original-path") => Var::Text(StdField::Path),
        ("PROTOCOL", _) => Var::Text(StdField::Protocol),
        ("RESPONSE_CODE", _) => Var::Status,
        ("BYTES_SENT", _) => Var::Bytes,
        ("DURATION", _) => Var::RequestMillis,
        ("REQ", "x-forwarded-for") => Var::Text(StdField::ForwardedFor),
        ("REQ", "user-agent") => Var::Text(StdField::UserAgent),
        ("REQ", "referer") => Var::Text(StdField::Referer),
        ("REQ", ":authority") => Var::Text(StdField::Host),
        ("REQ", h) if h == api_key_header => Var::Text(StdField::ApiKey),
        (
            "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
            _,
        ) => Var::Peer,
        ("DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", _)
            if !has_direct =>
        {
            Var::Peer
        }
        ("REQ" | "RESP" | "TRAILER", h) => Var::Extra(format!(
            "{}_{}",
            name.to_ascii_lowercase(),
            h.trim_start_matches(':')
        )),
        _ => Var::Extra(name.to_ascii_lowercase()),
    }
}

/// Compiles an Envoy format string. `api_key_header` is lower-case.
pub fn compile(format: &str, api_key_header: &str) -> Result<Vec<Piece>, String> {
    let format = format.strip_suffix('\n').unwrap_or(format);
    let has_direct = format.contains("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS");
    let mut pieces = Vec::new();
    let mut rest = format;
    while let Some(start) = rest.find('%') {
        if start > 0 {
            pieces.push(Piece::Literal(rest[..start].to_string()));
        }
        let after = &rest[start + 1..];
        let end = after.find('%').ok_or_else(|| {
            format!(
                "unterminated `%` operator at `{}`",
                &rest[start..].chars().take(20).collect::<String>()
            )
        })?;
        let op = &after[..end];
        if op.is_empty() {
            // `%%` is a literal percent sign.
            pieces.push(Piece::Literal("%".into()));
        } else {
            pieces.push(Piece::Var(var_for(op, api_key_header, has_direct)));
        }
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_string()));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_format_compiles() {
        let p = compile(DEFAULT, "x-api-key-id").unwrap();
        assert_eq!(p[0], Piece::Literal("[".into()));
        assert_eq!(p[1], Piece::Var(Var::Time(TimeShape::Iso8601)));
        assert!(p.contains(&Piece::Var(Var::Text(StdField::ForwardedFor))));
        assert!(p.contains(&Piece::Var(Var::Extra("response_flags".into()))));
        assert!(p.contains(&Piece::Var(Var::Extra(
            "resp_x-envoy-upstream-service-time".into()
        ))));
        assert!(compile("%START_TIME", "k").is_err());
    }

    #[test]
    fn direct_address_is_the_peer() {
        let p = compile(
            "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
            "k",
        )
        .unwrap();
        assert_eq!(
            p[0],
            Piece::Var(Var::Extra("downstream_remote_address".into()))
        );
        assert_eq!(p[2], Piece::Var(Var::Peer));
    }
}
