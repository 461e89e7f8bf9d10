//! The broker.toml parser and validator (`Config::parse`) on arbitrary text.
//!
//! Properties: no panic, no unbounded allocation (libFuzzer's -rss_limit_mb and
//! -malloc_limit_mb), and a proxy password never appears in an error (a typo on the
//! `proxy = "http://user:password@host"` line must not put the password in the log).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use therappai_broker::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(err) = Config::parse(text, Path::new("/etc/therappai-broker/broker.toml")) else {
        return;
    };
    let message = err.to_string();
    for password in proxy_passwords(text) {
        assert!(
            !message.contains(password),
            "a config error repeats the proxy password {password:?}: {message}"
        );
    }
});

/// The `password` of each `user:password@` on a line that sets `proxy`, when it is long
/// enough to be told apart and appears nowhere else in the text (then an error holding it
/// can only have copied it from the proxy line).
fn proxy_passwords(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.trim_start().starts_with("proxy"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("://")?;
            let (userinfo, _) = rest.split_once('@')?;
            // Past a quote or a space it is no longer one URL.
            if userinfo.contains(|c: char| matches!(c, '"' | '\'') || c.is_whitespace()) {
                return None;
            }
            let (_, password) = userinfo.split_once(':')?;
            Some(password)
        })
        .filter(|password| password.len() >= 8 && text.matches(*password).count() == 1)
        .collect()
}
