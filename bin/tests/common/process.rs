//! A `posrelay serve` started exactly as a test says (fixed ports, its own stderr,
//! resource limits), for the start-up cases that [`Relay`] cannot express: a start that
//! must be refused, stderr that cannot be written, a limit set before `exec`.

use super::*;

/// How a `posrelay serve` start ended: serving (both readiness lines) or exited.
pub enum Start {
    /// Both readiness lines came; the process runs.
    Ready(Serving),
    /// The process exited before both lines came.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Every stdout line it printed.
        stdout: Vec<String>,
    },
}

/// A running `posrelay serve` started by [`start_serve`]; killed on drop.
pub struct Serving {
    /// The process.
    pub child: Child,
    /// Relay listener.
    pub relay_addr: SocketAddr,
    /// Admin listener.
    pub admin_addr: SocketAddr,
}

impl Serving {
    /// Sends `sig`.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory effects; the pid is our own unreaped child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Waits (at most `limit`) for the exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_for(limit, || child.try_wait().expect("try_wait"))
            .unwrap_or_else(|| panic!("posrelay did not exit within {limit:?}"))
    }

    /// `GET` on the admin listener: status and body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let mut s = raw_connect(self.admin_addr);
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let head = read_head(&mut s);
        let body = String::from_utf8_lossy(&read_body(&mut s, &head)).into_owned();
        (head.status, body)
    }

    /// The value of an unlabelled sample in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.admin_get("/metrics");
        assert_eq!(status, 200, "metrics");
        metric_sum(&text, name, &[])
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `posrelay serve` with exactly `args` (nothing added), `POSRELAY_ADMIN_TOKEN` set to
/// `admin_token`, stderr to `stderr`; `memlock` sets `RLIMIT_MEMLOCK` (soft and hard,
/// bytes) in the child before it runs. Waits for both readiness lines or the exit.
pub fn start_serve(args: &[&str], admin_token: &str, stderr: Stdio, memlock: Option<u64>) -> Start {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_posrelay"));
    cmd.arg("serve")
        .args(args)
        .env("POSRELAY_ADMIN_TOKEN", admin_token)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    if let Some(bytes) = memlock {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: runs in the forked child before exec; setrlimit(2) is async-signal-safe
        // and touches only the child's own limits.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn posrelay serve");
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut relay = None;
    let mut admin = None;
    let deadline = Instant::now() + READY_TIMEOUT;
    while relay.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("relay listening on ") {
                    let addr = rest.split_once("://").map_or(rest, |(_, a)| a);
                    relay = Some(addr.trim().parse::<SocketAddr>().expect("relay address"));
                } else if let Some(rest) = line.strip_prefix("admin listening on http://") {
                    admin = Some(rest.trim().parse::<SocketAddr>().expect("admin address"));
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: the process is exiting.
                let status = wait_for(READY_TIMEOUT, || child.try_wait().expect("try_wait"))
                    .expect("posrelay closed stdout but did not exit");
                return Start::Exited {
                    status,
                    stdout: lines,
                };
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("posrelay neither served nor exited within {READY_TIMEOUT:?}: {lines:?}");
            }
        }
    }
    Start::Ready(Serving {
        child,
        relay_addr: relay.unwrap(),
        admin_addr: admin.unwrap(),
    })
}

/// A loopback port nobody listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A child process killed (by its own handle) when the test ends, pass or fail.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` and returns it with a channel of its stdout lines.
pub fn spawn_lines(mut cmd: Command) -> (Killed, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Killed(child), rx)
}

/// Waits (30 s at most) for a line `pred` accepts; panics naming `what` otherwise.
pub fn wait_line(
    rx: &mpsc::Receiver<String>,
    what: &str,
    mut pred: impl FnMut(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return line,
            Ok(_) => {}
            Err(_) => panic!("{what}: not seen within 30 s"),
        }
    }
}
