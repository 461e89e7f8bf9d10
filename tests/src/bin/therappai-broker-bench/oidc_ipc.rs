//! `therappai-broker-bench oidc-ipc ACCOUNT CALLS`: oidc-agent's IPC latency for a cached token,
//! without a process start per call. It loads oidc-agent's own client library (liboidc-agent4,
//! which `oidc-token` links) and times `getAccessToken3`, which opens the socket in
//! `$OIDC_SOCK`, does the library's key exchange and one encrypted request per call: that is
//! the library's only way to ask. Runs as a child so that `OIDC_SOCK` is set before the library
//! reads it, never in the benchmark's multi-threaded process. Prints the percentiles as JSON.

use crate::load::Percentiles;
use std::ffi::{CStr, c_char, c_void};
use std::time::Instant;

type GetAccessToken3 = unsafe extern "C" fn(
    account: *const c_char,
    min_valid_period: libc::time_t,
    scope: *const c_char,
    application_hint: *const c_char,
    audience: *const c_char,
) -> *mut c_char;
type SecFree = unsafe extern "C" fn(*mut c_void);

const LIBRARY: &CStr = c"liboidc-agent.so.4";

pub fn main(account: &str, calls: &str) -> anyhow::Result<()> {
    let calls: usize = calls.parse()?;
    let account = std::ffi::CString::new(account)?;
    // SAFETY: dlopen and dlsym take NUL-terminated names; the symbols have the C signatures
    // declared in oidc-agent 4's api/tokens.h and api/memory.h, as typed above.
    let (get, free) = unsafe {
        let library = libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW);
        anyhow::ensure!(
            !library.is_null(),
            "cannot load {LIBRARY:?} (Debian package liboidc-agent4, a dependency of oidc-agent-cli)"
        );
        let get = libc::dlsym(library, c"getAccessToken3".as_ptr());
        let free = libc::dlsym(library, c"_secFree".as_ptr());
        anyhow::ensure!(
            !get.is_null() && !free.is_null(),
            "{LIBRARY:?} lacks the 4.x API"
        );
        (
            std::mem::transmute::<*mut c_void, GetAccessToken3>(get),
            std::mem::transmute::<*mut c_void, SecFree>(free),
        )
    };
    let hint = c"therappai-broker-bench";
    let one = || -> anyhow::Result<std::time::Duration> {
        let started = Instant::now();
        // SAFETY: valid C strings or NULL, as the API allows for scope and audience.
        let token = unsafe {
            get(
                account.as_ptr(),
                0,
                std::ptr::null(),
                hint.as_ptr(),
                std::ptr::null(),
            )
        };
        let elapsed = started.elapsed();
        anyhow::ensure!(
            !token.is_null(),
            "oidc-agent returned no token (is OIDC_SOCK set?)"
        );
        // SAFETY: a non-NULL result is a NUL-terminated string the library allocated; it is
        // read once, then freed with the library's own free, as its API asks.
        let empty = unsafe { CStr::from_ptr(token) }.is_empty();
        unsafe { free(token.cast()) };
        anyhow::ensure!(!empty, "oidc-agent returned an empty token");
        Ok(elapsed)
    };
    for _ in 0..calls.min(100) {
        one()?;
    }
    let mut samples = (0..calls)
        .map(|_| one())
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!("{}", serde_json::to_string(&Percentiles::of(&mut samples))?);
    Ok(())
}
