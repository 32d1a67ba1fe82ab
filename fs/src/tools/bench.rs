//! `dosfs bench [PATH]`: a short benchmark in a fresh folder under PATH: one big file
//! written sequentially (with fsync) and read back, small files created and written,
//! stat'ed and removed. Everything it made is removed, also when a step fails.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Bytes of each small file.
pub const SMALL_SIZE: usize = 4096;

/// One measured step.
pub struct Step {
    pub operation: &'static str,
    /// What it did: `64 MiB`, `100 files`.
    pub amount: String,
    pub time: Duration,
    /// Its rate: `52.1 MiB/s`, `830 files/s`.
    pub rate: String,
}

/// The folder of one run: removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("dosfs: bench: removing {}: {e}", self.0.display());
        }
    }
}

fn per_sec(n: f64, t: Duration) -> f64 {
    n / t.as_secs_f64().max(1e-9)
}

fn files_step(operation: &'static str, n: usize, time: Duration) -> Step {
    Step {
        operation,
        amount: format!("{n} files"),
        time,
        rate: format!("{:.0} files/s", per_sec(n as f64, time)),
    }
}

/// Runs the benchmark under `dir`: `big` bytes in the big file, `small` small files.
pub fn run(dir: &Path, big: u64, small: usize) -> anyhow::Result<Vec<Step>> {
    let meta = std::fs::metadata(dir).with_context(|| dir.display().to_string())?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a folder", dir.display());
    }
    let name = format!(
        ".dosfs-bench-{}-{}",
        std::process::id(),
        dos_protocol::now_ns()
    );
    let root = dir.join(name);
    std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    let scratch = Scratch(root);
    let root = &scratch.0;
    let mut steps = Vec::new();

    // The big file: 1 MiB writes of varied bytes (not zeros, which some layers skip).
    let big_path = root.join("big.bin");
    let mut chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&big_path)
            .with_context(|| format!("creating {}", big_path.display()))?;
        let mut left = big;
        let mut i = 0u8;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            chunk[0] = i;
            i = i.wrapping_add(1);
            f.write_all(&chunk[..n])
                .with_context(|| format!("writing {}", big_path.display()))?;
            left -= n as u64;
        }
        f.sync_all()
            .with_context(|| format!("fsync of {}", big_path.display()))?;
    }
    let time = t.elapsed();
    steps.push(Step {
        operation: "big file write + fsync",
        amount: super::size(big),
        time,
        rate: format!("{}/s", super::mib(per_sec(big as f64, time))),
    });

    let t = Instant::now();
    let mut read = 0u64;
    {
        let mut f = std::fs::File::open(&big_path)
            .with_context(|| format!("opening {}", big_path.display()))?;
        loop {
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => read += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", big_path.display())),
            }
        }
    }
    let time = t.elapsed();
    if read != big {
        anyhow::bail!(
            "read {read} bytes of {big} back from {}",
            big_path.display()
        );
    }
    steps.push(Step {
        operation: "big file read",
        amount: super::size(big),
        time,
        rate: format!("{}/s", super::mib(per_sec(big as f64, time))),
    });

    let small_dir = root.join("small");
    std::fs::create_dir(&small_dir).with_context(|| format!("creating {}", small_dir.display()))?;
    let paths: Vec<PathBuf> = (0..small)
        .map(|i| small_dir.join(format!("f{i:06}")))
        .collect();
    let t = Instant::now();
    for p in &paths {
        std::fs::write(p, &chunk[..SMALL_SIZE])
            .with_context(|| format!("writing {}", p.display()))?;
    }
    steps.push(files_step("small file create + write", small, t.elapsed()));

    let t = Instant::now();
    for p in &paths {
        std::fs::metadata(p).with_context(|| format!("stat of {}", p.display()))?;
    }
    steps.push(files_step("small file stat", small, t.elapsed()));

    let t = Instant::now();
    for p in &paths {
        std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
    }
    steps.push(files_step("small file remove", small, t.elapsed()));
    std::fs::remove_file(&big_path).with_context(|| format!("removing {}", big_path.display()))?;
    drop(scratch);
    Ok(steps)
}

/// The steps as a table.
pub fn table(steps: &[Step]) -> String {
    let mut s = format!(
        "{:<26} {:>12} {:>10} {:>14}\n",
        "OPERATION", "AMOUNT", "TIME", "RATE"
    );
    for st in steps {
        s += &format!(
            "{:<26} {:>12} {:>10} {:>14}\n",
            st.operation,
            st.amount,
            format!("{:.3} s", st.time.as_secs_f64()),
            st.rate
        );
    }
    s
}
