//! Registers the embedded Mina schema with cynic, so that KCO's built-in health
//! query is type-checked against it at compile time (`src/schema/health.rs`),
//! and records what build this is (`kco version`, `src/version.rs`).
//!
//! The revision and build date come from the environment, never from `.git`:
//! release builds (`./build.sh image`, the Containerfile, the release workflow)
//! set `KCO_GIT_REVISION` and `SOURCE_DATE_EPOCH` (the commit's time, so that the
//! same commit builds the same binary); other builds say "unknown", and a commit
//! does not rebuild them.

use std::env;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/schema/mina.graphql");
    cynic_codegen::register_schema("mina")
        .from_sdl_file("src/schema/mina.graphql")?
        .as_default()?;
    build_info()
}

fn build_info() -> Result<(), Box<dyn std::error::Error>> {
    for name in ["KCO_VERSION", "KCO_GIT_REVISION", "SOURCE_DATE_EPOCH"] {
        println!("cargo:rerun-if-env-changed={name}");
    }
    let given = |name: &str| env::var(name).ok().filter(|v| !v.is_empty());
    let version = given("KCO_VERSION").unwrap_or(env::var("CARGO_PKG_VERSION")?);
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
    {
        return Err(format!("KCO_VERSION {version:?} is not a version").into());
    }
    let revision = given("KCO_GIT_REVISION").unwrap_or_else(|| "unknown".to_owned());
    if revision != "unknown"
        && !(revision.len() <= 40 && revision.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(format!("KCO_GIT_REVISION {revision:?} is not a commit hash").into());
    }
    let date = match given("SOURCE_DATE_EPOCH") {
        Some(epoch) => rfc3339(
            epoch
                .parse()
                .map_err(|e| format!("SOURCE_DATE_EPOCH {epoch:?}: {e}"))?,
        ),
        None => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=KCO_BUILD_VERSION={version}");
    println!("cargo:rustc-env=KCO_BUILD_REVISION={revision}");
    println!("cargo:rustc-env=KCO_BUILD_DATE={date}");
    Ok(())
}

/// Seconds since the Unix epoch as an RFC 3339 UTC time (days to a civil date
/// by Howard Hinnant's algorithm).
fn rfc3339(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}
