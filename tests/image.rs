//! The container image as `./build.sh image` builds it with Podman on this machine
//! (no registry is needed: its root file system is staged, not pulled), and as
//! the Containerfile builds it on GitHub: a static binary, CA certificates and a
//! non-root user, with the release's labels, and nothing else.
//!
//! Containers cannot be started in this sandbox (Podman cannot create cgroups
//! here), so the test takes the binary out of the image and runs it directly.
//! Podman is installed by `./build.sh test` (Debian's package); a machine without
//! it must opt out explicitly with KCO_NO_PODMAN=1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::controlplane::repo_path;

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn podman(args: &[&str]) -> String {
    ok(
        Command::new("podman").args(args).output().unwrap(),
        &format!("podman {}", args.join(" ")),
    )
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo_path("."))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether the ELF file at `path` asks for a program interpreter (a dynamic
/// loader): a static binary does not.
fn has_interpreter(path: &Path) -> bool {
    let elf = std::fs::read(path).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

/// The files of the image's layers (paths without a leading `/`), and the
/// directory where they were unpacked.
fn unpack(image: &str, dir: &Path) -> (Vec<String>, PathBuf) {
    let archive = dir.join("image.tar");
    podman(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        archive.to_str().unwrap(),
        image,
    ]);
    let saved = dir.join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&saved)
            .output()
            .unwrap(),
        "tar -x image",
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("manifest.json")).unwrap())
            .unwrap();
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let mut files = Vec::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let layer = saved.join(layer.as_str().unwrap());
        let listed = ok(
            Command::new("tar").arg("-tf").arg(&layer).output().unwrap(),
            "tar -t layer",
        );
        files.extend(
            listed
                .lines()
                .map(|l| l.trim_start_matches("./").to_owned()),
        );
        ok(
            Command::new("tar")
                .arg("-xf")
                .arg(&layer)
                .arg("-C")
                .arg(&rootfs)
                .output()
                .unwrap(),
            "tar -x layer",
        );
    }
    files.retain(|f| !f.is_empty() && !f.ends_with('/'));
    files.sort();
    (files, rootfs)
}

#[test]
fn the_image_holds_a_static_kco_its_certificates_and_a_user_and_nothing_else() {
    if Command::new("podman").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("KCO_NO_PODMAN").is_some(),
            "podman is not installed (./build.sh test installs it); set KCO_NO_PODMAN=1 to leave this test out knowingly"
        );
        return;
    }
    let image = format!("localhost/kco-test:{}", std::process::id());
    let built = Command::new("bash")
        .arg(repo_path("build.sh"))
        .arg("image")
        .env("IMAGE", &image)
        // The build of the image is the release's, not this instrumented test run's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTDOCFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_INCREMENTAL")
        .env_remove("LLVM_PROFILE_FILE")
        .env_remove("KCO_VERSION")
        .env_remove("KCO_GIT_REVISION")
        .env_remove("SOURCE_DATE_EPOCH")
        .current_dir(repo_path("."))
        .output()
        .unwrap();
    let built = ok(built, "./build.sh image");
    assert_eq!(built.lines().last(), Some(image.as_str()));

    // Metadata: the user the chart runs as, the entry point, the release's labels.
    let inspected: serde_json::Value =
        serde_json::from_str(&podman(&["image", "inspect", &image])).unwrap();
    let config = &inspected[0]["Config"];
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/kco"])
    );
    assert_eq!(config["Cmd"], serde_json::json!(["run"]));
    let labels = &config["Labels"];
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(labels["org.opencontainers.image.version"], version);
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://github.com/kco-local/kco"
    );
    let revision = git(&["rev-parse", "HEAD"]);
    if let Some(revision) = &revision {
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            revision.as_str()
        );
    }
    let size = inspected[0]["Size"].as_u64().unwrap();
    assert!(size < 40 << 20, "the image is {size} bytes");

    // Its files: the binary, the CA certificates, the user; no shell, no libc.
    let dir = tempfile::tempdir().unwrap();
    let (files, rootfs) = unpack(&image, dir.path());
    assert_eq!(
        files,
        [
            "etc/group",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/kco"
        ],
        "{files:?}"
    );
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("kco:x:1000:1000:"), "{passwd}");
    let certs = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        certs.matches("BEGIN CERTIFICATE").count() > 50,
        "a CA bundle"
    );
    let kco = rootfs.join("usr/local/bin/kco");
    assert!(
        !has_interpreter(&kco),
        "the binary is static (no dynamic loader)"
    );

    // The binary, run outside the image: the release it reports, the checks it
    // makes, and no simulator (the operator image never serves GraphQL).
    let run = |args: &[&str]| {
        Command::new(&kco)
            .args(args)
            .current_dir(repo_path("."))
            .output()
            .unwrap()
    };
    assert_eq!(
        ok(run(&["--version"]), "kco --version").trim(),
        format!("kco {version}")
    );
    let reported: serde_json::Value =
        serde_json::from_str(&ok(run(&["version", "-o", "json"]), "kco version")).unwrap();
    if let Some(revision) = &revision {
        assert_eq!(reported["revision"], revision.as_str());
        // The build date is the commit's time (so one commit builds one binary).
        let epoch = git(&["log", "-1", "--format=%ct"]).unwrap();
        let date = Command::new("date")
            .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        assert_eq!(reported["buildDate"], ok(date, "date").trim());
    }
    ok(
        run(&["validate", "docs/examples/targetapp-mina.yaml"]),
        "kco validate",
    );
    let simulate = run(&["simulate", "--help"]);
    assert!(
        !simulate.status.success(),
        "the image's kco has no simulator"
    );
    podman(&["rmi", &image]);
}
