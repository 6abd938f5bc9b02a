//! The harness's child processes (the broker, the baseline, the upstream pair): spawn behind an optional
//! wrapper, wait until ready, read their memory and CPU from `/proc`, stop them gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::client::MtlsClient;

/// A child process of the harness; killed when dropped (also on error paths).
pub(super) struct Child {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Child {
    /// Run the current executable with `args`, behind `wrapper` (e.g. `valgrind --tool=callgrind`) if any.
    pub(super) fn spawn(
        name: &'static str,
        wrapper: &[String],
        args: &[String],
        log: PathBuf,
        rust_log: &str,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = tokio::process::Command::new(program);
                c.args(rest).arg(exe);
                c
            }
            None => tokio::process::Command::new(exe),
        };
        let child = command
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting the {name}: {e}"))?;
        Ok(Self { name, child, log })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Peak and current resident set in KiB (`VmHWM`, `VmRSS`).
    pub(super) fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// User and system CPU seconds the process has used so far (`/proc/PID/stat`, in the kernel's fixed
    /// 100 ticks per second).
    pub(super) fn cpu_secs(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // The command name may hold spaces; the fields after it start with the state (field 3).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let tick = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
        Some((tick(14)? + tick(15)?) as f64 / 100.0)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "the {} exited early ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            )),
            _ => None,
        }
    }

    /// SIGTERM (graceful: the broker flushes and writes its checkpoint), then SIGKILL after a grace time.
    pub(super) async fn stop(mut self) {
        if let Some(pid) = self.pid() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// A port that was free a moment ago (bind port 0, read it back, release it).
pub(super) fn free_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("picking a free port: {e}"))
}

pub(super) async fn wait_ready(
    child: &mut Child,
    client: &MtlsClient,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = child.exited() {
            return Err(e);
        }
        if let Ok(r) = client.get(addr, "/healthz").await {
            if r.status == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the {} did not come up on {addr} in {timeout:?}",
                child.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
