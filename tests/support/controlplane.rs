//! A real Kubernetes control plane on loopback: etcd and kube-apiserver started
//! the way controller-runtime's envtest starts them, with RBAC authorization and
//! client-certificate users. It never reads the developer's kubeconfig.
//!
//! Two modes: [`Mode::Bare`] (nothing but the apiserver; tests write pod status
//! themselves) and [`Mode::Cluster`], the apiserver that
//! [`super::cluster::Cluster`] runs controllers, a scheduler and kwok's nodes on.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::pki::{self, Authority};
use super::process::{Supervised, free_port};
use super::{HarnessError, Result, Tools, io};

/// The user with all rights (group `system:masters`).
pub const ADMIN: &str = "kco-admin";

/// Who a client or kubeconfig acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// Cluster admin (`system:masters`).
    Admin,
    /// A user with no rights beyond what RBAC grants it by name.
    Named(String),
}

impl User {
    pub fn named(name: &str) -> Self {
        Self::Named(name.to_owned())
    }

    fn name(&self) -> &str {
        match self {
            User::Admin => ADMIN,
            User::Named(name) => name,
        }
    }
}

/// What the apiserver is started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// etcd + kube-apiserver only: fast to start; no controller, scheduler or
    /// kubelet, so nothing creates service accounts, pods or pod status.
    Bare,
    /// The apiserver of a full cluster: the ServiceAccount admission plugin is on
    /// (kube-controller-manager creates the accounts), and kubelets are reached
    /// over TLS the apiserver verifies, with a client certificate of its own.
    Cluster,
}

const START_TIMEOUT: Duration = Duration::from_secs(90);
const START_ATTEMPTS: u32 = 3;

/// etcd + kube-apiserver in a temporary directory. Dropping it stops both and
/// removes the directory.
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`
    pub url: String,
    /// The directory holding certificates, kubeconfigs, data and logs.
    pub dir: PathBuf,
    /// How long start-up took, to `/readyz` answering `ok`.
    pub startup: Duration,
    pub mode: Mode,
    tools: Tools,
    client_ca: Authority,
    /// Signs the serving certificates of kubelets (kwok's, in [`Mode::Cluster`]).
    pub kubelet_ca: Authority,
    pub server_ca_path: PathBuf,
    /// The private key service-account tokens are signed with (kube-controller-manager's).
    pub sa_private_key: PathBuf,
    // Field order is drop order: the apiserver stops before etcd.
    apiserver: std::sync::Mutex<Supervised>,
    /// How the apiserver was started, to start it again ([`ControlPlane::restart_apiserver`]).
    apiserver_command: (PathBuf, Vec<String>),
    etcd: Supervised,
    /// Apiservers stopped by a restart. The first one removes the directory when
    /// dropped, so they go last.
    retired: std::sync::Mutex<Vec<Supervised>>,
    _tempdir: tempfile::TempDir,
}

static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// The control plane shared by every test of this test binary, started on first use.
    /// Panics (failing the calling test) with the reason if it cannot start.
    pub fn shared() -> &'static ControlPlane {
        // Start-up is async (the readiness probe uses a kube client).
        let started = SHARED.get_or_init(|| {
            super::start_detached("control plane", || ControlPlane::start(Mode::Bare))
        });
        match started {
            Ok(cp) => cp,
            Err(e) => panic!("the local control plane did not start: {e}"),
        }
    }

    /// Starts a new control plane of its own (retrying if a port was taken meanwhile).
    pub async fn start(mode: Mode) -> Result<Self> {
        kco::tls::install_crypto_provider();
        let tools = Tools::locate()?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&tools, mode).await {
                Err(e)
                    if attempt < START_ATTEMPTS
                        && e.to_string().contains("address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(tools: &Tools, mode: Mode) -> Result<Self> {
        let began = Instant::now();
        let etcd_bin = tools.binary("etcd")?;
        let apiserver_bin = tools.binary("kube-apiserver")?;
        let tempdir = tempfile::Builder::new()
            .prefix("kco-controlplane-")
            .tempdir()
            .map_err(io("create a temporary directory"))?;
        let dir = tempdir.path().to_owned();
        let pki_dir = dir.join("pki");
        let etcd_dir = dir.join("etcd");
        for d in [&pki_dir, &etcd_dir] {
            std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
        }

        let server_ca = Authority::new("kco-test-server-ca")?;
        let client_ca = Authority::new("kco-test-client-ca")?;
        let serving = server_ca.server(&["127.0.0.1", "localhost"])?;
        let write = |name: &str, content: &str| -> Result<PathBuf> {
            let path = pki_dir.join(name);
            std::fs::write(&path, content).map_err(io(format!("write {}", path.display())))?;
            Ok(path)
        };
        let server_ca_path = write("server-ca.crt", &server_ca.cert_pem)?;
        let client_ca_path = write("client-ca.crt", &client_ca.cert_pem)?;
        let serving_cert = write("apiserver.crt", &serving.cert)?;
        let serving_key = write("apiserver.key", &serving.key)?;
        let (sa_private, sa_public) = pki::signing_key()?;
        let sa_key = write("service-account.key", &sa_private)?;
        let sa_pub = write("service-account.pub", &sa_public)?;
        let kubelet_ca = Authority::new("kco-test-kubelet-ca")?;
        let kubelet_ca_path = write("kubelet-ca.crt", &kubelet_ca.cert_pem)?;
        let kubelet_client = client_ca.client("kube-apiserver-kubelet-client", None)?;
        let kubelet_client_cert = write("apiserver-kubelet-client.crt", &kubelet_client.cert)?;
        let kubelet_client_key = write("apiserver-kubelet-client.key", &kubelet_client.key)?;

        let client_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Supervised::spawn(
            "etcd",
            &etcd_bin,
            &[
                "--name=kco-test".into(),
                format!("--data-dir={}", etcd_dir.join("data").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=kco-test={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &dir.join("etcd.log"),
            Some(&etcd_dir),
        )?;
        wait_for_port(&mut etcd, client_port, START_TIMEOUT)?;

        let secure_port = free_port()?;
        let url = format!("https://127.0.0.1:{secure_port}");
        let mut apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure_port}"),
            format!("--cert-dir={}", pki_dir.display()),
            format!("--tls-cert-file={}", serving_cert.display()),
            format!("--tls-private-key-file={}", serving_key.display()),
            format!("--client-ca-file={}", client_ca_path.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            "--v=0".into(),
        ];
        match mode {
            // No controller-manager creates `default` service accounts here.
            Mode::Bare => apiserver_args.push("--disable-admission-plugins=ServiceAccount".into()),
            Mode::Cluster => apiserver_args.extend([
                format!(
                    "--kubelet-client-certificate={}",
                    kubelet_client_cert.display()
                ),
                format!("--kubelet-client-key={}", kubelet_client_key.display()),
                format!(
                    "--kubelet-certificate-authority={}",
                    kubelet_ca_path.display()
                ),
                "--kubelet-preferred-address-types=InternalIP".into(),
            ]),
        }
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            &apiserver_bin,
            &apiserver_args,
            &dir.join("kube-apiserver.log"),
            // The last process to stop removes the whole directory.
            Some(&dir),
        )?;

        let mut cp = Self {
            url,
            dir,
            startup: Duration::ZERO,
            mode,
            tools: tools.clone(),
            client_ca,
            kubelet_ca,
            server_ca_path,
            sa_private_key: sa_key,
            apiserver: std::sync::Mutex::new(apiserver),
            apiserver_command: (apiserver_bin, apiserver_args),
            etcd,
            retired: std::sync::Mutex::new(Vec::new()),
            _tempdir: tempdir,
        };
        cp.wait_ready().await?;
        cp.startup = began.elapsed();
        Ok(cp)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        if let Some(status) = self.etcd.exited() {
            return Err(HarnessError::Died {
                name: self.etcd.name.clone(),
                status,
                log: self.etcd.log_tail(30),
            });
        }
        self.wait_apiserver_ready(START_TIMEOUT).await
    }

    /// Waits until the apiserver answers `/readyz` with `ok`.
    async fn wait_apiserver_ready(&self, timeout: Duration) -> Result<()> {
        let client = self.client(&User::Admin).await?;
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            {
                let mut apiserver = self.apiserver();
                if let Some(status) = apiserver.exited() {
                    return Err(HarnessError::Died {
                        name: apiserver.name.clone(),
                        status,
                        log: apiserver.log_tail(30),
                    });
                }
            }
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| HarnessError::Kube(e.to_string()))?;
            match tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => last = body,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "/readyz did not answer within 5s".into(),
            }
            if Instant::now() > deadline {
                let apiserver = self.apiserver();
                return Err(HarnessError::Timeout {
                    what: format!("kube-apiserver at {}", self.url),
                    seconds: timeout.as_secs(),
                    last,
                    name: apiserver.name.clone(),
                    log: apiserver.log_tail(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A kubeconfig file for `user` (created on first use), for kubectl or helm.
    pub fn kubeconfig(&self, user: &User) -> Result<PathBuf> {
        let name = user.name();
        let path = self.dir.join(format!("kubeconfig-{name}.yaml"));
        if path.is_file() {
            return Ok(path);
        }
        let group = matches!(user, User::Admin).then_some("system:masters");
        let pem = self.client_ca.client(name, group)?;
        let cert = self.dir.join("pki").join(format!("{name}.crt"));
        let key = self.dir.join("pki").join(format!("{name}.key"));
        std::fs::write(&cert, &pem.cert).map_err(io(format!("write {}", cert.display())))?;
        std::fs::write(&key, &pem.key).map_err(io(format!("write {}", key.display())))?;
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kco-test\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\n\
             users:\n- name: {name}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
             contexts:\n- name: {name}\n  context:\n    cluster: kco-test\n    user: {name}\ncurrent-context: {name}\n",
            url = self.url,
            ca = self.server_ca_path.display(),
            cert = cert.display(),
            key = key.display(),
        );
        // Write then rename, so that a concurrent reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, yaml).map_err(io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("write {}", path.display())))?;
        Ok(path)
    }

    /// The client configuration of `user`, from that user's kubeconfig file.
    pub async fn config(&self, user: &User) -> Result<kube::Config> {
        let path = self.kubeconfig(user)?;
        let kubeconfig =
            Kubeconfig::read_from(&path).map_err(|e| HarnessError::Kube(e.to_string()))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| HarnessError::Kube(e.to_string()))
    }

    /// A client acting as `user`, built from that user's kubeconfig file.
    pub async fn client(&self, user: &User) -> Result<kube::Client> {
        kube::Client::try_from(self.config(user).await?)
            .map_err(|e| HarnessError::Kube(e.to_string()))
    }

    /// The admin client; panics with the reason if it cannot be built.
    pub async fn admin(&self) -> kube::Client {
        match self.client(&User::Admin).await {
            Ok(client) => client,
            Err(e) => panic!("admin client: {e}"),
        }
    }

    /// Creates a namespace with a unique name starting with `prefix`.
    pub async fn namespace(&self, prefix: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let namespaces: Api<Namespace> = Api::all(self.admin().await);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        if let Err(e) = namespaces.create(&PostParams::default(), &ns).await {
            panic!("create namespace {name}: {e}");
        }
        name
    }

    /// `kubectl` acting as `user`, with its caches inside the control plane's directory.
    pub fn kubectl(&self, user: &User) -> Result<std::process::Command> {
        let mut command = std::process::Command::new(self.tools.binary("kubectl")?);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .arg(format!("--kubeconfig={}", self.kubeconfig(user)?.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ));
        Ok(command)
    }

    /// Applies CRD manifests (a file or a directory) and waits until `crd` is Established.
    pub fn apply_crds(&self, manifests: &Path, crd: &str) -> Result<()> {
        let run = |args: &[&str], what: &str| -> Result<()> {
            let out = self
                .kubectl(&User::Admin)?
                .args(args)
                .output()
                .map_err(io(what))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(HarnessError::Kube(format!(
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )))
            }
        };
        let path = manifests.to_string_lossy();
        run(
            &["apply", "--server-side", "--force-conflicts", "-f", &path],
            "kubectl apply",
        )?;
        let established = format!("crd/{crd}");
        run(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &established,
            ],
            "kubectl wait",
        )
    }

    /// `kubectl apply <extra> -f <file>` as the admin; its output. Panics (failing
    /// the test) with kubectl's output when it fails.
    pub fn apply(&self, file: &Path, extra: &[&str]) -> String {
        let out = self
            .kubectl(&User::Admin)
            .and_then(|mut k| {
                k.arg("apply")
                    .args(extra)
                    .arg("-f")
                    .arg(file)
                    .output()
                    .map_err(io("run kubectl apply"))
            })
            .unwrap_or_else(|e| panic!("kubectl apply {}: {e}", file.display()));
        assert!(
            out.status.success(),
            "kubectl apply {}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Installs KCO's CRDs from `crds/`; panics (failing the test) if it cannot.
    pub fn install_kco_crds(&self) {
        for crd in [
            "targetapps.operator.kco.local",
            "tenantquotas.operator.kco.local",
        ] {
            if let Err(e) = self.apply_crds(&repo_path("crds"), crd) {
                panic!("install KCO's CRDs: {e}");
            }
        }
    }

    /// The apiserver's log so far.
    pub fn apiserver_log(&self) -> String {
        self.apiserver().log_tail(usize::MAX)
    }

    fn apiserver(&self) -> std::sync::MutexGuard<'_, Supervised> {
        self.apiserver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops kube-apiserver (SIGTERM, as a rolling control-plane upgrade would),
    /// keeps it down for `down`, starts it again on the same port and etcd, and
    /// waits until it is ready. Clients see connection errors meanwhile.
    pub async fn restart_apiserver(&self, down: Duration) -> Result<()> {
        {
            let mut apiserver = self.apiserver();
            if !apiserver.signal("TERM") {
                return Err(HarnessError::Kube("cannot signal kube-apiserver".into()));
            }
            // It drains its watches and requests first; a crash-like stop after 10 s.
            let deadline = Instant::now() + Duration::from_secs(10);
            while apiserver.exited().is_none() {
                if Instant::now() > deadline {
                    apiserver.signal("KILL");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        tokio::time::sleep(down).await;
        let restarts = self.retired.lock().map(|r| r.len()).unwrap_or(0) + 1;
        let (bin, args) = &self.apiserver_command;
        let log = self.dir.join(format!("kube-apiserver-{restarts}.log"));
        let fresh = Supervised::spawn("kube-apiserver", bin, args, &log, None)?;
        let old = std::mem::replace(&mut *self.apiserver(), fresh);
        if let Ok(mut retired) = self.retired.lock() {
            retired.push(old);
        }
        // A restart under load (three replicas relisting at once) can keep etcd's
        // readiness check failing for a while on two cores.
        self.wait_apiserver_ready(START_TIMEOUT * 2).await
    }

    /// The kube-apiserver's process id (benches measure its CPU).
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.lock().ok().and_then(|a| a.pid())
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }
}

pub fn wait_for_port(process: &mut Supervised, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exited() {
            return Err(HarnessError::Died {
                name: process.name.clone(),
                status,
                log: process.log_tail(30),
            });
        }
        match std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            Duration::from_millis(200),
        ) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(HarnessError::Timeout {
                    what: format!("{} on port {port}", process.name),
                    seconds: timeout.as_secs(),
                    last: e.to_string(),
                    name: process.name.clone(),
                    log: process.log_tail(30),
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}
