//! -R: ask a web service for our external address. The answer is the first
//! line of the response body, starting with the address (what fwknop's
//! default service at cipherdyne.org returns). The service is asked over the
//! family the knock goes out over, so the address is the one the server sees.

use crate::error::{ClientError, Result};
use crate::send::Family;
use std::net::IpAddr;
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
/// The longest text form of an address (IPv6 with an embedded IPv4 one).
const MAX_IP_STR_LEN: usize = 45;

/// The address at the start of a resolver's answer.
pub fn parse_ip_body(body: &str) -> Option<IpAddr> {
    let first = body.trim_start().lines().next()?;
    let end = first
        .find(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .unwrap_or(first.len());
    if end == 0 || end > MAX_IP_STR_LEN {
        return None;
    }
    first[..end]
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
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

fn fetch(url: &str, user_agent: &str, family: Family) -> std::result::Result<String, String> {
    use ureq::config::IpFamily;
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(RESOLVE_TIMEOUT))
        .user_agent(user_agent)
        .ip_family(match family {
            Family::Any => IpFamily::Any,
            Family::V4 => IpFamily::Ipv4Only,
            Family::V6 => IpFamily::Ipv6Only,
        })
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

/// Fetch `urls` over `family` in turn until one answers with an address.
pub fn resolve_external_ip(
    urls: &[String],
    user_agent: &str,
    family: Family,
) -> Result<(IpAddr, String)> {
    let mut last_error = String::from("no resolver URL");
    for url in urls {
        match fetch(url, user_agent, family) {
            Ok(body) => match parse_ip_body(&body) {
                Some(ip) => return Ok((ip, url.clone())),
                None => {
                    last_error = format!("no IP address at the start of the response from {url}")
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
        let v4: Option<IpAddr> = Some([203, 0, 113, 7].into());
        assert_eq!(parse_ip_body("203.0.113.7\n"), v4);
        assert_eq!(parse_ip_body("  203.0.113.7 extra"), v4);
        assert_eq!(parse_ip_body("::ffff:203.0.113.7\n"), v4);
        assert_eq!(
            parse_ip_body("2001:db8::7\n"),
            Some("2001:db8::7".parse().unwrap())
        );
        assert_eq!(parse_ip_body("deadbeef\n"), None);
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
