//! The process itself, as PgBouncer's command line shapes it: running detached (`-d`), the pidfile,
//! and switching to another user (`-u`) when started as root.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("pidfile {0} names a running process (pid {1}): is pgsluice running already?")]
    Running(PathBuf, u32),
    #[error("cannot write pidfile {0}: {1}")]
    Pidfile(PathBuf, std::io::Error),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("-u {0} needs root to switch user")]
    NotRoot(String),
    #[error("cannot switch to user {0}: {1}")]
    Switch(String, std::io::Error),
    #[error("cannot start in the background: {0}")]
    Detach(std::io::Error),
    #[error("the background process exited at once ({0}); see the logfile")]
    DetachedExited(std::process::ExitStatus),
}

/// The pid in `path`, if that process is alive.
fn live_pid(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Writes this process's pid to `path`, unless a live process holds it; removed when dropped.
#[derive(Debug)]
pub struct Pidfile(PathBuf);

impl Pidfile {
    pub fn create(path: &Path) -> Result<Self, ProcessError> {
        if let Some(pid) = live_pid(path).filter(|&p| p != std::process::id()) {
            return Err(ProcessError::Running(path.to_owned(), pid));
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| ProcessError::Pidfile(path.to_owned(), e))?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The uid and gid of `name`, from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Becomes `name` (its uid, its gid as the only group), as PgBouncer's `-u`. Called while the process
/// has one thread: rustix sets the calling thread's ids, and every thread made later inherits them.
pub fn switch_user(name: &str) -> Result<(), ProcessError> {
    use rustix::process::{Gid, Uid};
    let (uid, gid) = lookup_user(name).ok_or_else(|| ProcessError::NoSuchUser(name.to_owned()))?;
    let me = rustix::process::geteuid().as_raw();
    if me == uid {
        return Ok(());
    }
    if me != 0 {
        return Err(ProcessError::NotRoot(name.to_owned()));
    }
    let fail = |e: rustix::io::Errno| ProcessError::Switch(name.to_owned(), e.into());
    // Group first: once the uid is dropped, the gid can no longer be changed.
    let gid = Gid::from_raw(gid);
    rustix::thread::set_thread_groups(&[gid]).map_err(fail)?;
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(fail)?;
    let uid = Uid::from_raw(uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(fail)
}

/// PgBouncer's `-d`: starts this program again, in a process group of its own, without a terminal
/// and with `args` (the command line without `-d`, plus the marker of a detached run), and returns
/// once it has survived its start. A fork would be the C way; a fresh exec needs no unsafe code.
pub fn detach(args: Vec<OsString>) -> Result<(), ProcessError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(ProcessError::Detach)?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(ProcessError::Detach)?;
    // A configuration that loads but cannot listen (port taken) shows within moments.
    std::thread::sleep(Duration::from_millis(300));
    match child.try_wait().map_err(ProcessError::Detach)? {
        Some(status) if !status.success() => Err(ProcessError::DetachedExited(status)),
        _ => Ok(()),
    }
}

/// The command line without `-d`/`--daemon` (also inside a cluster of short flags such as `-dq`).
pub fn without_daemon_flag(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    args.filter_map(|a| {
        let s = a.to_string_lossy();
        if s == "-d" || s == "--daemon" {
            return None;
        }
        let short_cluster = s.len() > 2
            && s.starts_with('-')
            && !s.starts_with("--")
            && s[1..].chars().all(|c| "dqvR".contains(c));
        if short_cluster && s.contains('d') {
            return Some(OsString::from(s.replace('d', "")));
        }
        Some(a)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_flag_goes_wherever_it_stands() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            without_daemon_flag(args(&["-d", "a.ini"]).into_iter()),
            args(&["a.ini"])
        );
        assert_eq!(
            without_daemon_flag(args(&["-dqv", "--daemon", "a.ini"]).into_iter()),
            args(&["-qv", "a.ini"])
        );
        // A file name with a d in it is not a flag.
        assert_eq!(
            without_daemon_flag(args(&["-q", "dd.ini"]).into_iter()),
            args(&["-q", "dd.ini"])
        );
    }

    #[test]
    fn a_pidfile_of_a_live_process_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pid");
        // pid 1 is always alive.
        std::fs::write(&path, "1\n").unwrap();
        assert!(matches!(
            Pidfile::create(&path),
            Err(ProcessError::Running(_, 1))
        ));
        std::fs::write(&path, "999999999\n").unwrap();
        let p = Pidfile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(p);
        assert!(!path.exists(), "removed at exit");
    }
}
