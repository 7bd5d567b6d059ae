//! CMD_CYCLE_OPEN / CMD_CYCLE_CLOSE command templates.
//!
//! A template is split into words once, at config time, with POSIX-shell quoting
//! rules (`shell-words`), then variables are substituted inside each word. The
//! result is an argv that is executed directly: no shell ever sees it, so a
//! substituted value can never become a second command or an extra argument.
//!
//! Variables, as fwknopd 2.6.10 defines them:
//!
//! | variable          | value                                                   |
//! |-------------------|---------------------------------------------------------|
//! | `$IP`, `$SRC`     | the address being allowed (from the SPA payload)        |
//! | `$PKT_SRC`        | source address of the SPA packet's IP header            |
//! | `$DST`            | destination address of the SPA packet                   |
//! | `$PORT`           | the allowed port                                        |
//! | `$PROTO`          | the protocol **number** (`6` tcp, `17` udp), as fwknopd |
//! | `$TIMEOUT`        | absolute expiry, unix seconds                           |
//! | `$CLIENT_TIMEOUT` | the access duration in seconds                          |
//!
//! and one of postern's own:
//!
//! | variable          | value                                                   |
//! |-------------------|---------------------------------------------------------|
//! | `$SPORT`          | the source port a native knock pinned its grant to; empty when not pinned |
//!
//! Like fwknopd, a name is matched as a prefix (`$PORTs` is the port then `s`).
//! Unlike fwknopd, an unknown `$NAME` is a config error instead of silently losing
//! its `$`, and `$$` stands for a literal `$`. Quotes only group words (fwknopd
//! splits on whitespace and keeps quote characters); they do not stop variable
//! substitution, single quotes included.

use spa_core::request::Proto;
use std::fmt;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Src,
    PktSrc,
    Dst,
    Port,
    Proto,
    Timeout,
    ClientTimeout,
    SourcePort,
}

/// Longest names first so that prefix matching is unambiguous.
const VARIABLES: &[(&str, Var)] = &[
    ("CLIENT_TIMEOUT", Var::ClientTimeout),
    ("PKT_SRC", Var::PktSrc),
    ("SPORT", Var::SourcePort),
    ("TIMEOUT", Var::Timeout),
    ("PROTO", Var::Proto),
    ("PORT", Var::Port),
    ("SRC", Var::Src),
    ("DST", Var::Dst),
    ("IP", Var::Src),
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A parsed command template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    words: Vec<Vec<Piece>>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("command template `{template}`: {problem}")]
pub struct TemplateError {
    pub template: String,
    pub problem: String,
}

/// The values a template is rendered with.
#[derive(Clone, Debug)]
pub struct Values {
    pub source: IpAddr,
    pub packet_source: IpAddr,
    pub destination: Option<IpAddr>,
    pub proto: Proto,
    pub port: u16,
    /// The pinned source port, if the grant is pinned.
    pub source_port: Option<u16>,
    pub expires_at: u64,
    pub timeout_secs: u32,
}

/// IANA protocol number, which is what fwknopd puts in `$PROTO`.
pub fn proto_number(proto: Proto) -> u8 {
    match proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

fn parse_word(word: &str, template: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            text.push('$');
            rest = tail;
            continue;
        }
        let (name, var) = VARIABLES.iter().find(|(name, _)| after.starts_with(name)).ok_or_else(|| {
            let shown: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            TemplateError {
                template: template.to_string(),
                problem: format!(
                    "unknown variable `${shown}`; known: $IP $SRC $PKT_SRC $DST $PORT $PROTO $TIMEOUT $CLIENT_TIMEOUT $SPORT (write $$ for a literal $)"
                ),
            }
        })?;
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Var(*var));
        rest = &after[name.len()..];
    }
    text.push_str(rest);
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let error = |problem: String| TemplateError {
            template: source.to_string(),
            problem,
        };
        let words = shell_words::split(source)
            .map_err(|e| error(format!("{e} (quotes must be balanced)")))?;
        if words.is_empty() {
            return Err(error("the command is empty".into()));
        }
        let words = words
            .iter()
            .map(|w| parse_word(w, source))
            .collect::<Result<Vec<_>, _>>()?;
        if !matches!(words[0].as_slice(), [Piece::Text(_)]) {
            return Err(error(
                "the program name must not come from a variable".into(),
            ));
        }
        Ok(Template {
            source: source.to_string(),
            words,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// True if the template refers to `$DST`, which needs a known destination.
    pub fn uses_destination(&self) -> bool {
        self.words
            .iter()
            .flatten()
            .any(|p| *p == Piece::Var(Var::Dst))
    }

    /// True if the template refers to `$SPORT`: it can pin a grant to a source port.
    pub fn uses_source_port(&self) -> bool {
        self.words
            .iter()
            .flatten()
            .any(|p| *p == Piece::Var(Var::SourcePort))
    }

    /// The argv for these values.
    pub fn render(&self, values: &Values) -> Result<Vec<String>, TemplateError> {
        let destination = || {
            values.destination.ok_or_else(|| TemplateError {
                template: self.source.clone(),
                problem: "uses $DST but the packet's destination address is unknown; set `destination` in the script backend config".into(),
            })
        };
        let mut argv = Vec::with_capacity(self.words.len());
        for word in &self.words {
            let mut out = String::new();
            for piece in word {
                match piece {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Var(Var::Src) => out.push_str(&values.source.to_string()),
                    Piece::Var(Var::PktSrc) => out.push_str(&values.packet_source.to_string()),
                    Piece::Var(Var::Dst) => out.push_str(&destination()?.to_string()),
                    Piece::Var(Var::Port) => out.push_str(&values.port.to_string()),
                    Piece::Var(Var::Proto) => out.push_str(&proto_number(values.proto).to_string()),
                    Piece::Var(Var::Timeout) => out.push_str(&values.expires_at.to_string()),
                    Piece::Var(Var::ClientTimeout) => {
                        out.push_str(&values.timeout_secs.to_string())
                    }
                    Piece::Var(Var::SourcePort) => {
                        if let Some(sport) = values.source_port {
                            out.push_str(&sport.to_string())
                        }
                    }
                }
            }
            argv.push(out);
        }
        Ok(argv)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            source: "192.0.2.7".parse().unwrap(),
            packet_source: "198.51.100.1".parse().unwrap(),
            destination: Some("203.0.113.5".parse().unwrap()),
            proto: Proto::Udp,
            port: 53,
            source_port: None,
            expires_at: 1_700_000_030,
            timeout_secs: 30,
        }
    }

    fn render(t: &str) -> Vec<String> {
        Template::parse(t).unwrap().render(&values()).unwrap()
    }

    #[test]
    fn substitutes_every_variable_per_word() {
        assert_eq!(
            render(
                "/usr/local/bin/open $IP $SRC $PKT_SRC $DST $PORT $PROTO $TIMEOUT $CLIENT_TIMEOUT"
            ),
            [
                "/usr/local/bin/open",
                "192.0.2.7",
                "192.0.2.7",
                "198.51.100.1",
                "203.0.113.5",
                "53",
                "17",
                "1700000030",
                "30"
            ]
        );
    }

    #[test]
    fn quotes_group_words_and_variables_work_inside_them() {
        assert_eq!(
            render(r#"logger -t postern "open $SRC port $PORT" 'single $PORT' 'cost $$5'"#),
            [
                "logger",
                "-t",
                "postern",
                "open 192.0.2.7 port 53",
                "single 53",
                "cost $5"
            ]
        );
    }

    #[test]
    fn prefix_matching_and_literal_dollar() {
        assert_eq!(
            render("x $PORTs --dport=$PORT a$$b"),
            ["x", "53s", "--dport=53", "a$b"]
        );
    }

    #[test]
    fn shell_metacharacters_stay_plain_arguments() {
        assert_eq!(
            render("echo $SRC;rm -rf / | x"),
            ["echo", "192.0.2.7;rm", "-rf", "/", "|", "x"]
        );
    }

    #[test]
    fn config_errors_are_explained() {
        let e = Template::parse("cmd $HOME").unwrap_err();
        assert!(e.to_string().contains("unknown variable `$HOME`"), "{e}");
        let e = Template::parse("cmd 'open").unwrap_err();
        assert!(e.to_string().contains("quotes"), "{e}");
        assert!(Template::parse("   ").is_err());
        assert!(Template::parse("$SRC arg").is_err());
    }

    #[test]
    fn source_port_is_the_pin_or_empty() {
        let t = Template::parse("x $SPORT --sport=$SPORT $PORT").unwrap();
        assert!(t.uses_source_port());
        assert!(!Template::parse("x $PORT $SRC").unwrap().uses_source_port());
        assert_eq!(t.render(&values()).unwrap(), ["x", "", "--sport=", "53"]);
        let mut v = values();
        v.source_port = Some(40022);
        assert_eq!(t.render(&v).unwrap(), ["x", "40022", "--sport=40022", "53"]);
    }

    #[test]
    fn missing_destination_is_a_render_error() {
        let t = Template::parse("x $DST").unwrap();
        assert!(t.uses_destination());
        let mut v = values();
        v.destination = None;
        assert!(t
            .render(&v)
            .unwrap_err()
            .to_string()
            .contains("destination"));
    }
}
