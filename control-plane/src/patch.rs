//! Patches: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

use serde_json::Value;

/// Applies a JSON merge patch: objects merge key by key, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {pointer:?}"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("path /{t} not found"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("bad array index {t:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into /{t}")),
        };
    }
    Ok(cur)
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let toks = tokens(path)?;
    let (last, init) = toks
        .split_last()
        .ok_or("cannot remove the whole document")?;
    match parent(doc, init)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("path {path} not found")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("bad array index {last:?}"))?;
            (i < a.len())
                .then(|| a.remove(i))
                .ok_or_else(|| format!("index {i} out of range"))
        }
        _ => Err(format!("path {path} not found")),
    }
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let toks = tokens(path)?;
    let Some((last, init)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse()
                    .map_err(|_| format!("bad array index {last:?}"))?
            };
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("cannot add at {path}")),
    }
}

/// Applies a JSON patch (a list of operations) all or nothing.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is a list of operations")?;
    let mut work = doc.clone();
    for (n, op) in ops.iter().enumerate() {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| format!("operation {n}: missing path"))?;
        let result = match op["op"].as_str() {
            Some("add") => add(&mut work, path, op["value"].clone()),
            Some("remove") => remove(&mut work, path).map(drop),
            Some("replace") => {
                remove(&mut work, path).and_then(|_| add(&mut work, path, op["value"].clone()))
            }
            Some("move") => {
                let from = op["from"].as_str().ok_or("move needs from")?;
                remove(&mut work, from).and_then(|v| add(&mut work, path, v))
            }
            Some("copy") => {
                let from = op["from"].as_str().ok_or("copy needs from")?;
                let v = parent(&mut work, &tokens(from)?)?.clone();
                add(&mut work, path, v)
            }
            Some("test") => {
                let v = parent(&mut work, &tokens(path)?)?;
                if *v == op["value"] {
                    Ok(())
                } else {
                    Err(format!("test failed at {path}"))
                }
            }
            other => Err(format!("unknown operation {other:?}")),
        };
        result.map_err(|e| format!("operation {n}: {e}"))?;
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_patch_operations() {
        let mut d = json!({"spec": {"ports": [{"port": 80}], "a~b": 1, "x/y": 2}});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/spec/ports/-", "value": {"port": 81}},
                {"op": "replace", "path": "/spec/ports/0/port", "value": 8080},
                {"op": "remove", "path": "/spec/a~0b"},
                {"op": "move", "from": "/spec/x~1y", "path": "/spec/z"},
                {"op": "copy", "from": "/spec/z", "path": "/spec/w"},
                {"op": "test", "path": "/spec/w", "value": 2},
            ]),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({"spec": {"ports": [{"port": 8080}, {"port": 81}], "z": 2, "w": 2}})
        );
        let before = d.clone();
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/spec/z"}, {"op": "test", "path": "/spec/w", "value": 3}])).is_err());
        assert_eq!(d, before, "all or nothing");
    }

    #[test]
    fn merge_patch() {
        let mut d = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut d, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(d, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }
}

/// The merge key of a list field, for strategic merge patch (the built-in types' keys that matter
/// for Services, Pods, Nodes and EndpointSlices).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "ports" => "port",
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "addresses" => "type",
        _ => return None,
    })
}

/// Applies a strategic merge patch: like a merge patch, but lists with a merge key merge element by
/// element (`$patch: delete` removes one), and `$setElementOrder/…`, `$retainKeys` and
/// `$deleteFromPrimitiveList/…` directives are honoured or dropped.
pub fn strategic(target: &mut Value, patch: &Value) {
    let (Value::Object(t), Value::Object(p)) = (&mut *target, patch) else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        if let Some(m) = replacement.as_object_mut() {
            m.remove("$patch");
        }
        *target = replacement;
        return;
    }
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(gone)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let key = match merge_key(k) {
            // Container ports are keyed by containerPort, Service ports by port.
            Some("port")
                if v.as_array()
                    .is_some_and(|a| a.iter().any(|i| i.get("containerPort").is_some())) =>
            {
                Some("containerPort")
            }
            other => other,
        };
        match (t.get_mut(k), v, key) {
            (Some(Value::Array(current)), Value::Array(items), Some(key)) => {
                for item in items {
                    let id = &item[key];
                    let pos = current.iter().position(|c| c[key] == *id && !id.is_null());
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            current.remove(i);
                        }
                        (Some(i), false) => strategic(&mut current[i], item),
                        (None, false) => current.push(item.clone()),
                        (None, true) => {}
                    }
                }
            }
            (Some(existing @ Value::Object(_)), Value::Object(_), _) => strategic(existing, v),
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod strategic_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_merge_by_key() {
        let mut svc = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53}], "selector": {"app": "a"}}});
        strategic(
            &mut svc,
            &json!({
                "$setElementOrder/ports": [{"port": 80}, {"port": 53}, {"port": 443}],
                "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 53, "$patch": "delete"}, {"port": 443, "name": "https"}],
                         "selector": {"tier": "web"}},
            }),
        );
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"name": "http", "port": 80, "targetPort": 8080}, {"port": 443, "name": "https"}])
        );
        assert_eq!(svc["spec"]["selector"], json!({"app": "a", "tier": "web"}));
    }

    #[test]
    fn lists_without_a_key_are_replaced_and_null_removes() {
        let mut o = json!({"spec": {"externalIPs": ["1.1.1.1"], "x": 1}});
        strategic(
            &mut o,
            &json!({"spec": {"externalIPs": ["2.2.2.2"], "x": null}}),
        );
        assert_eq!(o, json!({"spec": {"externalIPs": ["2.2.2.2"]}}));
    }
}
