//! The `kco` command line as users and the chart's hooks call it: `kco version`
//! (plain and JSON), shell completions, man pages, and `kco probe` against TLS
//! endpoints and every address of a name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::{Command, Output};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn kco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kco"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kco_version_names_the_build_plainly_and_as_json() {
    let plain = stdout(&kco(&["version"]));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&kco(&["version", "-o", "json"]))).unwrap();
    let version = json["version"].as_str().unwrap();
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "a build without KCO_VERSION"
    );
    for field in ["revision", "buildDate", "platform"] {
        let value = json[field].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "{field}: {json}");
        assert!(plain.contains(value), "{field} {value:?} not in {plain}");
    }
    // Without KCO_GIT_REVISION and SOURCE_DATE_EPOCH the build says so, rather
    // than guess from whatever checkout it was built in.
    assert_eq!(json["revision"], "unknown");
    assert_eq!(json["buildDate"], "unknown");
    assert!(plain.starts_with(&format!("kco {version}\n")), "{plain}");
    assert_eq!(
        stdout(&kco(&["--version"])).trim(),
        format!("kco {version}")
    );
    let refused = kco(&["version", "-o", "yaml"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
}

#[test]
fn completions_know_every_command_and_flag() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&kco(&["completion", shell]));
        for word in [
            "run",
            "simulate",
            "validate",
            "probe",
            "version",
            "completion",
            "graphql-timeout",
            "every-address",
        ] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    assert!(!kco(&["completion", "tcsh"]).status.success());
}

#[test]
fn man_pages_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&kco(&["man", "--out-dir", dir.path().to_str().unwrap()]));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "kco.1",
        "kco-run.1",
        "kco-probe.1",
        "kco-schema-import.1",
        "kco-version.1",
    ] {
        assert!(pages.contains(&page.to_owned()), "{page} not in {pages:?}");
    }
    let run = std::fs::read_to_string(dir.path().join("kco-run.1")).unwrap();
    assert!(
        run.starts_with(".ie") && run.contains(".TH kco-run 1"),
        "{run}"
    );
    // Flags with their environment variables and defaults.
    assert!(
        run.contains("graphql\\-max\\-retries") && run.contains("GRAPHQL_MAX_RETRIES"),
        "{run}"
    );
    assert!(run.contains(env!("CARGO_PKG_VERSION")));
}

/// A one-shot HTTPS server answering every request with `status`, under a
/// certificate for `name` signed by a CA of its own: (its address, the CA's PEM).
async fn https_server(name: &str, status: u16) -> (std::net::SocketAddr, String) {
    kco::tls::install_crypto_provider();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = [0u8; 1024];
                let _ = tls.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (address, ca.pem())
}

async fn probe(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kco"))
            .arg("probe")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn kco_probe_checks_tls_against_the_ca_it_is_given() {
    let (address, ca) = https_server("localhost", 200).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let url = format!("https://localhost:{}/healthz", address.port());
    let ca_arg = ca_file.to_str().unwrap().to_owned();

    let answered = probe(vec![url.clone(), "--ca-file".into(), ca_arg.clone()]).await;
    assert_eq!(answered.status.code(), Some(0), "{answered:?}");
    assert!(String::from_utf8_lossy(&answered.stdout).contains("HTTP 200"));

    // Without the CA the certificate is not trusted; another CA is no better.
    let untrusted = probe(vec![url.clone()]).await;
    assert_eq!(untrusted.status.code(), Some(1), "{untrusted:?}");
    let (_, other_ca) = https_server("localhost", 200).await;
    let other = dir.path().join("other.crt");
    std::fs::write(&other, other_ca).unwrap();
    let wrong = probe(vec![
        url.clone(),
        "--ca-file".into(),
        other.to_str().unwrap().into(),
    ])
    .await;
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("certificate"),
        "{wrong:?}"
    );
    // The certificate must be for the name asked for.
    let by_address = format!("https://127.0.0.1:{}/healthz", address.port());
    let mismatch = probe(vec![by_address, "--ca-file".into(), ca_arg.clone()]).await;
    assert_eq!(mismatch.status.code(), Some(1), "{mismatch:?}");
    // A CA file that holds no certificate is an error, not "trust everything".
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let refused = probe(vec![
        url,
        "--ca-file".into(),
        empty.to_str().unwrap().into(),
    ])
    .await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no certificate"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn kco_probe_asks_every_address_of_a_name() {
    let (address, ca) = https_server("localhost", 200).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let url = format!("https://localhost:{}/readyz", address.port());
    let ca_arg = ca_file.to_str().unwrap().to_owned();
    let each = probe(vec![
        url.clone(),
        "--ca-file".into(),
        ca_arg.clone(),
        "--every-address".into(),
        "1".into(),
    ])
    .await;
    assert_eq!(each.status.code(), Some(0), "{each:?}");
    // One line per address, each named, each asked under the URL's own name (TLS
    // verified for `localhost`, although the connection goes to the address).
    let out = String::from_utf8_lossy(&each.stdout).into_owned();
    assert!(
        out.lines().all(|l| l.contains(": GET https://localhost:")),
        "{out}"
    );
    assert!(
        out.contains(&format!("127.0.0.1:{}: GET", address.port())),
        "{out}"
    );
    // Fewer addresses than replicas expected: a failure that says so.
    let short = probe(vec![
        url,
        "--ca-file".into(),
        ca_arg,
        "--every-address".into(),
        "9".into(),
    ])
    .await;
    assert_eq!(short.status.code(), Some(1), "{short:?}");
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("9 expected"),
        "{short:?}"
    );
    // An unready replica fails the probe, naming its address and its answer.
    let (sick, sick_ca) = https_server("localhost", 503).await;
    let sick_ca_file = dir.path().join("sick.crt");
    std::fs::write(&sick_ca_file, sick_ca).unwrap();
    let unready = probe(vec![
        format!("https://localhost:{}/readyz", sick.port()),
        "--ca-file".into(),
        sick_ca_file.to_str().unwrap().into(),
        "--every-address".into(),
        "1".into(),
    ])
    .await;
    assert_eq!(unready.status.code(), Some(1), "{unready:?}");
    let why = String::from_utf8_lossy(&unready.stderr);
    assert!(
        why.contains(&format!("127.0.0.1:{}: GET", sick.port())) && why.contains("HTTP 503"),
        "{why}"
    );
}
