//! In-house action plugins: shared libraries with a small, versioned C ABI,
//! loaded with libloading. The ABI (examples/postern_plugin.h):
//!
//! ```text
//! uint32_t postern_plugin_abi_version(void);          // must equal POSTERN_PLUGIN_ABI_VERSION
//! void*    postern_plugin_init(const char* config_json, char* err, size_t err_len);
//! uint32_t postern_plugin_flags(void* state);         // bit 0: target expires grants itself,
//!                                                     // bit 1: rules may carry "destination"
//! int32_t  postern_plugin_grant(void* state, const char* openings_json, char* err, size_t err_len);
//! int32_t  postern_plugin_revoke(void* state, const char* rules_json, char* err, size_t err_len);
//! int32_t  postern_plugin_list(void* state, char* out, size_t out_len, char* err, size_t err_len);
//! int32_t  postern_plugin_flush(void* state, char* err, size_t err_len);
//! void     postern_plugin_shutdown(void* state);
//! ```
//!
//! The version symbol is read before any other, so a plugin built for another
//! ABI is refused with a clear error instead of being called. Flag bit 1 was
//! added without a version change: a plugin without it never sees a
//! `destination` field, as posternd refuses such grants for it.

use libloading::{Library, Symbol};
use serde::{Deserialize, Serialize};
use spa_core::firewall::{Firewall, FirewallError, FwResult, Opening, Rule, RuleFeature};
use spa_core::Proto;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};

pub const POSTERN_PLUGIN_ABI_VERSION: u32 = 1;
const EXPIRES_ITSELF: u32 = 1;
/// The plugin matches a rule's `destination` (ENABLE_DESTINATION_RULE).
const DESTINATION: u32 = 2;
const ERR_LEN: usize = 1024;

type VersionFn = unsafe extern "C" fn() -> u32;
type InitFn = unsafe extern "C" fn(*const c_char, *mut c_char, usize) -> *mut c_void;
type FlagsFn = unsafe extern "C" fn(*mut c_void) -> u32;
type JsonFn = unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_char, usize) -> i32;
type ListFn = unsafe extern "C" fn(*mut c_void, *mut c_char, usize, *mut c_char, usize) -> i32;
type FlushFn = unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> i32;
type ShutdownFn = unsafe extern "C" fn(*mut c_void);

/// `[[action]] type = "plugin"` settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub path: PathBuf,
    /// Handed to the plugin's init as JSON.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct WireRule {
    source: std::net::IpAddr,
    proto: String,
    port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination: Option<std::net::IpAddr>,
}

#[derive(Serialize, Deserialize)]
struct WireOpening {
    #[serde(flatten)]
    rule: WireRule,
    timeout_secs: u32,
    expires_at: u64,
}

impl From<&Rule> for WireRule {
    fn from(r: &Rule) -> Self {
        WireRule {
            source: r.source,
            proto: r.proto.name().into(),
            port: r.port,
            destination: r.destination,
        }
    }
}

pub struct PluginBackend {
    path: PathBuf,
    state: *mut c_void,
    expires_itself: bool,
    matches_destination: bool,
    grant: JsonFn,
    revoke: JsonFn,
    list: ListFn,
    flush: FlushFn,
    shutdown: ShutdownFn,
    // Last field: dropped after everything that points into it.
    _library: Library,
}

// SAFETY: the plugin state is only ever used from the one thread that owns the
// backend (the action thread); the ABI documents that contract.
unsafe impl Send for PluginBackend {}

fn plugin_error(path: &Path, message: impl std::fmt::Display) -> FirewallError {
    FirewallError::Other {
        backend: "plugin",
        message: format!("{}: {message}", path.display()),
    }
}

/// # Safety
/// Loading a library runs its initialisers; only load trusted plugins.
unsafe fn symbol<T: Copy>(lib: &Library, path: &Path, name: &str) -> FwResult<T> {
    let s: Symbol<T> = lib.get(name.as_bytes()).map_err(|_| {
        plugin_error(
            path,
            format!("not a postern plugin: symbol `{name}` is missing"),
        )
    })?;
    Ok(*s)
}

fn err_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl PluginBackend {
    pub fn load(config: &PluginConfig) -> FwResult<Self> {
        let path = config.path.clone();
        if !path.exists() {
            return Err(FirewallError::Missing {
                backend: "plugin",
                what: path.display().to_string(),
                hint: "check `path` of the plugin action".into(),
            });
        }
        // Loading runs the library's code with posternd's privileges.
        crate::config::trust::check(
            &path,
            "plugin library",
            crate::config::trust::Trust::Trusted,
        )
        .map_err(|e| plugin_error(&path, e.message))?;
        // SAFETY: loading the configured plugin is the point; symbols are
        // checked by name and the version is verified before any other call.
        unsafe {
            let lib = Library::new(&path)
                .map_err(|e| plugin_error(&path, format!("cannot load: {e}")))?;
            let version: VersionFn = symbol(&lib, &path, "postern_plugin_abi_version")?;
            let found = version();
            if found != POSTERN_PLUGIN_ABI_VERSION {
                return Err(plugin_error(
                    &path,
                    format!("plugin ABI version {found}, but this posternd speaks version {POSTERN_PLUGIN_ABI_VERSION}; rebuild the plugin"),
                ));
            }
            let init: InitFn = symbol(&lib, &path, "postern_plugin_init")?;
            let flags: FlagsFn = symbol(&lib, &path, "postern_plugin_flags")?;
            let (grant, revoke) = (
                symbol(&lib, &path, "postern_plugin_grant")?,
                symbol(&lib, &path, "postern_plugin_revoke")?,
            );
            let (list, flush) = (
                symbol(&lib, &path, "postern_plugin_list")?,
                symbol(&lib, &path, "postern_plugin_flush")?,
            );
            let shutdown: ShutdownFn = symbol(&lib, &path, "postern_plugin_shutdown")?;
            let cfg =
                CString::new(config.config.to_string()).map_err(|e| plugin_error(&path, e))?;
            let mut err = [0u8; ERR_LEN];
            let state = init(cfg.as_ptr(), err.as_mut_ptr() as *mut c_char, ERR_LEN);
            if state.is_null() {
                return Err(plugin_error(
                    &path,
                    format!("init failed: {}", err_text(&err)),
                ));
            }
            let flags = flags(state);
            Ok(PluginBackend {
                path,
                state,
                expires_itself: flags & EXPIRES_ITSELF != 0,
                matches_destination: flags & DESTINATION != 0,
                grant,
                revoke,
                list,
                flush,
                shutdown,
                _library: lib,
            })
        }
    }

    fn call_json(&mut self, f: JsonFn, json: String) -> FwResult<()> {
        let json = CString::new(json).map_err(|e| plugin_error(&self.path, e))?;
        let mut err = [0u8; ERR_LEN];
        // SAFETY: state is live; buffers are valid for the lengths given.
        let rc = unsafe {
            f(
                self.state,
                json.as_ptr(),
                err.as_mut_ptr() as *mut c_char,
                ERR_LEN,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(plugin_error(&self.path, err_text(&err)))
        }
    }
}

impl Firewall for PluginBackend {
    fn name(&self) -> &'static str {
        "plugin"
    }

    fn init(&mut self, _now: u64) -> FwResult<()> {
        Ok(())
    }

    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        let wire: Vec<WireOpening> = openings
            .iter()
            .map(|o| {
                if !self.matches_destination {
                    o.rule.refuse("plugin", &[RuleFeature::Destination])?;
                }
                if o.rule.nat.is_some() {
                    return Err(FirewallError::Unsupported {
                        backend: "plugin",
                        what: "NAT".into(),
                    });
                }
                Ok(WireOpening {
                    rule: (&o.rule).into(),
                    timeout_secs: o.timeout_secs,
                    expires_at: o.expires_at,
                })
            })
            .collect::<FwResult<_>>()?;
        let json = serde_json::to_string(&wire).expect("plain data");
        self.call_json(self.grant, json)
    }

    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        let wire: Vec<WireRule> = rules.iter().map(WireRule::from).collect();
        self.call_json(
            self.revoke,
            serde_json::to_string(&wire).expect("plain data"),
        )
    }

    fn list(&mut self) -> FwResult<Vec<Opening>> {
        let mut out = vec![0u8; 64 * 1024];
        loop {
            let mut err = [0u8; ERR_LEN];
            // SAFETY: state is live; buffers are valid for the lengths given.
            let rc = unsafe {
                (self.list)(
                    self.state,
                    out.as_mut_ptr() as *mut c_char,
                    out.len(),
                    err.as_mut_ptr() as *mut c_char,
                    ERR_LEN,
                )
            };
            match rc {
                0 => break,
                n if n < 0 && (n.unsigned_abs() as usize) > out.len() => {
                    out.resize(n.unsigned_abs() as usize, 0)
                }
                _ => return Err(plugin_error(&self.path, err_text(&err))),
            }
        }
        let text = err_text(&out);
        let wire: Vec<WireOpening> = serde_json::from_str(&text)
            .map_err(|e| plugin_error(&self.path, format!("list returned bad JSON: {e}")))?;
        wire.into_iter()
            .map(|w| {
                let proto: Proto = w
                    .rule
                    .proto
                    .parse()
                    .map_err(|e| plugin_error(&self.path, e))?;
                Ok(Opening {
                    rule: Rule {
                        destination: w.rule.destination,
                        ..Rule::new(w.rule.source, proto, w.rule.port)
                    },
                    timeout_secs: w.timeout_secs,
                    expires_at: w.expires_at,
                })
            })
            .collect()
    }

    fn flush(&mut self) -> FwResult<()> {
        let mut err = [0u8; ERR_LEN];
        // SAFETY: state is live; the buffer is valid for ERR_LEN bytes.
        match unsafe { (self.flush)(self.state, err.as_mut_ptr() as *mut c_char, ERR_LEN) } {
            0 => Ok(()),
            _ => Err(plugin_error(&self.path, err_text(&err))),
        }
    }

    fn expires_in_kernel(&self) -> bool {
        self.expires_itself
    }

    fn supports(&self, feature: RuleFeature) -> bool {
        feature == RuleFeature::Destination && self.matches_destination
    }
}

impl Drop for PluginBackend {
    fn drop(&mut self) {
        // SAFETY: called once; the state is not used afterwards.
        unsafe { (self.shutdown)(self.state) };
    }
}
