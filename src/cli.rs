//! The `kco` command line: argument definitions and dispatch to the library.

#[cfg(feature = "simulator")]
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "simulator")]
use clap::Args;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::schema;
#[cfg(feature = "simulator")]
use crate::simulator::{NodeState, Simulator};

/// KCO watches GraphQL-serving pods (Mina daemons by default) and acts on their state.
#[derive(Debug, Parser)]
#[command(name = "kco", version = crate::version::VERSION, propagate_version = true, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing directive list.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// Log format: JSON lines for machines, or compact text for people.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
}

/// How `kco version` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VersionFormat {
    Text,
    Json,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// YAML or JSON files, each with one or more documents, judged in order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The schema for TargetApps whose schema comes from a ConfigMap (SDL or
    /// introspection JSON); the built-in Mina schema is used otherwise.
    #[arg(long, conflicts_with = "cluster")]
    schema: Option<PathBuf>,
    /// A file of TenantQuota manifests (repeatable): TargetApps are judged as in a
    /// cluster holding these quotas (and no TargetApps but the files' own, created
    /// in order). Without it, every namespace has the operator's default quota.
    #[arg(long = "quota", value_name = "FILE", conflicts_with = "cluster")]
    quotas: Vec<PathBuf>,
    /// A namespace's labels, for quotas that select namespaces by label
    /// (repeatable): NAMESPACE:KEY=VALUE[,KEY=VALUE...]. Every namespace has
    /// kubernetes.io/metadata.name=<its name> besides.
    #[arg(
        long = "namespace-labels",
        value_name = "NS:LABELS",
        conflicts_with = "cluster"
    )]
    namespace_labels: Vec<String>,
    /// Ask the cluster of the current kubeconfig context instead: a server-side
    /// dry run of each manifest's apply with strict field validation, through
    /// its admission webhooks and policies. Nothing is stored.
    #[arg(long)]
    cluster: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: watch TargetApps, poll their targets, report and act.
    Run(Box<crate::config::RunArgs>),
    /// Run a Mina node simulator: GraphQL servers that answer like Mina daemons,
    /// with a control API to change their state and inject faults.
    #[cfg(feature = "simulator")]
    Simulate(SimulateArgs),
    /// Work with GraphQL schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Check TargetApp and TenantQuota manifests before applying them: offline, as
    /// the admission webhooks of a cluster with the given TenantQuotas would, or by
    /// the cluster itself with --cluster (exit 0: all accepted, 1: some rejected,
    /// 2: usage or read error).
    Validate(ValidateArgs),
    /// Check that an endpoint answers (exit 0 on a 2xx answer, 1 otherwise): the
    /// chart's `helm test` and health checks use it, as KCO's image has no shell
    /// or curl. Follows no redirect and uses no proxy.
    Probe {
        /// An http:// or https:// URL, e.g. http://kco-metrics.kco-system.svc:8080/readyz.
        url: String,
        /// How long to wait for each answer.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout_seconds: u64,
        /// Trust only the CA certificates of this PEM file for https://.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Ask every address the URL's host resolves to (e.g. each replica behind
        /// a headless Service) and require at least this many.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
        every_address: Option<u64>,
    },
    /// Print this build's version, git revision, build date and platform.
    Version {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = VersionFormat::Text)]
        output: VersionFormat,
    },
    /// Print a shell completion script (e.g. `kco completion bash > /etc/bash_completion.d/kco`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for kco and each of its commands into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Print the CustomResourceDefinitions as YAML (`kco crds | kubectl apply -f -`).
    Crds {
        /// Write one file per CRD into this directory instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Print a Markdown reference of the CRDs' fields instead.
        #[arg(long, conflicts_with = "out_dir")]
        reference: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Convert an introspection result (JSON) into SDL, names and types only.
    Import {
        /// The introspection JSON file, or `-` for standard input.
        file: PathBuf,
        /// Where to write the SDL (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[cfg(feature = "simulator")]
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address of the control API (HTTP, JSON).
    #[arg(long, env = "KCO_SIM_CONTROL", default_value = "127.0.0.1:8090")]
    pub control: SocketAddr,
    /// Start a simulated node at this address (repeatable, or comma-separated).
    #[arg(long = "node", value_delimiter = ',')]
    pub nodes: Vec<SocketAddr>,
    /// Also start this many nodes at consecutive loopback addresses from --first-ip.
    #[arg(long, default_value_t = 0)]
    pub count: u32,
    /// First address for --count nodes.
    #[arg(long, default_value_t = Ipv4Addr::new(127, 0, 0, 2))]
    pub first_ip: Ipv4Addr,
    /// Port for --count nodes (Mina's GraphQL port by default).
    #[arg(long, default_value_t = 3085)]
    pub port: u16,
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    if let Err(e) = crate::logging::init(&cli.log_level, cli.log_format == LogFormat::Json) {
        eprintln!("kco: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Schema(SchemaCommand::Import { file, output }) => {
            schema_import(&file, output.as_deref())
        }
        #[cfg(feature = "simulator")]
        Command::Simulate(args) => run_async(simulate(args)),
        Command::Run(args) => {
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_lowercase())
                .unwrap_or_else(|_| "kco".to_owned());
            match crate::config::Settings::from_args(&args, &hostname) {
                Ok(settings) => run_async(crate::operator::run(settings)),
                Err(e) => {
                    eprintln!("kco: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Crds {
            reference: true, ..
        } => {
            print!("{}", crate::crds::reference());
            ExitCode::SUCCESS
        }
        Command::Crds { out_dir, .. } => print_crds(out_dir.as_deref()),
        Command::Validate(args) => validate(&args),
        Command::Probe {
            url,
            timeout_seconds,
            ca_file,
            every_address,
        } => run_async(probe(crate::probe::Probe {
            url,
            timeout: std::time::Duration::from_secs(timeout_seconds),
            ca_file,
            every_address: every_address.and_then(|n| usize::try_from(n).ok()),
        })),
        Command::Version { output } => print_version(output),
        Command::Completion { shell } => {
            // Into memory first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kco", &mut script);
            print_bytes(&script)
        }
        Command::Man { out_dir } => match write_man_pages(&out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kco: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `kco probe`: every answer must be a 2xx within the timeout.
async fn probe(probe: crate::probe::Probe) -> anyhow::Result<()> {
    for line in crate::probe::run(&probe).await? {
        println!("{line}");
    }
    Ok(())
}

fn print_bytes(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kco: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_version(format: VersionFormat) -> ExitCode {
    let build = crate::version::build();
    let text = match format {
        VersionFormat::Text => build.to_string(),
        VersionFormat::Json => match serde_json::to_string_pretty(&build) {
            Ok(json) => json,
            Err(e) => {
                eprintln!("kco: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    print_bytes(format!("{text}\n").as_bytes())
}

/// `kco.1` and one `kco-<command>.1` per command (subcommands included).
fn write_man_pages(dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut command = Cli::command();
    // Building gives every subcommand its display name, `kco-<command>`.
    command.build();
    write_man_page(dir, &command)
}

fn write_man_page(dir: &std::path::Path, command: &clap::Command) -> Result<(), String> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name());
    let mut roff = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut roff)
        .map_err(|e| format!("cannot render the man page of {name}: {e}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, roff).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .try_for_each(|sub| write_man_page(dir, sub))
}

fn print_crds(out_dir: Option<&std::path::Path>) -> ExitCode {
    let result = match out_dir {
        None => crate::crds::render().map(|yaml| print!("{yaml}")),
        Some(dir) => crate::crds::files().and_then(|files| {
            files.into_iter().try_for_each(|(name, yaml)| {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kco: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kco: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kco: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn schema_import(file: &std::path::Path, output: Option<&std::path::Path>) -> ExitCode {
    let read = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    let json = match read {
        Ok(json) => json,
        Err(e) => {
            eprintln!("kco: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let imported = match schema::import_introspection(&json) {
        Ok(imported) => imported,
        Err(e) => {
            eprintln!("kco: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    for warning in &imported.warnings {
        eprintln!("warning: {warning}");
    }
    let written = match output {
        Some(path) => {
            std::fs::write(path, &imported.sdl).map_err(|e| (path.display().to_string(), e))
        }
        None => {
            print!("{}", imported.sdl);
            Ok(())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err((path, e)) => {
            eprintln!("kco: cannot write {path}: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(feature = "simulator")]
async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let sim = Simulator::start(args.control).await?;
    let mut addrs = args.nodes;
    let first = u32::from(args.first_ip);
    for i in 0..args.count {
        let ip = first.checked_add(i).map(Ipv4Addr::from).ok_or_else(|| {
            anyhow::anyhow!(
                "--count {} from --first-ip {} overflows",
                args.count,
                args.first_ip
            )
        })?;
        addrs.push(SocketAddr::new(IpAddr::V4(ip), args.port));
    }
    for addr in &addrs {
        sim.add_node(*addr, NodeState::default()).await?;
    }
    println!(
        "Mina simulator: control API at http://{} ; {} node(s){}",
        sim.control_addr(),
        addrs.len(),
        if addrs.is_empty() {
            String::new()
        } else {
            format!(" (GraphQL at http://{}/graphql ...)", addrs[0])
        }
    );
    crate::shutdown::requested().await;
    sim.shutdown().await;
    Ok(())
}

fn validate(args: &ValidateArgs) -> ExitCode {
    use crate::preflight::{self, Judgement, Unreadable};
    // Every file is read before any is judged: one that cannot be read is a
    // usage error, whatever the others hold.
    let mut entries = Vec::new();
    for file in &args.files {
        match preflight::read(file) {
            Ok(manifests) => entries.extend(manifests.into_iter().map(Ok)),
            Err(Unreadable::File(e)) => {
                eprintln!("kco: {e}");
                return ExitCode::from(2);
            }
            Err(Unreadable::Yaml(e)) => entries.push(Err(e)),
        }
    }
    let judged = if args.cluster {
        judge_on_cluster(&entries)
    } else {
        judge_offline(args, &entries)
    };
    let judged = match judged {
        Ok(judged) => judged,
        Err(e) => {
            eprintln!("kco: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rejected = false;
    for (entry, judgement) in entries.iter().zip(judged) {
        let manifest = match entry {
            Ok(manifest) => manifest,
            Err(broken) => {
                println!("{broken}");
                rejected = true;
                continue;
            }
        };
        let (file, object) = (&manifest.file, &manifest.object);
        match judgement {
            Some(Judgement::Accepted { warnings }) => {
                for warning in warnings {
                    println!("{file}: {object}: warning: {warning}");
                }
                println!("{file}: {object}: accepted");
            }
            Some(Judgement::Refused(problems)) => {
                rejected = true;
                for problem in problems {
                    println!("{file}: {object}: {problem}");
                }
            }
            Some(Judgement::Skipped) | None => println!(
                "{file}: {} {object}: skipped (not a TargetApp or TenantQuota)",
                manifest.kind
            ),
        }
    }
    if rejected {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

type Entry = Result<crate::preflight::Manifest, String>;

/// Each entry judged offline (`None` for a file that is not YAML).
fn judge_offline(
    args: &ValidateArgs,
    entries: &[Entry],
) -> Result<Vec<Option<crate::preflight::Judgement>>, String> {
    use crate::admission::query::QuerySchema;
    use crate::preflight::{self, Offline, Unreadable};
    let custom = match &args.schema {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) if text.trim_start().starts_with('{') => {
                let imported = schema::import_introspection(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Some(QuerySchema::from_sdl(&imported.sdl))
            }
            Ok(sdl) => Some(QuerySchema::from_sdl(&sdl)),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        },
    };
    let mut quota_manifests = Vec::new();
    for file in &args.quotas {
        match preflight::read(file) {
            Ok(manifests) if manifests.iter().any(|m| m.kind == "TenantQuota") => {
                quota_manifests.extend(manifests);
            }
            Ok(_) => return Err(format!("--quota {}: no TenantQuota in it", file.display())),
            Err(Unreadable::File(e) | Unreadable::Yaml(e)) => return Err(e),
        }
    }
    let quotas = preflight::quotas(&quota_manifests)
        .map_err(|problems| format!("a --quota is not valid:\n{}", problems.join("\n")))?;
    let namespaces = args
        .namespace_labels
        .iter()
        .map(|text| {
            preflight::namespace_labels(text).map_err(|e| format!("--namespace-labels {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut offline = Offline::new(custom, quotas, namespaces);
    Ok(entries
        .iter()
        .map(|entry| entry.as_ref().ok().map(|manifest| offline.judge(manifest)))
        .collect())
}

/// Each entry judged by the cluster of the current kubeconfig context.
fn judge_on_cluster(entries: &[Entry]) -> Result<Vec<Option<crate::preflight::Judgement>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        crate::tls::install_crypto_provider();
        let config = kube::Config::infer()
            .await
            .map_err(|e| format!("no cluster to ask: {e}"))?;
        let namespace = config.default_namespace.clone();
        let client =
            kube::Client::try_from(config).map_err(|e| format!("no cluster to ask: {e}"))?;
        let mut judged = Vec::with_capacity(entries.len());
        for entry in entries {
            judged.push(match entry {
                Ok(manifest) => {
                    Some(crate::preflight::on_cluster(&client, manifest, &namespace).await?)
                }
                Err(_) => None,
            });
        }
        Ok(judged)
    })
}
