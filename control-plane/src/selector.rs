//! Label and field selectors, as list and watch requests carry them.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector (`a=b,c!=d,e in (f,g),!h`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits at commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

fn set(values: &str) -> Result<Vec<String>, String> {
    let inner = values
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| format!("expected (values) in {values:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl LabelSelector {
    /// Parses a selector; an empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for t in terms(s) {
            let req = if let Some(k) = t.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_owned())
            } else if let Some((k, v)) = t.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = t.split_once("==") {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = t.split_once('=') {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = t.split_once(" notin ") {
                Requirement::NotIn(k.trim().to_owned(), set(v)?)
            } else if let Some((k, v)) = t.split_once(" in ") {
                Requirement::In(k.trim().to_owned(), set(v)?)
            } else {
                Requirement::Exists(t.to_owned())
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v),
            Requirement::NotEquals(k, v) => get(k) != Some(v),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

/// A field selector over `metadata.name`, `metadata.namespace` and `spec.nodeName`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `a=b,c!=d`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for t in terms(s) {
            let (k, eq, v) = if let Some((k, v)) = t.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = t.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = t.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector term {t:?}"));
            };
            let k = k.trim();
            if !matches!(k, "metadata.name" | "metadata.namespace" | "spec.nodeName") {
                return Err(format!("field label not supported: {k}"));
            }
            out.push((k.to_owned(), eq, v.trim().to_owned()));
        }
        Ok(Self(out))
    }

    /// Whether an object satisfies every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let actual = match k.as_str() {
                "metadata.name" => &object["metadata"]["name"],
                "metadata.namespace" => &object["metadata"]["namespace"],
                _ => &object["spec"]["nodeName"],
            };
            (actual.as_str().unwrap_or_default() == v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let yes = [
            "app=web",
            "app==web",
            "tier!=back",
            "app in (web,db)",
            "x notin (y)",
            "app",
            "!x",
            "app=web,!service.kubernetes.io/headless",
            "",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&o), "{s}");
        }
        let no = [
            "app=db",
            "app!=web",
            "app notin (web)",
            "x",
            "!app",
            "tier in (back)",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&o), "{s}");
        }
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "n1", "namespace": "ns"}, "spec": {"nodeName": "a"}});
        assert!(FieldSelector::parse("metadata.name=n1")
            .unwrap()
            .matches(&o));
        assert!(!FieldSelector::parse("metadata.name=n2")
            .unwrap()
            .matches(&o));
        assert!(
            FieldSelector::parse("spec.nodeName!=b,metadata.namespace=ns")
                .unwrap()
                .matches(&o)
        );
        assert!(FieldSelector::parse("spec.bogus=x").is_err());
    }
}
