//! Checks the real API server makes before it touches the store: object names, the name and
//! namespace in a body against the URL, annotation size, query parameters. Each failure is a
//! clear `Status`, never a silent ignore.

use serde_json::Value;

/// The largest total size of an object's annotations (kube-apiserver's `TotalAnnotationSizeLimitB`).
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// Which naming rule a resource's names follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1035 label: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 (Services).
    Dns1035Label,
    /// DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 (Namespaces).
    Dns1123Label,
    /// DNS-1123 subdomain: labels joined by dots, at most 253 (Pods, Nodes, EndpointSlices).
    Dns1123Subdomain,
}

impl NameRule {
    /// The rule for a resource (its plural name).
    pub fn for_resource(resource: &str) -> Self {
        match resource {
            "services" => NameRule::Dns1035Label,
            "namespaces" => NameRule::Dns1123Label,
            _ => NameRule::Dns1123Subdomain,
        }
    }
}

fn label_ok(s: &str, first_alpha: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && (if first_alpha {
            b[0].is_ascii_lowercase()
        } else {
            b[0].is_ascii_alphanumeric()
        })
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Why `name` breaks `rule`, if it does.
pub fn check_name(name: &str, rule: NameRule) -> Option<String> {
    let ok = match rule {
        NameRule::Dns1035Label => label_ok(name, true),
        NameRule::Dns1123Label => label_ok(name, false),
        NameRule::Dns1123Subdomain => {
            name.len() <= 253 && name.split('.').all(|l| label_ok(l, false))
        }
    };
    (!ok).then(|| match rule {
        NameRule::Dns1035Label => format!(
            "Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric \
             characters or '-', start with an alphabetic character, and end with an alphanumeric \
             character (at most 63)"
        ),
        NameRule::Dns1123Label => format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case \
             alphanumeric characters or '-', and must start and end with an alphanumeric character \
             (at most 63)"
        ),
        NameRule::Dns1123Subdomain => format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
             character (at most 253)"
        ),
    })
}

/// The total size of an object's annotations (keys and values), as the API server counts it.
pub fn annotation_bytes(object: &Value) -> usize {
    object["metadata"]["annotations"]
        .as_object()
        .map(|a| {
            a.iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0)
}

/// A query parameter that must be a non-negative integer when present.
pub fn number_param(name: &str, value: Option<String>) -> Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}: {v:?} is not a non-negative integer")),
    }
}

/// A query parameter that must be a boolean when present.
pub fn bool_param(name: &str, value: Option<String>) -> Result<bool, String> {
    match value.as_deref() {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(v) => Err(format!("{name}: {v:?} is not a boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_api_servers_rules() {
        for bad in ["a/b", "..", "UPPER_case", "héllo", "-a", "a-", ""] {
            assert!(check_name(bad, NameRule::Dns1035Label).is_some(), "{bad}");
            assert!(
                check_name(bad, NameRule::Dns1123Subdomain).is_some(),
                "{bad}"
            );
        }
        assert!(check_name(&"a".repeat(64), NameRule::Dns1123Label).is_some());
        assert!(check_name("1abc", NameRule::Dns1035Label).is_some());
        assert!(check_name("1abc", NameRule::Dns1123Label).is_none());
        assert!(check_name("web-1", NameRule::Dns1035Label).is_none());
        assert!(check_name("node-a.example.com", NameRule::Dns1123Subdomain).is_none());
        assert!(check_name(&"a".repeat(300), NameRule::Dns1123Subdomain).is_some());
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(number_param("limit", Some("10".into())), Ok(Some(10)));
        assert!(number_param("limit", Some("abc".into())).is_err());
        assert_eq!(bool_param("watch", Some("true".into())), Ok(true));
        assert!(bool_param("watch", Some("maybe".into())).is_err());
    }
}
