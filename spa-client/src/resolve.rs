//! -R: ask a web service for our external IPv4 address. The answer is the
//! first line of the response body, starting with the dotted address (what
//! fwknop's default service at cipherdyne.org returns).

use crate::error::{ClientError, Result};
use std::net::Ipv4Addr;
use std::time::Duration;

/// fwknop's default resolver over HTTPS.
pub const DEFAULT_RESOLVE_URL: &str = "https://www.cipherdyne.org/cgi-bin/myip";
/// fwknop's resolvers for --resolve-http-only (the second is the fallback).
pub const DEFAULT_HTTP_RESOLVE_URLS: [&str; 2] = [
    "http://www.cipherdyne.org/cgi-bin/myip",
    "http://www.cipherdyne.com/cgi-bin/myip",
];
/// The whole request must finish within this time.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_IPV4_STR_LEN: usize = 16;

/// The address at the start of a resolver's answer.
pub fn parse_ip_body(body: &str) -> Option<Ipv4Addr> {
    let first = body.trim_start().lines().next()?;
    let end = first
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(first.len());
    if end == 0 || end > MAX_IPV4_STR_LEN {
        return None;
    }
    first[..end].parse().ok()
}

/// The URLs to try, in order, for a -R request.
pub fn resolve_urls(url: Option<&str>, http_only: bool) -> Result<Vec<String>> {
    let Some(url) = url else {
        return Ok(if http_only {
            DEFAULT_HTTP_RESOLVE_URLS
                .iter()
                .map(|u| u.to_string())
                .collect()
        } else {
            vec![DEFAULT_RESOLVE_URL.to_string()]
        });
    };
    let lower = url.to_ascii_lowercase();
    if http_only && lower.starts_with("https") {
        return Err(ClientError::Resolve(format!(
            "--resolve-http-only cannot use the https URL {url}"
        )));
    }
    let full = if lower.starts_with("http://") || lower.starts_with("https://") {
        url.to_string()
    } else if http_only {
        format!("http://{url}")
    } else {
        format!("https://{url}")
    };
    Ok(vec![full])
}

fn fetch(url: &str, user_agent: &str) -> std::result::Result<String, String> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(RESOLVE_TIMEOUT))
        .user_agent(user_agent)
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| e.to_string())
}

/// Fetch `urls` in turn until one answers with an IPv4 address.
pub fn resolve_external_ip(urls: &[String], user_agent: &str) -> Result<(Ipv4Addr, String)> {
    let mut last_error = String::from("no resolver URL");
    for url in urls {
        match fetch(url, user_agent) {
            Ok(body) => match parse_ip_body(&body) {
                Some(ip) => return Ok((ip, url.clone())),
                None => {
                    last_error = format!("no IPv4 address at the start of the response from {url}")
                }
            },
            Err(e) => last_error = format!("{url}: {e}"),
        }
    }
    Err(ClientError::Resolve(format!(
        "could not resolve the external IP address (-R): {last_error}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_like_fwknop() {
        assert_eq!(
            parse_ip_body("203.0.113.7\n"),
            Some(Ipv4Addr::new(203, 0, 113, 7))
        );
        assert_eq!(
            parse_ip_body("  203.0.113.7 extra"),
            Some(Ipv4Addr::new(203, 0, 113, 7))
        );
        assert_eq!(parse_ip_body("<html>"), None);
        assert_eq!(parse_ip_body("999.1.1.1"), None);
        assert_eq!(parse_ip_body(""), None);
    }

    #[test]
    fn urls() {
        assert_eq!(resolve_urls(None, false).unwrap(), [DEFAULT_RESOLVE_URL]);
        assert_eq!(resolve_urls(None, true).unwrap().len(), 2);
        assert_eq!(
            resolve_urls(Some("example.org/ip"), false).unwrap(),
            ["https://example.org/ip"]
        );
        assert!(resolve_urls(Some("https://x/"), true).is_err());
    }
}
