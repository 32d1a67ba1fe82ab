//! fsx (the classic file-system exerciser, Rust port `cargo install fsx`) against a real mount:
//! a few thousand random reads, writes, truncates and mapped I/O on one file, every read
//! checked against fsx's own model of the file.

mod common;

use common::{Mount, require_tool};

#[test]
fn fsx_random_operations_verify() {
    require_tool("fsx");
    let m = Mount::new();
    let artifacts = common::tempdir();
    for seed in ["42", "7"] {
        let out = std::process::Command::new("fsx")
            .args(["-N", "2000", "-S", seed, "-P"])
            .arg(artifacts.path())
            .arg(m.path(&format!("fsx-{seed}")))
            .output()
            .expect("running fsx");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("All operations completed A-OK"),
            "fsx seed {seed} failed:\n{text}\n--- dosfs log ---\n{}",
            m.log()
        );
    }
}
