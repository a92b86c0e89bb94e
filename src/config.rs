//! The operator's configuration: every setting is an environment variable and a
//! `kco run` flag. Invalid configuration stops start-up with a message naming the
//! setting.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::actions::Registry;
use crate::tenancy::{EndpointPolicy, Quota};

/// `kco run` flags; each also reads the environment variable named beside it.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Seconds one GraphQL poll may take (unless a TargetApp sets timeoutSeconds).
    #[arg(long, env = "GRAPHQL_TIMEOUT", default_value_t = 10)]
    pub graphql_timeout: u64,
    /// Retries of a failed poll within one polling interval (0 = no retry).
    #[arg(long, env = "GRAPHQL_MAX_RETRIES", default_value_t = 3)]
    pub graphql_max_retries: u32,
    /// Largest GraphQL response body read, in bytes; a larger one fails the poll.
    #[arg(long, env = "GRAPHQL_MAX_RESPONSE_BYTES", default_value_t = 1024 * 1024)]
    pub graphql_max_response_bytes: u64,
    /// Bytes all GraphQL responses being read on this replica may hold together;
    /// a poll that would need more is throttled.
    #[arg(long, env = "GRAPHQL_MAX_BYTES_IN_FLIGHT", default_value_t = crate::monitor::inflight::DEFAULT_REPLICA_BYTES)]
    pub graphql_max_bytes_in_flight: u64,
    /// Bytes one tenant's GraphQL responses being read may hold together (its
    /// share of GRAPHQL_MAX_BYTES_IN_FLIGHT); a poll that would need more is
    /// throttled, and other tenants are not.
    #[arg(long, env = "GRAPHQL_MAX_BYTES_IN_FLIGHT_PER_TENANT", default_value_t = crate::monitor::inflight::DEFAULT_TENANT_BYTES)]
    pub graphql_max_bytes_in_flight_per_tenant: u64,
    /// Targets polled more often than every this many seconds keep their
    /// connection open between polls; the others connect for each poll and hold
    /// no descriptor or buffers in between (0: no target keeps one).
    #[arg(long, env = "GRAPHQL_KEEP_ALIVE_BELOW", default_value_t = 10)]
    pub graphql_keep_alive_below: u64,
    /// Seconds between polls for TargetApps that do not set pollingInterval.
    #[arg(long, env = "DEFAULT_POLLING_INTERVAL", default_value_t = 30)]
    pub default_polling_interval: u32,
    /// Seconds one action may take unless the action sets its own timeout.
    #[arg(long, env = "ACTION_EXECUTION_TIMEOUT", default_value_t = 300)]
    pub action_execution_timeout: u64,
    /// Port of the admin server: /healthz, /readyz, /metrics, /stats.
    #[arg(long, env = "METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,
    /// Address the admin server binds to.
    #[arg(long, env = "ADMIN_BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub admin_bind_address: IpAddr,
    /// A file holding the bearer token that opens /stats to clients off the
    /// loopback (unset: /stats answers only on the loopback, e.g. kubectl
    /// port-forward). /stats shows every tenant's targets and errors.
    #[arg(long, env = "STATS_TOKEN_FILE")]
    pub stats_token_file: Option<PathBuf>,
    /// Kubeconfig file to use instead of the in-cluster configuration or $KUBECONFIG.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This replica's name, in Events, status and leases (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// Only watch TargetApps in this namespace (default: every namespace).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the leader and membership Leases (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Elect a leader for cluster-wide work (off: this replica never leads).
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Seconds the leader Lease holds without renewal.
    #[arg(long, env = "LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,
    /// Seconds the leader keeps acting without renewing; below LEASE_DURATION.
    #[arg(long, env = "LEASE_RENEW_DEADLINE", default_value_t = 10)]
    pub lease_renew_deadline: u64,
    /// Seconds between election attempts and renewals.
    #[arg(long, env = "LEASE_RETRY_PERIOD", default_value_t = 2)]
    pub lease_retry_period: u64,
    /// Shard polling across replicas by namespace (off: this replica polls every namespace).
    #[arg(long, env = "SHARDING", default_value_t = true, action = clap::ArgAction::Set)]
    pub sharding: bool,
    /// Seconds a membership Lease holds without renewal: the hand-off time after a
    /// replica dies.
    #[arg(long, env = "MEMBER_LEASE_DURATION", default_value_t = 10)]
    pub member_lease_duration: u64,
    /// Seconds between membership renewals (and re-reads of the membership).
    #[arg(long, env = "MEMBER_RENEW_PERIOD", default_value_t = 2)]
    pub member_renew_period: u64,
    /// Port of the admission webhook server (HTTPS); 0 turns the webhooks off.
    #[arg(long, env = "WEBHOOK_PORT", default_value_t = 8443)]
    pub webhook_port: u16,
    /// Address the webhook server binds to.
    #[arg(long, env = "WEBHOOK_BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub webhook_bind_address: IpAddr,
    /// Serve the certificate in this directory (tls.crt, tls.key; e.g. from
    /// cert-manager) instead of managing one; re-read when it changes.
    #[arg(long, env = "WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// The Secret (in POD_NAMESPACE) where KCO keeps its webhook CA and certificate.
    #[arg(long, env = "WEBHOOK_SECRET", default_value = "kco-webhook-tls")]
    pub webhook_secret: String,
    /// Name of the Validating- and MutatingWebhookConfiguration whose caBundle KCO keeps.
    #[arg(long, env = "WEBHOOK_CONFIG_NAME", default_value = "kco")]
    pub webhook_config_name: String,
    /// The webhook Service's name: the certificate is for <service>.<POD_NAMESPACE>.svc.
    #[arg(long, env = "WEBHOOK_SERVICE", default_value = "kco-webhook")]
    pub webhook_service: String,
    /// More names or IP addresses for the webhook certificate (comma-separated).
    #[arg(long, env = "WEBHOOK_CERT_HOSTS", value_delimiter = ',')]
    pub webhook_cert_hosts: Vec<String>,
    /// Lifetime of the managed webhook CA (Go duration); renewed in its last third.
    #[arg(long, env = "WEBHOOK_CA_VALIDITY", default_value = "8760h")]
    pub webhook_ca_validity: String,
    /// Lifetime of the managed serving certificate; renewed in its last third.
    #[arg(long, env = "WEBHOOK_CERT_VALIDITY", default_value = "2160h")]
    pub webhook_cert_validity: String,
    /// How often the leader checks the certificates and caBundles.
    #[arg(long, env = "WEBHOOK_CERT_CHECK_PERIOD", default_value = "1m")]
    pub webhook_cert_check_period: String,
    /// Default tenant quota: the actions tenants may use (comma-separated).
    #[arg(
        long,
        env = "DEFAULT_ALLOWED_ACTIONS",
        value_delimiter = ',',
        default_value = "restart_pod,scale_deployment,patch_resource,webhook"
    )]
    pub allowed_actions: Vec<String>,
    /// Default endpoint policy: more hosts absolute GraphQL URLs may name
    /// (exact or `*.suffix`, comma-separated).
    #[arg(long, env = "DEFAULT_ENDPOINT_ALLOWED_HOSTS", value_delimiter = ',')]
    pub endpoint_allowed_hosts: Vec<String>,
    /// Default endpoint policy: address ranges user-supplied URLs may reach even where
    /// they would be refused (comma-separated CIDRs; for development clusters).
    #[arg(long, env = "DEFAULT_ENDPOINT_ALLOWED_CIDRS", value_delimiter = ',')]
    pub endpoint_allowed_cidrs: Vec<String>,
    /// Default endpoint policy: absolute GraphQL URLs may name any public host.
    #[arg(long, env = "DEFAULT_ENDPOINT_ALLOW_EXTERNAL", default_value_t = false)]
    pub endpoint_allow_external: bool,
    /// Default endpoint policy: when set, the only hosts webhook actions may call
    /// (exact or `*.suffix`, comma-separated).
    #[arg(long, env = "DEFAULT_WEBHOOK_ALLOWED_HOSTS", value_delimiter = ',')]
    pub webhook_allowed_hosts: Vec<String>,
    /// The ServiceAccount names TargetApps' actions may run as (comma-separated;
    /// empty: any). Set it to the names KCO's RBAC lets it impersonate (the chart's
    /// `actions.serviceAccountNames`), so that other names are refused at admission
    /// with a clear reason rather than when an action runs.
    #[arg(long, env = "ACTION_SERVICE_ACCOUNTS", value_delimiter = ',')]
    pub action_service_accounts: Vec<String>,
    /// Test hook: answer HOST with IP instead of asking DNS (HOST=IP, repeatable).
    #[arg(
        long = "resolve",
        env = "KCO_RESOLVE",
        value_delimiter = ',',
        hide = true
    )]
    pub resolve: Vec<String>,
}

/// Validated settings, built once at start-up and shared read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub graphql_timeout: Duration,
    pub graphql_max_retries: u32,
    /// Targets polled more often than this keep their connection between polls.
    pub keep_alive_below: Duration,
    pub max_response_bytes: u64,
    /// Bytes in flight: (the replica's, each tenant's).
    pub bytes_in_flight: (u64, u64),
    pub default_polling_interval: Duration,
    pub action_execution_timeout: Duration,
    pub admin_address: SocketAddr,
    /// The file of the token that opens /stats off the loopback.
    pub stats_token_file: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub instance: String,
    pub namespace: Option<String>,
    /// Namespace of the leader and membership Leases.
    pub lease_namespace: String,
    /// None: leader election off.
    pub election: Option<crate::election::Timing>,
    /// None: sharding off (this replica polls everything).
    pub sharding: Option<crate::shard::Timing>,
    /// None: the admission webhooks are off.
    pub webhooks: Option<WebhookSettings>,
    /// The quota of namespaces no TenantQuota selects.
    pub default_quota: Quota,
    /// Host names answered without DNS (tests).
    pub dns_overrides: Vec<(String, IpAddr)>,
    /// The ServiceAccount names actions may run as (empty: any).
    pub action_accounts: Vec<String>,
    /// How often poll credentials (`spec.auth`) are read again from their Secret.
    pub credentials_refresh: Duration,
}

/// How often poll credentials are read again: a rotated Secret is in use within
/// this time.
pub const CREDENTIALS_REFRESH: Duration = Duration::from_secs(60);

/// The admission webhook server and its certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub address: SocketAddr,
    /// Mounted certificate directory; None: KCO manages certificates in `secret`.
    pub cert_dir: Option<PathBuf>,
    pub secret: String,
    pub config_name: String,
    /// Names and addresses in the serving certificate.
    pub hosts: Vec<String>,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    pub check_period: Duration,
}

/// A setting that is out of range, with the variable that sets it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {setting}={value}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub value: String,
    pub reason: &'static str,
}

fn check<T: ToString>(
    setting: &'static str,
    value: T,
    ok: bool,
    reason: &'static str,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            setting,
            value: value.to_string(),
            reason,
        })
    }
}

impl Settings {
    /// Checks every setting; `hostname` names the replica when POD_NAME is unset.
    pub fn from_args(args: &RunArgs, hostname: &str) -> Result<Self, ConfigError> {
        let a = args;
        check(
            "GRAPHQL_TIMEOUT",
            a.graphql_timeout,
            (1..=300).contains(&a.graphql_timeout),
            "must be 1..=300 seconds",
        )?;
        check(
            "GRAPHQL_MAX_RETRIES",
            a.graphql_max_retries,
            a.graphql_max_retries <= 10,
            "must be 0..=10",
        )?;
        check(
            "GRAPHQL_KEEP_ALIVE_BELOW",
            a.graphql_keep_alive_below,
            a.graphql_keep_alive_below <= 3600,
            "must be 0..=3600 seconds",
        )?;
        check(
            "GRAPHQL_MAX_RESPONSE_BYTES",
            a.graphql_max_response_bytes,
            (1024..=64 * 1024 * 1024).contains(&a.graphql_max_response_bytes),
            "must be 1 KiB..=64 MiB",
        )?;
        check(
            "GRAPHQL_MAX_BYTES_IN_FLIGHT_PER_TENANT",
            a.graphql_max_bytes_in_flight_per_tenant,
            a.graphql_max_bytes_in_flight_per_tenant >= a.graphql_max_response_bytes,
            "must be at least GRAPHQL_MAX_RESPONSE_BYTES (one whole response)",
        )?;
        check(
            "GRAPHQL_MAX_BYTES_IN_FLIGHT",
            a.graphql_max_bytes_in_flight,
            (a.graphql_max_bytes_in_flight_per_tenant..=1 << 40)
                .contains(&a.graphql_max_bytes_in_flight),
            "must be at least GRAPHQL_MAX_BYTES_IN_FLIGHT_PER_TENANT (and at most 1 TiB)",
        )?;
        check(
            "DEFAULT_POLLING_INTERVAL",
            a.default_polling_interval,
            (1..=86_400).contains(&a.default_polling_interval),
            "must be 1..=86400 seconds",
        )?;
        check(
            "ACTION_EXECUTION_TIMEOUT",
            a.action_execution_timeout,
            (1..=3600).contains(&a.action_execution_timeout),
            "must be 1..=3600 seconds",
        )?;
        check(
            "METRICS_PORT",
            a.metrics_port,
            a.metrics_port != 0,
            "must be a port number (1-65535)",
        )?;
        let instance = a.instance.clone().unwrap_or_else(|| hostname.to_owned());
        check(
            "POD_NAME",
            &instance,
            is_dns_label(&instance),
            "must be a DNS label (lower case, digits, '-')",
        )?;
        check(
            "LEASE_DURATION",
            a.lease_duration,
            (2..=300).contains(&a.lease_duration),
            "must be 2..=300 seconds",
        )?;
        check(
            "LEASE_RENEW_DEADLINE",
            a.lease_renew_deadline,
            a.lease_renew_deadline >= 1 && a.lease_renew_deadline < a.lease_duration,
            "must be at least 1 and below LEASE_DURATION",
        )?;
        check(
            "LEASE_RETRY_PERIOD",
            a.lease_retry_period,
            a.lease_retry_period >= 1 && a.lease_retry_period < a.lease_renew_deadline,
            "must be at least 1 and below LEASE_RENEW_DEADLINE",
        )?;
        check(
            "MEMBER_LEASE_DURATION",
            a.member_lease_duration,
            (2..=300).contains(&a.member_lease_duration),
            "must be 2..=300 seconds",
        )?;
        check(
            "MEMBER_RENEW_PERIOD",
            a.member_renew_period,
            a.member_renew_period >= 1 && a.member_renew_period * 2 <= a.member_lease_duration,
            "must be at least 1 and at most half of MEMBER_LEASE_DURATION",
        )?;
        check(
            "POD_NAMESPACE",
            &a.lease_namespace,
            is_dns_label(&a.lease_namespace),
            "must be a namespace name",
        )?;
        let duration = |setting: &'static str, text: &str, min: Duration| {
            match crate::triggers::parse_duration(text) {
                Ok(d) if d >= min => Ok(d),
                _ => Err(ConfigError {
                    setting,
                    value: text.to_owned(),
                    reason: "must be a Go duration (90s, 2160h) of at least 1s",
                }),
            }
        };
        let ca_validity = duration(
            "WEBHOOK_CA_VALIDITY",
            &a.webhook_ca_validity,
            Duration::from_secs(3),
        )?;
        let cert_validity = duration(
            "WEBHOOK_CERT_VALIDITY",
            &a.webhook_cert_validity,
            Duration::from_secs(3),
        )?;
        check(
            "WEBHOOK_CERT_VALIDITY",
            &a.webhook_cert_validity,
            cert_validity <= ca_validity,
            "must not exceed WEBHOOK_CA_VALIDITY",
        )?;
        let check_period = duration(
            "WEBHOOK_CERT_CHECK_PERIOD",
            &a.webhook_cert_check_period,
            Duration::from_secs(1),
        )?;
        check(
            "WEBHOOK_CERT_CHECK_PERIOD",
            &a.webhook_cert_check_period,
            check_period < cert_validity / 3,
            "must be shorter than a third of WEBHOOK_CERT_VALIDITY",
        )?;
        let mut hosts = vec![
            format!("{}.{}.svc", a.webhook_service, a.lease_namespace),
            format!(
                "{}.{}.svc.cluster.local",
                a.webhook_service, a.lease_namespace
            ),
        ];
        hosts.extend(
            a.webhook_cert_hosts
                .iter()
                .filter(|h| !h.is_empty())
                .cloned(),
        );
        let webhooks = (a.webhook_port != 0).then(|| WebhookSettings {
            address: SocketAddr::new(a.webhook_bind_address, a.webhook_port),
            cert_dir: a.webhook_cert_dir.clone(),
            secret: a.webhook_secret.clone(),
            config_name: a.webhook_config_name.clone(),
            hosts,
            ca_validity,
            cert_validity,
            check_period,
        });
        let names = Registry::builtin().names();
        for action in &a.allowed_actions {
            check(
                "DEFAULT_ALLOWED_ACTIONS",
                action,
                names.contains(&action.as_str()),
                "not a built-in action",
            )?;
        }
        let mut allowed_cidrs = Vec::new();
        for cidr in a.endpoint_allowed_cidrs.iter().filter(|c| !c.is_empty()) {
            match cidr.parse() {
                Ok(net) => allowed_cidrs.push(net),
                Err(_) => check(
                    "DEFAULT_ENDPOINT_ALLOWED_CIDRS",
                    cidr,
                    false,
                    "must be CIDRs such as 10.0.0.0/8",
                )?,
            }
        }
        let mut dns_overrides = Vec::new();
        for entry in &a.resolve {
            match entry
                .split_once('=')
                .map(|(h, ip)| (h, ip.parse::<IpAddr>()))
            {
                Some((host, Ok(ip))) if !host.is_empty() => {
                    dns_overrides.push((host.to_ascii_lowercase(), ip))
                }
                _ => check("KCO_RESOLVE", entry, false, "must be HOST=IP")?,
            }
        }
        let hosts = |list: &[String]| -> Vec<String> {
            list.iter().filter(|h| !h.is_empty()).cloned().collect()
        };
        let default_quota = Quota {
            allowed_actions: a.allowed_actions.clone(),
            endpoint_policy: EndpointPolicy {
                allowed_hosts: hosts(&a.endpoint_allowed_hosts),
                allowed_cidrs,
                allow_external: a.endpoint_allow_external,
                // Empty: not narrowed (a default quota that wants no webhooks leaves
                // `webhook` out of the allowed actions).
                webhook_allowed_hosts: Some(hosts(&a.webhook_allowed_hosts))
                    .filter(|list| !list.is_empty()),
            },
        };
        let action_accounts = hosts(&a.action_service_accounts);
        for account in &action_accounts {
            check(
                "ACTION_SERVICE_ACCOUNTS",
                account,
                crate::names::subdomain(account).is_ok(),
                "each must be a ServiceAccount name",
            )?;
        }
        Ok(Self {
            webhooks,
            action_accounts,
            lease_namespace: a.lease_namespace.clone(),
            election: a.leader_election.then(|| crate::election::Timing {
                lease_duration: Duration::from_secs(a.lease_duration),
                renew_deadline: Duration::from_secs(a.lease_renew_deadline),
                retry_period: Duration::from_secs(a.lease_retry_period),
            }),
            sharding: a.sharding.then(|| crate::shard::Timing {
                lease_duration: Duration::from_secs(a.member_lease_duration),
                renew_period: Duration::from_secs(a.member_renew_period),
            }),
            default_quota,
            dns_overrides,
            graphql_timeout: Duration::from_secs(a.graphql_timeout),
            graphql_max_retries: a.graphql_max_retries,
            keep_alive_below: Duration::from_secs(a.graphql_keep_alive_below),
            max_response_bytes: a.graphql_max_response_bytes,
            bytes_in_flight: (
                a.graphql_max_bytes_in_flight,
                a.graphql_max_bytes_in_flight_per_tenant,
            ),
            default_polling_interval: Duration::from_secs(u64::from(a.default_polling_interval)),
            action_execution_timeout: Duration::from_secs(a.action_execution_timeout),
            admin_address: SocketAddr::new(a.admin_bind_address, a.metrics_port),
            stats_token_file: a.stats_token_file.clone(),
            kubeconfig: a.kubeconfig.clone(),
            instance,
            namespace: a.namespace.clone(),
            credentials_refresh: CREDENTIALS_REFRESH,
        })
    }

    /// Settings for tests: short timeouts, admin server on a free loopback port.
    pub fn test() -> Self {
        Self {
            graphql_timeout: Duration::from_secs(2),
            graphql_max_retries: 1,
            keep_alive_below: Duration::from_secs(10),
            max_response_bytes: 1024 * 1024,
            bytes_in_flight: (
                crate::monitor::inflight::DEFAULT_REPLICA_BYTES,
                crate::monitor::inflight::DEFAULT_TENANT_BYTES,
            ),
            default_polling_interval: Duration::from_secs(1),
            action_execution_timeout: Duration::from_secs(5),
            admin_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            stats_token_file: None,
            kubeconfig: None,
            instance: "kco-test".to_owned(),
            namespace: None,
            lease_namespace: "default".to_owned(),
            election: None,
            sharding: None,
            webhooks: None,
            default_quota: Quota::default(),
            dns_overrides: Vec::new(),
            action_accounts: Vec::new(),
            credentials_refresh: CREDENTIALS_REFRESH,
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("kco").chain(args.iter().copied())).unwrap();
        Settings::from_args(&cli.run, "kco-7f9c-abcde")
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.graphql_timeout, Duration::from_secs(10));
        // The operator settings' defaults of the original design.
        assert_eq!(s.graphql_max_retries, 3);
        assert_eq!(s.action_execution_timeout, Duration::from_secs(300));
        assert_eq!(s.max_response_bytes, 1024 * 1024);
        assert_eq!(s.bytes_in_flight, (256 << 20, 32 << 20));
        assert_eq!(s.default_polling_interval, Duration::from_secs(30));
        assert_eq!(s.admin_address.port(), 8080);
        assert_eq!(s.instance, "kco-7f9c-abcde");
        assert_eq!(s.default_quota, Quota::default());
        assert_eq!(
            s.election.map(|t| t.lease_duration),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            s.sharding.map(|t| t.renew_period),
            Some(Duration::from_secs(2))
        );
        let off = parse(&[
            "--leader-election",
            "false",
            "--sharding",
            "false",
            "--webhook-port",
            "0",
        ])
        .unwrap();
        assert_eq!(
            (off.election, off.sharding, off.webhooks),
            (None, None, None)
        );
        let hooks = s.webhooks.unwrap();
        assert_eq!(hooks.address.port(), 8443);
        assert_eq!(
            hooks.hosts,
            [
                "kco-webhook.default.svc",
                "kco-webhook.default.svc.cluster.local"
            ]
        );
        assert_eq!(hooks.cert_validity, Duration::from_secs(2160 * 3600));
    }

    #[test]
    fn bad_values_name_their_setting() {
        for (args, setting) in [
            (&["--graphql-timeout", "0"][..], "GRAPHQL_TIMEOUT"),
            (&["--graphql-max-retries", "50"][..], "GRAPHQL_MAX_RETRIES"),
            (
                &["--graphql-keep-alive-below", "86400"][..],
                "GRAPHQL_KEEP_ALIVE_BELOW",
            ),
            (
                &["--graphql-max-response-bytes", "10"][..],
                "GRAPHQL_MAX_RESPONSE_BYTES",
            ),
            (
                &["--graphql-max-bytes-in-flight-per-tenant", "1024"][..],
                "GRAPHQL_MAX_BYTES_IN_FLIGHT_PER_TENANT",
            ),
            (
                &[
                    "--graphql-max-bytes-in-flight",
                    "2000000",
                    "--graphql-max-bytes-in-flight-per-tenant",
                    "3000000",
                ][..],
                "GRAPHQL_MAX_BYTES_IN_FLIGHT",
            ),
            (
                &["--default-polling-interval", "0"][..],
                "DEFAULT_POLLING_INTERVAL",
            ),
            (
                &["--action-execution-timeout", "0"][..],
                "ACTION_EXECUTION_TIMEOUT",
            ),
            (&["--metrics-port", "0"][..], "METRICS_PORT"),
            (&["--instance", "Not_A_Label"][..], "POD_NAME"),
            (
                &["--allowed-actions", "restart_pod,reboot"][..],
                "DEFAULT_ALLOWED_ACTIONS",
            ),
            (
                &["--endpoint-allowed-cidrs", "10.0.0.0/33"][..],
                "DEFAULT_ENDPOINT_ALLOWED_CIDRS",
            ),
            (&["--resolve", "example.com"][..], "KCO_RESOLVE"),
            (
                &["--lease-renew-deadline", "20"][..],
                "LEASE_RENEW_DEADLINE",
            ),
            (&["--member-renew-period", "6"][..], "MEMBER_RENEW_PERIOD"),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.setting, setting, "{args:?}");
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid configuration: {setting}="))
            );
        }
    }
}
