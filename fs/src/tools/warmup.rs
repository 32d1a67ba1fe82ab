//! `dosfs warmup PATH...`: reads every regular file under the paths through the mount, so
//! that their blocks are in the dosfs cache (memory tier and disk) for the next reader.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a warmup did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        format!(
            "warmed {} files, {} ({} bytes) in {:.2} s ({:.1} MiB/s), {} errors",
            self.files,
            super::size(self.bytes),
            self.bytes,
            secs,
            self.bytes as f64 / (1u64 << 20) as f64 / secs.max(1e-6),
            self.errors
        )
    }
}

/// The regular files under `root` (itself if it is one), with their sizes; symbolic links
/// are not followed. Paths that cannot be listed go to `failed`.
pub(crate) fn walk(
    root: &Path,
    files: &mut Vec<(PathBuf, u64)>,
    failed: &mut Vec<(PathBuf, String)>,
) {
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) => return failed.push((root.to_path_buf(), e.to_string())),
    };
    if meta.is_file() {
        files.push((root.to_path_buf(), meta.len()));
    } else if meta.is_dir() {
        // `.dosfs` holds the virtual tree (history, moments): nothing to warm.
        if root.file_name().is_some_and(|n| n == ".dosfs") {
            return;
        }
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) => return failed.push((root.to_path_buf(), e.to_string())),
        };
        let mut children: Vec<PathBuf> = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => children.push(e.path()),
                Err(e) => failed.push((root.to_path_buf(), e.to_string())),
            }
        }
        children.sort();
        for child in children {
            walk(&child, files, failed);
        }
    }
}

/// Reads `path` to its end; the bytes read.
fn read_all(path: &Path, buf: &mut [u8], progress: &dyn Fn(u64)) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut total = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                total += n as u64;
                progress(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Warms every file under `paths`. `bar`: show a progress bar on stderr (a terminal);
/// otherwise a plain line per path. A file that cannot be read is reported and counted.
pub fn run(paths: &[PathBuf], bar: bool) -> Summary {
    let started = Instant::now();
    let mut files = Vec::new();
    let mut failed = Vec::new();
    for p in paths {
        walk(p, &mut files, &mut failed);
    }
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    let mut summary = Summary::default();
    for (p, e) in &failed {
        eprintln!("dosfs: warmup: {}: {e}", p.display());
        summary.errors += 1;
    }
    if !bar {
        eprintln!(
            "dosfs: warmup: {} files, {} to read",
            files.len(),
            super::size(total)
        );
    }
    let pb = super::bytes_bar(total, bar);
    let mut buf = vec![0u8; 1 << 20];
    let count = files.len();
    for (i, (path, _)) in files.iter().enumerate() {
        pb.set_message(format!("{}/{count} files", i + 1));
        match read_all(path, &mut buf, &|n| pb.inc(n)) {
            Ok(n) => {
                summary.files += 1;
                summary.bytes += n;
            }
            Err(e) => {
                summary.errors += 1;
                pb.suspend(|| eprintln!("dosfs: warmup: {}: {e}", path.display()));
            }
        }
    }
    pb.finish_and_clear();
    summary.elapsed = started.elapsed();
    summary
}
