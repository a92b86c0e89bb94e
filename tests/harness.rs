//! The harness itself: it reports what went wrong instead of hanging, and its
//! processes cannot outlive the test process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::time::{Duration, Instant};

use support::process::{Supervised, free_port};
use support::{HarnessError, Tools};

#[test]
fn a_missing_tool_names_the_fix() {
    let tools = Tools {
        dir: std::env::temp_dir().join("kco-no-tools-here"),
    };
    let err = tools.binary("kube-apiserver").unwrap_err().to_string();
    assert!(err.contains("kube-apiserver not found"), "{err}");
    assert!(err.contains("./build.sh tools"), "{err}");
}

#[test]
fn a_port_in_use_is_reported_with_the_process_log() {
    let tools = Tools::locate().unwrap();
    let etcd = tools.binary("etcd").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let mut process = Supervised::spawn(
        "etcd",
        &etcd,
        &[
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
        ],
        &dir.path().join("etcd.log"),
        None,
    )
    .unwrap();
    // The port is open (our listener), so only the process's death can end the wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        if let Some(status) = process.exited() {
            break HarnessError::Died {
                name: process.name.clone(),
                status,
                log: process.log_tail(30),
            };
        }
        assert!(
            Instant::now() < deadline,
            "etcd should fail on a port in use"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = err.to_string();
    assert!(text.contains("etcd exited during start-up"), "{text}");
    assert!(text.contains("address already in use"), "{text}");
}

#[test]
fn a_process_dies_with_its_lifeline_and_its_directory_goes() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let mut sleeper = Supervised::spawn(
        "sleeper",
        std::path::Path::new("/bin/sleep"),
        &["300".into()],
        &dir.path().join("sleep.log"),
        Some(&scratch),
    )
    .unwrap();
    assert!(sleeper.exited().is_none());
    // What happens when the test process dies: the pipe closes, nobody waits.
    sleeper.sever_lifeline();
    let deadline = Instant::now() + Duration::from_secs(15);
    while sleeper.exited().is_none() || scratch.exists() {
        assert!(
            sleeper.exited().is_some() || Instant::now() < deadline,
            "the watchdog did not stop the process"
        );
        assert!(
            Instant::now() < deadline,
            "the watchdog did not remove the process's directory"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
