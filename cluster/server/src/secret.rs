//! Private files: the cluster secret (signs resumable-upload tokens and internal requests) and
//! the embedded store's bearer token. Both are created on first use, random, written 0600
//! atomically; a file that others may read, or a secret too short to resist guessing, is
//! refused with a message that says what to do.

use std::io;
use std::path::Path;

/// The fewest bytes a secret may have.
pub const MIN_SECRET_BYTES: usize = 16;

/// Reads the hex secret at `path`, creating a random one (mode 0600) on first use. Refused
/// when the file is readable by other users or holds fewer than [`MIN_SECRET_BYTES`].
pub fn load_or_create(path: &Path) -> io::Result<Vec<u8>> {
    parse_hex(&load_or_create_private(path, "secret")?)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// Reads the hex secret at `path`, which must exist (a data server's `--secret-file`).
pub fn load_existing(path: &Path) -> io::Result<Vec<u8>> {
    parse_hex(&read_private(path)?).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// A secret in hex, at least [`MIN_SECRET_BYTES`] long.
pub fn parse_hex(hex_secret: &str) -> io::Result<Vec<u8>> {
    let secret = hex::decode(hex_secret.trim()).map_err(|_| {
        invalid("not a hex secret (64 hex digits, as `openssl rand -hex 32` prints)".into())
    })?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(invalid(format!(
            "{} bytes; a secret needs at least {MIN_SECRET_BYTES} (`openssl rand -hex 32`)",
            secret.len()
        )));
    }
    Ok(secret)
}

/// Reads the bearer token at `path`, creating a random one (mode 0600) on first use. Refused
/// when the file is readable by other users or empty.
pub fn load_or_create_token(path: &Path) -> io::Result<String> {
    let token = load_or_create_private(path, "token")?.trim().to_string();
    if token.len() < MIN_SECRET_BYTES {
        return Err(invalid(format!(
            "{} holds a token of {} characters; at least {MIN_SECRET_BYTES} are needed",
            path.display(),
            token.len()
        )));
    }
    Ok(token)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The contents of the private file at `path`, or 32 random bytes in hex written there.
fn load_or_create_private(path: &Path, what: &str) -> io::Result<String> {
    match read_private(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let value = hex::encode(rand::random::<[u8; 32]>());
            let tmp = path.with_extension("tmp");
            write_private(&tmp, value.as_bytes())?;
            std::fs::rename(&tmp, path)?;
            tracing::info!(path = %path.display(), "created a new {what}");
            Ok(value)
        }
        Err(e) => Err(e),
    }
}

/// Reads a file that must be private to its owner (not following a symlink).
#[cfg(unix)]
pub fn read_private(path: &Path) -> io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} may be read by other users (mode {:03o}); make it private: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            ),
        ));
    }
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(not(unix))]
pub fn read_private(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::write(path, bytes)
}

/// Creates `dir` (and its parents) and makes it private to its owner (0700): shards,
/// metadata, cache and staging files live there.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_and_tokens_are_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        let s = load_or_create(&p).unwrap();
        assert_eq!(s.len(), 32);
        assert_eq!(load_or_create(&p).unwrap(), s);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");

        let short = dir.path().join("short");
        write_private(&short, b"abcd").unwrap();
        let e = load_or_create(&short).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");

        let t = dir.path().join("token");
        let token = load_or_create_token(&t).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create_token(&t).unwrap(), token);

        // A symlink planted where the file goes is not followed.
        let target = dir.path().join("elsewhere");
        write_private(&target, hex::encode([7u8; 32]).as_bytes()).unwrap();
        assert!(load_or_create(&target).is_ok());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(load_or_create(&link).is_err());
    }
}
