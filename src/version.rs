//! What build this is, for `kco version`, `kco --version`, the
//! `operator_kco_build_info` metric and the operator's first log line. Release
//! builds are given their version, commit and date (build.rs); other builds say
//! "unknown".

use serde::Serialize;

/// The version (the release's, or Cargo.toml's).
pub const VERSION: &str = env!("KCO_BUILD_VERSION");
/// The git commit it was built from, or "unknown".
pub const REVISION: &str = env!("KCO_BUILD_REVISION");
/// When its commit was made (RFC 3339, UTC), or "unknown".
pub const BUILD_DATE: &str = env!("KCO_BUILD_DATE");

/// The build, as `kco version -o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub version: &'static str,
    pub revision: &'static str,
    pub build_date: &'static str,
    /// `<os>/<arch>`, as Go tools print it (`linux/x86_64`).
    pub platform: String,
}

/// This binary's build.
pub fn build() -> BuildInfo {
    BuildInfo {
        version: VERSION,
        revision: REVISION,
        build_date: BUILD_DATE,
        platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kco {}", self.version)?;
        writeln!(f, "revision:   {}", self.revision)?;
        writeln!(f, "build date: {}", self.build_date)?;
        write!(f, "platform:   {}", self.platform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_carry_every_field() {
        let info = build();
        let text = info.to_string();
        assert!(text.starts_with(&format!("kco {VERSION}\n")), "{text}");
        assert!(text.contains(&format!("revision:   {REVISION}")), "{text}");
        let json = serde_json::to_value(&info).unwrap_or_default();
        assert_eq!(json["version"], VERSION);
        assert_eq!(json["revision"], REVISION);
        assert_eq!(json["buildDate"], BUILD_DATE);
        assert_eq!(
            json["platform"],
            format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)
        );
    }
}
