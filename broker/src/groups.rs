//! Group names in the config → gids, resolved once when the config is loaded.
//!
//! Uses libc's `getgrnam_r`, so groups from NSS sources (LDAP, sssd, systemd-userdb) work as
//! well as `/etc/group`. A group created or renumbered later takes effect on the next reload
//! (SIGHUP), not before: rules compare gids, never names, at call time.

use std::ffi::CString;

/// The gid of group `name`, or a sentence saying what to do.
pub fn gid_of(name: &str) -> Result<u32, String> {
    let c_name = CString::new(name).map_err(|_| format!("group name \"{name}\" contains a NUL"))?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: all-zero bytes are a valid `group` (null pointers, zero gid); it is only
        // read after getgrnam_r reports success.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `c_name` is NUL-terminated, `group` and
        // `result` are writable, `buf` is writable for `buf.len()` bytes and outlives the
        // only use of the strings it receives (none: we read just the gid).
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => {
                return Err(format!(
                    "group \"{name}\" does not exist on this system; create it (`groupadd {name}`) or fix the name"
                ));
            }
            0 => return Ok(group.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            errno => {
                return Err(format!(
                    "cannot look up group \"{name}\": {}",
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_group_is_gid_zero_and_missing_groups_say_so() {
        assert_eq!(gid_of("root"), Ok(0));
        let err = gid_of("therappai-no-such-group").unwrap_err();
        assert!(err.contains("groupadd"), "{err}");
    }
}
