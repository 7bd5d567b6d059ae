//! An in-house postern action plugin, meant to be copied.
//!
//! It keeps the current grants in a JSON file (`{"path": "..."}` in the action's
//! config): one line per open grant. Replace the bodies of `grant` / `revoke` with
//! a webhook call, a call to your own firewall API, and so on.
//!
//! The ABI (version 1) is documented in spa-server's `plugin` module and in
//! `examples/postern_plugin.h`. Every function is `extern "C"`; strings are
//! NUL-terminated UTF-8; data crosses as JSON; errors are written into the
//! caller's buffer and signalled by a non-zero return value.

use serde::{Deserialize, Serialize};
use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;

/// Must match the host's `POSTERN_PLUGIN_ABI_VERSION`.
const ABI_VERSION: u32 = 1;

#[derive(Deserialize)]
struct Config {
    path: PathBuf,
}

/// One opening as postern sends it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
struct Opening {
    source: String,
    proto: String,
    port: u16,
    /// Only with ENABLE_DESTINATION_RULE (this plugin sets POSTERN_PLUGIN_DESTINATION).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    timeout_secs: u32,
    expires_at: u64,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Rule {
    source: String,
    proto: String,
    port: u16,
    #[serde(default)]
    destination: Option<String>,
}

struct State {
    path: PathBuf,
    open: Vec<Opening>,
}

impl State {
    fn save(&self) -> Result<(), String> {
        let lines: String = self
            .open
            .iter()
            .map(|o| serde_json::to_string(o).expect("plain data") + "\n")
            .collect();
        std::fs::write(&self.path, lines).map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

fn write_err(err: *mut c_char, len: usize, message: &str) {
    if err.is_null() || len == 0 {
        return;
    }
    let n = message.len().min(len - 1);
    // SAFETY: the host passes a writable buffer of `len` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(message.as_ptr(), err as *mut u8, n);
        *err.add(n) = 0;
    }
}

/// # Safety
/// `text` must be a valid NUL-terminated string.
unsafe fn text<'a>(text: *const c_char) -> Result<&'a str, String> {
    if text.is_null() {
        return Err("null string".into());
    }
    CStr::from_ptr(text).to_str().map_err(|e| e.to_string())
}

/// Runs `f` on the plugin state, turning errors (and panics) into a return code.
fn with_state(
    state: *mut c_void,
    err: *mut c_char,
    err_len: usize,
    f: impl FnOnce(&mut State) -> Result<(), String>,
) -> i32 {
    if state.is_null() {
        write_err(err, err_len, "plugin not initialised");
        return 1;
    }
    // SAFETY: `state` came from `postern_plugin_init` and is used by one thread.
    let state = unsafe { &mut *(state as *mut State) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(state))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            write_err(err, err_len, &e);
            1
        }
        Err(_) => {
            write_err(err, err_len, "plugin panicked");
            1
        }
    }
}

#[no_mangle]
pub extern "C" fn postern_plugin_abi_version() -> u32 {
    ABI_VERSION
}

/// Returns the plugin state, or null with the reason in `err`.
///
/// # Safety
/// `config_json` is a NUL-terminated string; `err` is writable for `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn postern_plugin_init(
    config_json: *const c_char,
    err: *mut c_char,
    err_len: usize,
) -> *mut c_void {
    let config: Result<Config, String> =
        text(config_json).and_then(|t| serde_json::from_str(t).map_err(|e| format!("config: {e}")));
    match config {
        Ok(c) => {
            let state = State {
                path: c.path,
                open: Vec::new(),
            };
            if let Err(e) = state.save() {
                write_err(err, err_len, &e);
                return std::ptr::null_mut();
            }
            Box::into_raw(Box::new(state)) as *mut c_void
        }
        Err(e) => {
            write_err(err, err_len, &e);
            std::ptr::null_mut()
        }
    }
}

/// Bit 0: the plugin's target expires grants by itself (postern then never calls
/// revoke for expiry). Bit 1: it honours a rule's `destination` (here: keeps it).
#[no_mangle]
pub extern "C" fn postern_plugin_flags(_state: *mut c_void) -> u32 {
    2
}

/// # Safety
/// `openings_json` is a NUL-terminated JSON array of openings.
#[no_mangle]
pub unsafe extern "C" fn postern_plugin_grant(
    state: *mut c_void,
    openings_json: *const c_char,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    with_state(state, err, err_len, |s| {
        let new: Vec<Opening> =
            serde_json::from_str(text(openings_json)?).map_err(|e| e.to_string())?;
        for o in new {
            s.open.retain(|x| {
                (&x.source, &x.proto, x.port, &x.destination)
                    != (&o.source, &o.proto, o.port, &o.destination)
            });
            s.open.push(o);
        }
        s.save()
    })
}

/// # Safety
/// `rules_json` is a NUL-terminated JSON array of rules.
#[no_mangle]
pub unsafe extern "C" fn postern_plugin_revoke(
    state: *mut c_void,
    rules_json: *const c_char,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    with_state(state, err, err_len, |s| {
        let gone: Vec<Rule> = serde_json::from_str(text(rules_json)?).map_err(|e| e.to_string())?;
        s.open.retain(|o| {
            !gone.iter().any(|r| {
                (&r.source, &r.proto, r.port, &r.destination)
                    == (&o.source, &o.proto, o.port, &o.destination)
            })
        });
        s.save()
    })
}

/// Writes the JSON array of current openings into `out` (NUL-terminated).
/// Returns 0, 1 on error, or -N when `out` is too small and N bytes are needed.
///
/// # Safety
/// `out` is writable for `out_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn postern_plugin_list(
    state: *mut c_void,
    out: *mut c_char,
    out_len: usize,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    let mut needed = 0usize;
    let rc = with_state(state, err, err_len, |s| {
        let json = serde_json::to_string(&s.open).map_err(|e| e.to_string())?;
        if json.len() + 1 > out_len {
            needed = json.len() + 1;
            return Ok(());
        }
        std::ptr::copy_nonoverlapping(json.as_ptr(), out as *mut u8, json.len());
        *out.add(json.len()) = 0;
        Ok(())
    });
    if rc == 0 && needed > 0 {
        -(needed as i32)
    } else {
        rc
    }
}

/// # Safety
/// See `postern_plugin_grant`.
#[no_mangle]
pub unsafe extern "C" fn postern_plugin_flush(
    state: *mut c_void,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    with_state(state, err, err_len, |s| {
        s.open.clear();
        s.save()
    })
}

/// Frees the state. postern calls it once, last.
///
/// # Safety
/// `state` came from `postern_plugin_init` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn postern_plugin_shutdown(state: *mut c_void) {
    if !state.is_null() {
        drop(Box::from_raw(state as *mut State));
    }
}
