//! Where the tools built by `tests/tools/install.sh` live. The versions come from
//! `tests/tools/versions.env`, the same file the script reads, so the two agree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{HarnessError, Result};

/// The cache of built tools for the pinned versions.
#[derive(Debug, Clone)]
pub struct Tools {
    pub dir: PathBuf,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn versions() -> Result<HashMap<String, String>> {
    let path = repo_root().join("tests/tools/versions.env");
    let text =
        std::fs::read_to_string(&path).map_err(super::io(format!("read {}", path.display())))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

impl Tools {
    /// The tools directory: `$KCO_TOOLS_DIR` if set, else the cache key the
    /// install script uses under `$KCO_CACHE_DIR` (default `~/.cache/kco`).
    pub fn locate() -> Result<Self> {
        if let Some(dir) = std::env::var_os("KCO_TOOLS_DIR") {
            return Ok(Self { dir: dir.into() });
        }
        let v = versions()?;
        let get = |k: &str| {
            v.get(k)
                .cloned()
                .ok_or_else(|| HarnessError::Tools(format!("tests/tools/versions.env has no {k}")))
        };
        let key = format!(
            "k8s-{}_etcd-{}_helm-{}_kwok-{}_mina-sdk-{}",
            get("KUBERNETES_VERSION")?,
            get("ETCD_VERSION")?,
            get("HELM_VERSION")?,
            get("KWOK_VERSION")?,
            get("MINA_SDK_VERSION")?
        );
        let root = match std::env::var_os("KCO_CACHE_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                    .ok_or_else(|| {
                        HarnessError::Tools("neither KCO_CACHE_DIR nor HOME is set".into())
                    })?;
                cache.join("kco")
            }
        };
        Ok(Self {
            dir: root.join("tools").join(key),
        })
    }

    /// The path of a built binary, or an error saying how to build it.
    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join("bin").join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(HarnessError::Tools(format!(
                "{name} not found at {}: run `./build.sh tools` (or `./build.sh test`) to build the local control plane",
                path.display()
            )))
        }
    }

    /// The Mina daemon's introspection file from the pinned `mina-sdk` package,
    /// fetched into the cache by the install script if it is not there yet.
    pub fn mina_introspection(&self) -> Result<PathBuf> {
        self.mina_sdk_file("mina-sdk/graphql_schema.json")
    }

    /// The queries the pinned `mina-sdk` package's daemon client sends
    /// (`mina_sdk/daemon/queries.py`), fetched as [`Self::mina_introspection`].
    pub fn mina_sdk_queries(&self) -> Result<PathBuf> {
        self.mina_sdk_file("mina-sdk/queries.py")
    }

    /// The GraphQL documents of the pinned `o1js` package's client, as the
    /// package ships them (`dist/node/lib/mina/v1/graphql.js`), fetched as
    /// [`Self::mina_introspection`].
    pub fn o1js_queries(&self) -> Result<PathBuf> {
        let version = versions()?.get("O1JS_VERSION").cloned().ok_or_else(|| {
            HarnessError::Tools("tests/tools/versions.env has no O1JS_VERSION".into())
        })?;
        self.mina_sdk_file(&format!("o1js/{version}/graphql.js"))
    }

    /// A file the install script's `mina-sdk` step fetches (the Mina schema and
    /// the client libraries' queries), fetched now if it is missing.
    fn mina_sdk_file(&self, file: &str) -> Result<PathBuf> {
        let path = self.dir.join(file);
        if !path.is_file() {
            let script = repo_root().join("tests/tools/install.sh");
            let status = std::process::Command::new("bash")
                .arg(&script)
                .arg("mina-sdk")
                .env("KCO_TOOLS_DIR", &self.dir)
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(super::io(format!("run {}", script.display())))?;
            if !status.success() || !path.is_file() {
                return Err(HarnessError::Tools(format!(
                    "could not fetch {file} into {} ({status})",
                    path.display()
                )));
            }
        }
        Ok(path)
    }
}
