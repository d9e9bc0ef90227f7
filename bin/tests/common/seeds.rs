//! The seeds' own sample clients (`bin/tests/clients/`), run as written: each prints one
//! JSON line per event on stdout and stops by itself; a test reads the lines.

use super::*;

/// Path of a client script in `bin/tests/clients/`.
pub fn seed_client(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// A seed client running in the background (Python 3 with `websockets`, as `.ci/run`
/// installs it). Killed by its own pid on drop if it has not exited.
pub struct SeedClient {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl SeedClient {
    /// Starts `python3 bin/tests/clients/<script> <args…>`.
    ///
    /// Give a value that may start with `-` in one argument, `--flag=value`: client ids and
    /// secrets are base64url, one in 64 starts with `-`, and argparse takes a separate
    /// `-…` argument for an option (exit status 2, no event at all).
    pub fn start(script: &str, args: &[&str]) -> SeedClient {
        let mut child = Command::new("python3")
            .arg(seed_client(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 {script} (install Python 3 and websockets==17.4, as .ci/run does): {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        SeedClient {
            child,
            lines,
            what: script.to_owned(),
        }
    }

    /// The next event line, within `limit`.
    pub fn next_event(&mut self, limit: Duration) -> Value {
        let line = self
            .lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("{}: no event within {limit:?} ({e})", self.what));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: not a JSON event line ({e}): {line}", self.what))
    }

    /// Every event until the client exits (at most `limit`), and its exit status.
    pub fn finish(mut self, limit: Duration) -> (Vec<Value>, ExitStatus) {
        let deadline = Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => events.push(serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("{}: not a JSON event line ({e}): {line}", self.what)
                })),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{}: still running after {limit:?}: {events:?}", self.what)
                }
            }
        }
        let child = &mut self.child;
        let status = wait_for(limit, || child.try_wait().expect("try_wait"))
            .unwrap_or_else(|| panic!("{} did not exit", self.what));
        (events, status)
    }
}

impl Drop for SeedClient {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
