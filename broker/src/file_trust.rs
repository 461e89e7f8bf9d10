//! The config file is policy: whoever can write it (or the CA file it names) decides who gets
//! tokens and which server is therappai. So the broker refuses to start, and refuses a
//! reload, when such a file could be changed by anyone but the broker's own user and root.
//!
//! Checked: the file itself (owner, group- and world-write bits) and every directory above it
//! (a writable directory lets someone rename the file away and put their own in its place),
//! except a directory with the sticky bit (`/tmp`), where others cannot rename what is not
//! theirs. Read access is not checked here: a group-readable config (root:therappai-broker
//! 0640, as the package ships it) is fine. POSIX ACLs are not read.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Why `path` (`what`, e.g. "config file") cannot be trusted, with the command that fixes it;
/// `Ok` when only root and the broker's user can change it. A file that cannot be read at all
/// is not an error here: reading it reports that.
pub fn check(what: &str, path: &Path) -> Result<(), String> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let shown = path.display();
    if let Some(problem) = problem(&meta, euid, false) {
        return Err(format!(
            "{what} {shown} {problem}: whoever can write it decides who gets tokens. Fix it with `{}`, then start (or reload) the broker again",
            problem.fix(path)
        ));
    }
    for dir in directories_above(path) {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if let Some(problem) = problem(&meta, euid, true) {
            return Err(format!(
                "the directory {} holding {what} {shown} {problem}: whoever can write it can replace the file. Fix it with `{}`, then start (or reload) the broker again",
                dir.display(),
                problem.fix(&dir)
            ));
        }
    }
    Ok(())
}

/// What is wrong with one file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    /// Owned by a uid that is neither root nor the broker's.
    Owner { uid: u32, euid: u32 },
    /// Group- and/or world-writable (the mode's 0o022 bits).
    Writable { mode: u32, gid: u32 },
}

impl Problem {
    /// The exact command that fixes it.
    fn fix(self, path: &Path) -> String {
        match self {
            Self::Owner { .. } => format!("chown root {}", path.display()),
            Self::Writable { mode, .. } => {
                let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                    (true, true) => "go",
                    (true, false) => "g",
                    _ => "o",
                };
                format!("chmod {who}-w {}", path.display())
            }
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Owner { uid, euid } => write!(
                f,
                "is owned by uid {uid}, which is neither root nor the broker's own user (uid {euid})"
            ),
            Self::Writable { mode, gid } => {
                let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                    (true, true) => format!("its group (gid {gid}) and by every user"),
                    (true, false) => format!("its group (gid {gid})"),
                    _ => "every user".to_owned(),
                };
                write!(f, "is writable by {who} (mode {:04o})", mode & 0o7777)
            }
        }
    }
}

fn problem(meta: &std::fs::Metadata, euid: u32, is_dir: bool) -> Option<Problem> {
    let uid = meta.uid();
    if uid != 0 && uid != euid {
        return Some(Problem::Owner { uid, euid });
    }
    let mode = meta.mode();
    // Sticky: others may add entries but not rename or remove ours.
    let sticky = is_dir && mode & 0o1000 != 0;
    (mode & 0o022 != 0 && !sticky).then_some(Problem::Writable {
        mode,
        gid: meta.gid(),
    })
}

/// Every directory above `path`, as written and after resolving symlinks (both can be used to
/// swap the file), nearest first, without duplicates.
fn directories_above(path: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let written = std::path::absolute(path).ok();
    let resolved = std::fs::canonicalize(path).ok();
    for start in [written, resolved].into_iter().flatten() {
        for dir in start.ancestors().skip(1) {
            if !dir.as_os_str().is_empty() && !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_owned());
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn group_or_world_write_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("broker.toml");
        std::fs::write(&file, "").expect("write");
        chmod(&file, 0o640);
        assert_eq!(check("config file", &file), Ok(()));
        chmod(&file, 0o660);
        let message = check("config file", &file).expect_err("group-writable");
        assert!(
            message.contains(&format!("`chmod g-w {}`", file.display())),
            "{message}"
        );
        chmod(&file, 0o646);
        let message = check("config file", &file).expect_err("world-writable");
        assert!(message.contains("every user (mode 0646)"), "{message}");
        assert!(message.contains("`chmod o-w "), "{message}");
        chmod(&file, 0o600);
        chmod(dir.path(), 0o777);
        let message = check("config file", &file).expect_err("directory");
        assert!(
            message.contains(&format!("`chmod go-w {}`", dir.path().display())),
            "{message}"
        );
        chmod(dir.path(), 0o1777);
        assert_eq!(check("config file", &file), Ok(()), "sticky is fine");
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn a_missing_file_is_left_to_the_reader() {
        assert_eq!(
            check("config file", Path::new("/nonexistent/x.toml")),
            Ok(())
        );
    }
}
