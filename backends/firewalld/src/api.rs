//! The few firewalld D-Bus calls postern makes, behind a trait so the backend's
//! logic can be tested against a fake firewalld.

use std::fmt;
use std::time::Duration;
use zbus::blocking::connection::Builder;
use zbus::blocking::Connection;
use zbus::zvariant::{DynamicType, OwnedValue};

/// Well-known bus name of firewalld.
pub const DESTINATION: &str = "org.fedoraproject.FirewallD1";
/// Object path of firewalld's main object.
pub const PATH: &str = "/org/fedoraproject/FirewallD1";
/// Main interface: `state`/`version` properties, `getDefaultZone`.
pub const IFACE_MAIN: &str = "org.fedoraproject.FirewallD1";
/// Runtime zone interface: rich rules, zones.
pub const IFACE_ZONE: &str = "org.fedoraproject.FirewallD1.zone";

/// Why a call to firewalld failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// firewalld answered with one of its errors, e.g. `ALREADY_ENABLED`,
    /// `NOT_ENABLED`, `INVALID_ZONE`, `INVALID_RULE` (the code before the first `:`).
    Firewalld { code: String, message: String },
    /// The bus itself cannot be reached.
    NoBus { address: String, detail: String },
    /// Nobody owns `org.fedoraproject.FirewallD1` on the bus.
    NotRunning { detail: String },
    /// The bus or firewalld (polkit) refused the call.
    Denied { detail: String },
    /// No answer within the call timeout; the call may or may not have taken effect.
    Timeout { method: String, after: Duration },
    /// Anything else (connection lost, unexpected reply); outcome unknown.
    Other { method: String, detail: String },
}

impl ApiError {
    pub fn is_code(&self, code: &str) -> bool {
        matches!(self, ApiError::Firewalld { code: c, .. } if c == code)
    }

    /// True when the call may have been carried out even though it failed.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ApiError::Timeout { .. } | ApiError::Other { .. })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Firewalld { message, .. } => f.write_str(message),
            ApiError::NoBus { address, detail } => {
                write!(f, "cannot connect to the D-Bus bus at {address}: {detail}")
            }
            ApiError::NotRunning { detail } => write!(f, "firewalld is not on the bus: {detail}"),
            ApiError::Denied { detail } => write!(f, "not allowed: {detail}"),
            ApiError::Timeout { method, after } => {
                write!(
                    f,
                    "firewalld did not answer `{method}` within {} ms",
                    after.as_millis()
                )
            }
            ApiError::Other { method, detail } => write!(f, "`{method}` failed: {detail}"),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// firewalld's runtime API as postern uses it. Implemented over D-Bus by
/// [`DbusApi`]; tests substitute a fake.
pub trait FirewalldApi: Send {
    /// Property `state` of the main interface: `RUNNING` once firewalld is usable
    /// (`INIT` while it starts, `FAILED` if loading its config failed).
    fn state(&mut self) -> ApiResult<String>;
    /// Property `version` (e.g. `1.3.3`).
    fn version(&mut self) -> ApiResult<String>;
    fn default_zone(&mut self) -> ApiResult<String>;
    /// Names of the zones firewalld knows at runtime.
    fn zones(&mut self) -> ApiResult<Vec<String>>;
    /// Runtime rich rules of `zone`, as text.
    fn rich_rules(&mut self, zone: &str) -> ApiResult<Vec<String>>;
    /// `addRichRule(zone, rule, timeout)`: firewalld removes it after `timeout_secs`
    /// (which must not be 0: firewalld reads 0 as "forever").
    fn add_rich_rule(&mut self, zone: &str, rule: &str, timeout_secs: i32) -> ApiResult<()>;
    fn remove_rich_rule(&mut self, zone: &str, rule: &str) -> ApiResult<()>;
}

/// [`FirewalldApi`] over D-Bus with zbus's blocking API. Connects on first use and
/// again after the connection broke.
pub struct DbusApi {
    address: Option<String>,
    timeout: Duration,
    conn: Option<Connection>,
}

impl fmt::Debug for DbusApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbusApi")
            .field("address", &self.address_label())
            .field("timeout", &self.timeout)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl DbusApi {
    /// `address`: a D-Bus address, or `None` for the system bus (which honours
    /// `DBUS_SYSTEM_BUS_ADDRESS`). Nothing connects until the first call.
    pub fn new(address: Option<String>, timeout: Duration) -> DbusApi {
        DbusApi {
            address,
            timeout,
            conn: None,
        }
    }

    /// The bus as shown in messages.
    pub fn address_label(&self) -> String {
        match &self.address {
            Some(a) => a.clone(),
            None => match std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
                Ok(a) if !a.is_empty() => format!("{a} (system bus, from DBUS_SYSTEM_BUS_ADDRESS)"),
                _ => "unix:path=/var/run/dbus/system_bus_socket (system bus)".into(),
            },
        }
    }

    fn connection(&mut self) -> ApiResult<Connection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let no_bus = |detail: String| ApiError::NoBus {
            address: self.address_label(),
            detail,
        };
        let builder = match &self.address {
            Some(a) => Builder::address(a.as_str()),
            None => Builder::system(),
        }
        .map_err(|e| no_bus(e.to_string()))?;
        let conn = builder.method_timeout(self.timeout).build().map_err(|e| {
            match classify(e, "Hello", self.timeout) {
                ApiError::Other { detail, .. } | ApiError::NoBus { detail, .. } => no_bus(detail),
                ApiError::Timeout { after, .. } => {
                    no_bus(format!("no answer within {} ms", after.as_millis()))
                }
                other => other,
            }
        })?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    fn call<B, R>(&mut self, iface: &str, method: &str, body: &B) -> ApiResult<R>
    where
        B: serde::Serialize + DynamicType,
        R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
    {
        let conn = self.connection()?;
        let reply = conn
            .call_method(Some(DESTINATION), PATH, Some(iface), method, body)
            .map_err(|e| {
                let err = classify(e, method, self.timeout);
                if matches!(err, ApiError::Other { .. }) {
                    // Possibly a broken connection: make the next call reconnect.
                    self.conn = None;
                }
                err
            })?;
        reply
            .body()
            .deserialize::<R>()
            .map_err(|e| ApiError::Other {
                method: method.into(),
                detail: format!("unexpected reply: {e}"),
            })
    }

    fn property(&mut self, name: &str) -> ApiResult<String> {
        let v: OwnedValue = self.call(
            "org.freedesktop.DBus.Properties",
            "Get",
            &(IFACE_MAIN, name),
        )?;
        String::try_from(v).map_err(|e| ApiError::Other {
            method: format!("Get {name}"),
            detail: format!("property is not a string: {e}"),
        })
    }
}

impl FirewalldApi for DbusApi {
    fn state(&mut self) -> ApiResult<String> {
        self.property("state")
    }
    fn version(&mut self) -> ApiResult<String> {
        self.property("version")
    }
    fn default_zone(&mut self) -> ApiResult<String> {
        self.call(IFACE_MAIN, "getDefaultZone", &())
    }
    fn zones(&mut self) -> ApiResult<Vec<String>> {
        self.call(IFACE_ZONE, "getZones", &())
    }
    fn rich_rules(&mut self, zone: &str) -> ApiResult<Vec<String>> {
        self.call(IFACE_ZONE, "getRichRules", &(zone,))
    }
    fn add_rich_rule(&mut self, zone: &str, rule: &str, timeout_secs: i32) -> ApiResult<()> {
        debug_assert!(timeout_secs > 0, "timeout 0 means forever to firewalld");
        let _zone: String = self.call(IFACE_ZONE, "addRichRule", &(zone, rule, timeout_secs))?;
        Ok(())
    }
    fn remove_rich_rule(&mut self, zone: &str, rule: &str) -> ApiResult<()> {
        let _zone: String = self.call(IFACE_ZONE, "removeRichRule", &(zone, rule))?;
        Ok(())
    }
}

/// Sorts a zbus error into what the backend needs to know.
fn classify(e: zbus::Error, method: &str, timeout: Duration) -> ApiError {
    match e {
        zbus::Error::MethodError(name, message, _) => {
            from_error_name(name.as_str(), message.unwrap_or_default(), method, timeout)
        }
        zbus::Error::FDO(fdo) => {
            use zbus::DBusError;
            let name = fdo.name().as_str().to_string();
            let message = fdo.description().unwrap_or_default().to_string();
            from_error_name(&name, message, method, timeout)
        }
        zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            ApiError::Timeout {
                method: method.into(),
                after: timeout,
            }
        }
        zbus::Error::Connection(io, address) => ApiError::NoBus {
            address: address.to_string(),
            detail: io.to_string(),
        },
        zbus::Error::Address(detail) => ApiError::NoBus {
            address: String::new(),
            detail,
        },
        zbus::Error::Handshake(detail) => ApiError::Denied {
            detail: format!("D-Bus authentication failed: {detail}"),
        },
        other => ApiError::Other {
            method: method.into(),
            detail: other.to_string(),
        },
    }
}

fn from_error_name(name: &str, message: String, method: &str, timeout: Duration) -> ApiError {
    let detail = if message.is_empty() {
        name.to_string()
    } else {
        format!("{name}: {message}")
    };
    match name.rsplit('.').next().unwrap_or(name) {
        "ServiceUnknown" | "NameHasNoOwner" => return ApiError::NotRunning { detail },
        "AccessDenied"
        | "AuthFailed"
        | "InteractiveAuthorizationRequired"
        | "NotAuthorizedException" => return ApiError::Denied { detail },
        "NoReply" | "Timeout" | "TimedOut" => {
            return ApiError::Timeout {
                method: method.into(),
                after: timeout,
            }
        }
        _ => {}
    }
    if name.starts_with("org.fedoraproject.FirewallD1") {
        // firewalld's exceptions read `CODE: detail`, e.g. `ALREADY_ENABLED: 'rule …' already in 'public'`.
        let code = message.split(':').next().unwrap_or("").trim();
        if code == "NOT_AUTHORIZED" {
            return ApiError::Denied { detail };
        }
        if !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return ApiError::Firewalld {
                code: code.to_string(),
                message,
            };
        }
        return ApiError::Firewalld {
            code: String::new(),
            message,
        };
    }
    ApiError::Other {
        method: method.into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn firewalld_exceptions_keep_their_code() {
        let e = from_error_name(
            "org.fedoraproject.FirewallD1.Exception",
            "ALREADY_ENABLED: 'rule …' already in 'public'".into(),
            "addRichRule",
            T,
        );
        assert!(e.is_code("ALREADY_ENABLED"), "{e:?}");
        assert!(!e.outcome_unknown());
        let e = from_error_name(
            "org.fedoraproject.FirewallD1.Exception",
            "INVALID_ZONE: nosuch".into(),
            "getRichRules",
            T,
        );
        assert!(e.is_code("INVALID_ZONE"));
        assert_eq!(e.to_string(), "INVALID_ZONE: nosuch");
        let e = from_error_name(
            "org.fedoraproject.FirewallD1.Exception",
            "NOT_AUTHORIZED: x".into(),
            "addRichRule",
            T,
        );
        assert!(matches!(e, ApiError::Denied { .. }));
    }

    #[test]
    fn bus_errors_are_sorted() {
        let e = from_error_name(
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "The name is not activatable".into(),
            "Get",
            T,
        );
        assert!(matches!(e, ApiError::NotRunning { .. }), "{e:?}");
        let e = from_error_name(
            "org.freedesktop.DBus.Error.AccessDenied",
            "Rejected".into(),
            "addRichRule",
            T,
        );
        assert!(matches!(e, ApiError::Denied { .. }));
        let e = from_error_name(
            "org.freedesktop.DBus.Error.NoReply",
            String::new(),
            "addRichRule",
            T,
        );
        assert!(matches!(e, ApiError::Timeout { .. }) && e.outcome_unknown());
        assert_eq!(
            e.to_string(),
            "firewalld did not answer `addRichRule` within 1000 ms"
        );
        let e = from_error_name(
            "org.freedesktop.DBus.Error.UnknownMethod",
            "no such method".into(),
            "getZones",
            T,
        );
        assert!(matches!(e, ApiError::Other { .. }));
    }

    #[test]
    fn io_timeouts_are_timeouts() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let e = classify(
            zbus::Error::InputOutput(std::sync::Arc::new(io)),
            "addRichRule",
            T,
        );
        assert!(matches!(e, ApiError::Timeout { .. }), "{e:?}");
    }

    #[test]
    fn a_missing_socket_is_no_bus() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix:path={}", dir.path().join("nothing-here").display());
        let mut api = DbusApi::new(Some(addr.clone()), T);
        let e = api.state().unwrap_err();
        assert!(
            matches!(&e, ApiError::NoBus { address, .. } if address == &addr),
            "{e:?}"
        );
    }
}
