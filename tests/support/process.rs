//! Control-plane processes that cannot outlive the test binary.
//!
//! Each process runs under a small `sh` watchdog that reads the test process's
//! pipe on its standard input. When the test process ends, however it ends
//! (normal exit, panic, SIGKILL), the pipe closes and the watchdog stops the
//! process and removes its directory. Statics are never dropped in Rust, so
//! this is what cleans up the control plane that a test binary shares. A process
//! that dies on its own leaves its directory (and logs) for the harness to read.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Result, io};

const WATCHDOG: &str = r#"
exec 3<&0 0</dev/null
"$@" &
child=$!
echo "$child" > "$KCO_WATCHDOG_PIDFILE"
(
  read -r _ <&3
  kill -TERM "$child" 2>/dev/null
  i=0
  while kill -0 "$child" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$child" 2>/dev/null
  if [ -n "$KCO_WATCHDOG_CLEANUP" ]; then rm -rf "$KCO_WATCHDOG_CLEANUP"; fi
) &
wait "$child"
"#;

/// A running process under its watchdog.
pub struct Supervised {
    pub name: String,
    pub log: PathBuf,
    watchdog: Child,
    lifeline: Option<ChildStdin>,
}

impl Supervised {
    /// Starts `program args...`, its output appended to `log`. `cleanup`, if given,
    /// is removed once the process has exited.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        cleanup: Option<&Path>,
    ) -> Result<Self> {
        let out = File::create(log).map_err(io(format!("create {}", log.display())))?;
        let err = out.try_clone().map_err(io("duplicate a log handle"))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .env("KCO_WATCHDOG_PIDFILE", log.with_extension("pid"))
            .env(
                "KCO_WATCHDOG_CLEANUP",
                cleanup.map(Path::as_os_str).unwrap_or_default(),
            );
        let mut watchdog = command
            .spawn()
            .map_err(io(format!("start {name} ({})", program.display())))?;
        let lifeline = watchdog.stdin.take();
        Ok(Self {
            name: name.to_owned(),
            log: log.to_owned(),
            watchdog,
            lifeline,
        })
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.watchdog.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown status: {e}")),
        }
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(file) = File::open(&self.log) else {
            return format!("(no log at {})", self.log.display());
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(|l| l.ok()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("find a free port"))?
        .port())
}

impl Supervised {
    /// The process's id (not the watchdog's).
    pub fn pid(&self) -> Option<u32> {
        let file = self.log.with_extension("pid");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Some(pid);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` ("KILL", "TERM") to the process.
    pub fn signal(&self, signal: &str) -> bool {
        self.pid().is_some_and(|pid| {
            Command::new("kill")
                .args(["-s", signal, &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Closes the lifeline without waiting, exactly as the test process's death
    /// would; the watchdog must then stop the process on its own.
    pub fn sever_lifeline(&mut self) {
        drop(self.lifeline.take());
    }
}
