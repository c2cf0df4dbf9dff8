//! The difference between the targets a file describes and the topic's state, as
//! `checker targets apply` publishes and prints it (like `kubectl diff`: `+` added, `~`
//! changed with each changed field old → new, `-` removed). Pure: never reads or writes Kafka.
//! Shown values never carry a secret: credential header values, `basic_auth.password` and URL
//! passwords are printed as `***`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use http::HeaderName;
use serde_json::Value;

use super::{canonical, State};
use crate::target::{is_credential_header, redact_userinfo};

/// What an apply changes.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    /// Names not in the topic, with their values.
    pub added: Vec<(String, Value)>,
    /// Names whose value differs: (name, the topic's value (`Null` when not JSON), the new one).
    pub changed: Vec<(String, Value, Value)>,
    /// Names in the topic and not in the file.
    pub removed: Vec<String>,
    /// Names whose value is already the file's.
    pub unchanged: usize,
}

/// `desired` (name → canonical value) compared with `state`.
pub fn diff(desired: &BTreeMap<String, Value>, state: &State) -> Diff {
    let mut d = Diff::default();
    for (name, want) in desired {
        match state.get(name) {
            None => d.added.push((name.clone(), want.clone())),
            Some(e) => match &e.spec {
                Some(have) if canonical(have) == *want => d.unchanged += 1,
                have => d
                    .changed
                    .push((name.clone(), have.clone().unwrap_or(Value::Null), want.clone())),
            },
        }
    }
    d.removed = state.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
    d
}

impl Diff {
    /// Whether nothing would be published.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    /// Every name the diff publishes a record for.
    pub fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self
            .added
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(self.changed.iter().map(|(k, _, _)| k.as_str()))
            .chain(self.removed.iter().map(String::as_str))
            .collect();
        n.sort_unstable();
        n
    }

    /// The records to publish, in name order: values (canonical JSON) for added and changed
    /// names, tombstones (`None`) for removed ones.
    pub fn records(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let json = |v: &Value| serde_json::to_vec(v).expect("a JSON value serializes");
        let mut r: Vec<(String, Option<Vec<u8>>)> = self
            .added
            .iter()
            .map(|(k, v)| (k.clone(), Some(json(v))))
            .chain(self.changed.iter().map(|(k, _, v)| (k.clone(), Some(json(v)))))
            .chain(self.removed.iter().map(|k| (k.clone(), None)))
            .collect();
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    }

    /// The diff as text: one line per target (`+ name  url`, `~ name`, `- name`), under each
    /// changed one its changed fields (`    interval: "30s" → "1m"`), then no summary (see
    /// [`Diff::summary`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut lines: Vec<(&str, String)> = Vec::new();
        for (name, v) in &self.added {
            let url = v.get("url").map(|u| shown_field("url", u)).unwrap_or_default();
            lines.push((name, format!("+ {name}  {url}\n")));
        }
        for (name, old, new) in &self.changed {
            let mut s = format!("~ {name}\n");
            for (field, was, now) in changed_fields(old, new) {
                let _ = writeln!(s, "    {field}: {was} → {now}");
            }
            lines.push((name, s));
        }
        for name in &self.removed {
            lines.push((name, format!("- {name}\n")));
        }
        lines.sort_by(|a, b| a.0.cmp(b.0));
        for (_, l) in lines {
            out.push_str(&l);
        }
        out
    }

    /// `2 added, 1 changed, 1 removed, 7 unchanged`.
    pub fn summary(&self) -> String {
        format!(
            "{} added, {} changed, {} removed, {} unchanged",
            self.added.len(),
            self.changed.len(),
            self.removed.len(),
            self.unchanged
        )
    }
}

/// The top-level fields that differ between `old` and `new`, each value shown (absent:
/// `(unset)`), in field order.
fn changed_fields(old: &Value, new: &Value) -> Vec<(String, String, String)> {
    let (o, n) = match (old.as_object(), new.as_object()) {
        (Some(o), Some(n)) => (o, n),
        _ => {
            let o = if old.is_null() {
                "(not a JSON object)".to_string()
            } else {
                shown_field("", old)
            };
            return vec![("value".into(), o, "(the file's spec)".into())];
        }
    };
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or("(unset)".to_string(), |v| shown_field(k, v));
            (k.clone(), show(o.get(k)), show(n.get(k)))
        })
        .collect()
}

/// `v`, the value of top-level `field`, as compact JSON with secrets replaced by `***`.
fn shown_field(field: &str, v: &Value) -> String {
    let mut v = v.clone();
    match (field, &mut v) {
        ("url" | "proxy", Value::String(s)) => *s = redact_userinfo(s),
        ("headers", Value::Object(h)) => {
            for (k, val) in h.iter_mut() {
                if HeaderName::from_bytes(k.as_bytes()).is_ok_and(|n| is_credential_header(&n)) {
                    *val = Value::String("***".into());
                }
            }
        }
        ("basic_auth", Value::Object(b)) => {
            if let Some(p) = b.get_mut("password") {
                *p = Value::String("***".into());
            }
        }
        _ => {}
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets_topic::fold;
    use serde_json::json;

    #[test]
    fn added_changed_removed_and_unchanged() {
        let mut state = State::new();
        for (k, v) in [
            ("keep", json!({"name":"keep","url":"http://k/","interval":"30s"})),
            (
                "edit",
                json!({"name":"edit","url":"http://e/","interval":"30s","headers":{"X-Api-Key":"old"}}),
            ),
            ("gone", json!({"name":"gone","url":"http://g/","interval":"30s"})),
        ] {
            fold(&mut state, k, Some(v.to_string().as_bytes()), 0, 0, None);
        }
        let desired: BTreeMap<String, Value> = [
            ("keep", json!({"interval":"30s","name":"keep","url":"http://k/"})),
            ("edit", json!({"interval":"1m","name":"edit","url":"http://e/"})),
            ("new", json!({"interval":"30s","name":"new","url":"http://u:pw@n/"})),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), canonical(&v)))
        .collect();
        let d = diff(&desired, &state);
        assert_eq!(d.summary(), "1 added, 1 changed, 1 removed, 1 unchanged");
        assert_eq!(d.names(), ["edit", "gone", "new"]);
        let text = d.render();
        assert_eq!(
            text,
            "~ edit\n    headers: {\"X-Api-Key\":\"***\"} → (unset)\n    interval: \"30s\" → \"1m\"\n\
             - gone\n+ new  \"http://***@n/\"\n"
        );
        let records = d.records();
        assert_eq!(
            records
                .iter()
                .map(|(k, v)| (k.as_str(), v.is_some()))
                .collect::<Vec<_>>(),
            [("edit", true), ("gone", false), ("new", true)]
        );
        assert!(diff(&desired, &{
            let mut s = state.clone();
            for (k, v) in &desired {
                fold(&mut s, k, Some(v.to_string().as_bytes()), 0, 1, None);
            }
            s.remove("gone");
            s
        })
        .is_empty());
    }
}
