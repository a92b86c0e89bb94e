//! What the benches share: simulated Mina nodes in a `kco simulate` child
//! process, and the CPU a process has used. Each bench uses part of it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The port every simulated node listens on.
pub const NODE_PORT: u16 = 3085;

/// `count` simulated nodes at consecutive addresses from `first` (port
/// [`NODE_PORT`]), served by one `kco simulate` process (the `kco` binary at
/// `kco`) whose control API listens at `control`. The process is killed when
/// this is dropped.
pub struct SimulatorProcess {
    child: Child,
    pub control: SocketAddr,
    pub nodes: Vec<SocketAddr>,
}

impl SimulatorProcess {
    /// Starts the process and waits until it serves.
    pub fn start(kco: &Path, first: Ipv4Addr, count: usize, control: SocketAddr) -> Self {
        let mut child = Command::new(kco)
            .args(["simulate", "--log-level", "warn"])
            .args(["--control", &control.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--first-ip", &first.to_string()])
            .args(["--port", &NODE_PORT.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} simulate: {e}", kco.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("the simulator's stdout"))
            .read_line(&mut line)
            .expect("the simulator's first line");
        assert!(line.contains("node(s)"), "simulator did not start: {line}");
        let base = u32::from(first);
        let nodes = (0..count as u32)
            .map(|i| SocketAddr::from((Ipv4Addr::from(base + i), NODE_PORT)))
            .collect();
        Self {
            child,
            control,
            nodes,
        }
    }

    /// The simulator process's id (to read its CPU).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// [`SimulatorProcess::start`] with the bench's own `kco` binary and a
    /// control port chosen by the system.
    pub fn start_here(first: Ipv4Addr, count: usize) -> Self {
        let control = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port for the simulator's control API");
        Self::start(Path::new(env!("CARGO_BIN_EXE_kco")), first, count, control)
    }
}

impl Drop for SimulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) this process has used.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_in(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    cpu_seconds_in(&stat)
}

/// The CPU seconds a `/proc/<pid>/stat` line gives.
fn cpu_seconds_in(stat: &str) -> f64 {
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0 // utime, stime in clock ticks (USER_HZ = 100 on Linux)
}
