//! Kubernetes object names, checked by the apiserver's own rules before KCO puts
//! one into a request path: a name that is not a name (`web/scale`,
//! `../../kube-system/configmaps/x`) would address a subresource or another
//! namespace. Pure logic.

/// Most characters in a DNS-1123 subdomain (most kinds' names).
pub const MAX_SUBDOMAIN: usize = 253;
/// Most characters in a DNS-1123 label (container names, Services, namespaces).
pub const MAX_LABEL: usize = 63;

/// Why `name` is not a DNS-1123 subdomain: lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit, at most 253 characters, and every
/// dot-separated part a label.
pub fn subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SUBDOMAIN {
        return Err(format!(
            "{name:?} is not a valid name: it must have 1 to {MAX_SUBDOMAIN} characters"
        ));
    }
    if name.split('.').all(is_label) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (RFC 1123 subdomain)"
        ))
    }
}

/// Why `name` is not a DNS-1123 label: lowercase letters, digits and `-`, starting
/// and ending with a letter or digit, at most 63 characters.
pub fn label(name: &str) -> Result<(), String> {
    if is_label(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: 1 to {MAX_LABEL} lowercase letters, digits and '-', starting and ending with a letter or digit (RFC 1123 label)"
        ))
    }
}

fn is_label(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Why `key` is not a label key: an optional DNS subdomain prefix and `/`, then
/// a name of 1 to 63 letters, digits, `-`, `_` and `.`, starting and ending with
/// a letter or digit (`app`, `app.kubernetes.io/name`).
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && subdomain(prefix).is_err()
    {
        return Err(format!(
            "{key:?} is not a label key: its prefix must be a DNS subdomain (RFC 1123)"
        ));
    }
    if !name.is_empty() && is_label_value(name) {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a label key: 1 to {MAX_LABEL} letters, digits, '-', '_' and '.', starting and ending with a letter or digit, after an optional prefix and '/'"
        ))
    }
}

/// Why `value` is not a label value: empty, or 1 to 63 letters, digits, `-`,
/// `_` and `.`, starting and ending with a letter or digit.
pub fn label_value(value: &str) -> Result<(), String> {
    if is_label_value(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a label value: at most {MAX_LABEL} letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= MAX_LABEL
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric))
}

/// Why `kind` is not a Kind: an ASCII letter followed by letters and digits
/// (`Deployment`, `ConfigMap`), at most 63 characters.
pub fn kind(kind: &str) -> Result<(), String> {
    let ok = kind.len() <= MAX_LABEL
        && kind.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind:?} is not a kind: letters and digits, starting with a letter (Deployment, ConfigMap)"
        ))
    }
}

/// Why `api_version` is not `version` or `group/version` (a DNS subdomain group and
/// a label version such as `v1`, `apps/v1`).
pub fn api_version(api_version: &str) -> Result<(), String> {
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) => (Some(group), version),
        None => (None, api_version),
    };
    let ok = group.is_none_or(|g| subdomain(g).is_ok()) && is_label(version);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{api_version:?} is not an apiVersion: a version such as v1, or group/version such as apps/v1"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_are_the_apiservers_label_keys() {
        for good in ["app", "app.kubernetes.io/name", "a_b-c.d", "Zone", "x/y"] {
            assert_eq!(label_key(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_LABEL + 1);
        for bad in [
            "",
            "/app",
            "app/",
            "-app",
            "app-",
            "a b",
            "a/b/c",
            "UPPER.example/x",
            long.as_str(),
            "a\"\nb",
        ] {
            assert!(label_key(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn names_are_names() {
        let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(longest.len(), 253);
        for good in ["web", "mina-0", "a.b.c", "x1", &longest] {
            assert_eq!(subdomain(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "web/scale",
            "mina-0/ephemeralcontainers",
            "../../../kube-system/configmaps/x",
            "..",
            ".",
            "a..b",
            "Web",
            "-web",
            "web-",
            "web?watch=true",
            "web%2Fscale",
            "we b",
            "wéb",
            &format!("{longest}c"),
            &format!("{}.b", "a".repeat(64)),
        ] {
            assert!(subdomain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_have_no_dots() {
        assert_eq!(label("mina"), Ok(()));
        for bad in ["a.b", "", "Mina", &"a".repeat(64), "a/b"] {
            assert!(label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kinds_and_api_versions() {
        assert_eq!(kind("Deployment"), Ok(()));
        assert_eq!(kind("ConfigMap"), Ok(()));
        for bad in ["", "deploy/scale", "1Pod", "Pod s", "Pod%2F"] {
            assert!(kind(bad).is_err(), "{bad:?}");
        }
        for good in [
            "v1",
            "apps/v1",
            "autoscaling/v2",
            "operator.kco.local/v1alpha1",
        ] {
            assert_eq!(api_version(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "apps/",
            "/v1",
            "apps/v1/x",
            "../v1",
            "Apps/v1",
            "apps/V1",
        ] {
            assert!(api_version(bad).is_err(), "{bad:?}");
        }
    }
}
