//! The data directory's exclusive lock: one Stead process per directory.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use stead_store::{Error, Result};

/// Holds `flock(LOCK_EX)` on `<dir>/LOCK` until dropped (closing the file releases it, and
/// the kernel releases it if the process dies, so a crash never leaves a stale lock).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::Backend(format!("cannot open lock file {}: {e}", path.display())))?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open for this call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Error::Busy(format!("data directory {} is in use by another stead process", dir.display()))
            } else {
                Error::Backend(format!("cannot lock {}: {err}", path.display()))
            });
        }
        Ok(Self { _file: file })
    }
}
