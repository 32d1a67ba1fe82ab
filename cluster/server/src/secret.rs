//! The cluster secret: signs resumable-upload tokens (and internal requests).

use std::io;
use std::path::Path;

/// Reads the hex secret at `path`, creating a random one (mode 0600) on first use.
pub fn load_or_create(path: &Path) -> io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(s) => hex::decode(s.trim()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a hex secret", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            let tmp = path.with_extension("tmp");
            write_private(&tmp, hex::encode(secret).as_bytes())?;
            std::fs::rename(&tmp, path)?;
            Ok(secret.to_vec())
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::write(path, bytes)
}
