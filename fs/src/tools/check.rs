//! `dosfs check PATH...`: verifies the stored content of every regular file under the paths
//! in full and repairs what is bad. Each file is asked through the mount, by reading its
//! `user.dosfs.check` extended attribute: the daemon has the store read every shard whole
//! (each data server checks every checksum), rebuild missing, corrupt or unreachable ones,
//! decode the object and compare its SHA-256 with its hash; the answer is the report.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dos_protocol::CheckReport;

use crate::core::CHECK_XATTR;

/// What became of one file.
#[derive(Debug)]
pub enum Outcome {
    Checked(CheckReport),
    /// No content in the store yet (a new file whose upload is pending).
    NotStored,
    Failed(String),
}

/// What a check did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub healthy: u64,
    /// Files that had bad shards, all rebuilt.
    pub repaired: u64,
    pub shards_rebuilt: u64,
    /// Files still not whole: unreadable, a hash mismatch, or shards no server could take.
    pub bad: u64,
    pub not_stored: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn line(&self) -> String {
        format!(
            "checked {} files, {} in {:.2} s: {} healthy, {} repaired ({} shards rebuilt), {} bad, {} not uploaded yet, {} errors",
            self.files,
            super::size(self.bytes),
            self.elapsed.as_secs_f64(),
            self.healthy,
            self.repaired,
            self.shards_rebuilt,
            self.bad,
            self.not_stored,
            self.errors
        )
    }

    /// Something is wrong that the check could not mend.
    pub fn failed(&self) -> bool {
        self.bad > 0 || self.errors > 0
    }

    fn add(&mut self, outcome: &Outcome) {
        self.files += 1;
        match outcome {
            Outcome::Checked(r) => {
                self.bytes += r.size;
                self.shards_rebuilt += r.shards_rebuilt.len() as u64;
                if !r.is_healthy() {
                    self.bad += 1;
                } else if r.shards_rebuilt.is_empty() {
                    self.healthy += 1;
                } else {
                    self.repaired += 1;
                }
            }
            Outcome::NotStored => self.not_stored += 1,
            Outcome::Failed(_) => self.errors += 1,
        }
    }
}

/// One line about a file that was not simply healthy; `None` when it was.
pub fn describe(path: &Path, outcome: &Outcome) -> Option<String> {
    let p = path.display();
    match outcome {
        Outcome::Checked(r) if r.unreadable => Some(format!(
            "BAD       {p}: unreadable now, {} of 6 shards verified (4 needed)",
            r.shards_verified
        )),
        Outcome::Checked(r) if !r.sha256_ok => Some(format!(
            "BAD       {p}: the decoded bytes do not match the SHA-256"
        )),
        Outcome::Checked(r) if r.shards_postponed > 0 => Some(format!(
            "BAD       {p}: {} shards bad and no live server can take them now ({} rebuilt)",
            r.shards_postponed,
            r.shards_rebuilt.len()
        )),
        Outcome::Checked(r) if !r.shards_rebuilt.is_empty() => Some(format!(
            "repaired  {p}: shards {:?} rebuilt ({} of 6 were healthy)",
            r.shards_rebuilt, r.shards_verified
        )),
        Outcome::Checked(_) => None,
        Outcome::NotStored => Some(format!("pending   {p}: not in the store yet, not checked")),
        Outcome::Failed(e) => Some(format!("error     {p}: {e}")),
    }
}

/// Checks one file through the mount.
pub fn check_file(path: &Path) -> Outcome {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::getxattr(path, CHECK_XATTR, &mut buf[..]) {
        Ok(n) => match serde_json::from_slice::<CheckReport>(&buf[..n]) {
            Ok(r) => Outcome::Checked(r),
            Err(e) => Outcome::Failed(format!("the daemon's report is not understood: {e}")),
        },
        Err(rustix::io::Errno::NODATA) => Outcome::NotStored,
        Err(rustix::io::Errno::NOTSUP) => {
            Outcome::Failed("not on a dosfs mount (no check attribute)".into())
        }
        Err(e) => Outcome::Failed(std::io::Error::from(e).to_string()),
    }
}

/// Checks every file under `paths`, printing a line for each file that was repaired, is
/// bad or could not be checked. `bar`: a progress bar on stderr (a terminal); otherwise a
/// plain line at the start.
pub fn run(paths: &[PathBuf], bar: bool, print: &mut dyn FnMut(&str)) -> Summary {
    let started = Instant::now();
    let mut files = Vec::new();
    let mut failed = Vec::new();
    for p in paths {
        super::warmup::walk(p, &mut files, &mut failed);
    }
    let mut summary = Summary::default();
    for (p, e) in &failed {
        print(&format!("error     {}: {e}", p.display()));
        summary.errors += 1;
    }
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    if !bar {
        eprintln!(
            "dosfs: check: {} files, {} to verify",
            files.len(),
            super::size(total)
        );
    }
    let pb = super::bytes_bar(total, bar);
    let count = files.len();
    for (i, (path, size)) in files.iter().enumerate() {
        pb.set_message(format!("{}/{count} files", i + 1));
        let outcome = check_file(path);
        summary.add(&outcome);
        if let Some(line) = describe(path, &outcome) {
            pb.suspend(|| print(&line));
        }
        pb.inc(*size);
    }
    pb.finish_and_clear();
    summary.elapsed = started.elapsed();
    summary
}
