//! Examples and benchmarks live under `examples/`; see the README there. What several of them
//! share is here.

use std::process::{Child, Command};

/// A server process the example started: stopped with SIGTERM (by its PID) and waited for
/// when dropped, also when the example fails.
pub struct Server(pub Child);

impl Server {
    /// SIGTERM, then wait for the process to end (a clean shutdown).
    pub fn stop(mut self) -> std::io::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> std::io::Result<()> {
        if matches!(self.0.try_wait(), Ok(None)) {
            Command::new("kill").arg(self.0.id().to_string()).status()?;
        }
        self.0.wait().map(drop)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}
