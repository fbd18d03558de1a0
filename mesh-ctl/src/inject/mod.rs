//! `mesh-ctl inject` and `uninject`: Kubernetes YAML in, Kubernetes YAML
//! out, nothing else touched (no cluster, no files).
//!
//! Pure rules first: [`inject`] and [`uninject`] map a multi-document
//! YAML stream to another and a list of notes for stderr; the command in
//! `commands.rs` only reads the input and prints. A document is handled
//! when its kind holds a pod template (Pod, Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, Job, CronJob, and a `List` of them); every other
//! document, and every one whose pod says `mesh.io/inject: disabled`,
//! is copied through byte for byte.
//!
//! Injection is a function of the un-injected pod: an injected pod is
//! first uninjected, so injecting twice equals injecting once (and new
//! flags or annotations replace the old injection). What it adds is named
//! (`mesh-init`, `mesh-proxy`, the `mesh-identity` and `mesh-cache`
//! volumes, the `mesh.io/proxy-version` annotation); uninject removes
//! exactly those, and the lists or maps it leaves empty.

pub mod pod;
pub mod settings;
#[cfg(test)]
mod tests;

pub use settings::{Flags, Mode};

use serde_norway::{Mapping, Value};
use settings::Settings;

/// The annotation every injected pod carries: the proxy's version.
pub const INJECTED: &str = "mesh.io/proxy-version";

/// A document inject cannot use: exit 2, naming the document and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {doc}{what}: {field}: {reason}")]
pub struct InjectError {
    /// 1-based position in the stream.
    pub doc: usize,
    /// ` (Kind name)` when known.
    pub what: String,
    pub field: String,
    pub reason: String,
}

/// What inject or uninject produced: the new stream and one note per
/// document left alone (for stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub yaml: String,
    pub notes: Vec<String>,
}

/// Injects the sidecar into every workload of the stream.
pub fn inject(input: &str, flags: &Flags) -> Result<Rewritten, InjectError> {
    rewrite(input, |doc, obj, notes| {
        for_each_pod(obj, &mut |pod| {
            // A pod on the node's network would have the node's own
            // traffic redirected (kubelet's, DNS): never.
            let host_network = pod
                .template
                .get("spec")
                .and_then(|s| s.get("hostNetwork"))
                .and_then(Value::as_bool)
                == Some(true);
            if host_network {
                notes.push("hostNetwork: true (interception would take the node's traffic); left without a sidecar".into());
                return Ok(());
            }
            // An earlier injection goes first, whatever comes next (a
            // workload now `disabled` loses its sidecar).
            pod::remove(pod.template);
            let settings = Settings::resolve(flags, &pod)
                .map_err(|(field, reason)| doc.error(field, reason))?;
            match settings {
                Some(settings) => {
                    if settings.mode == Mode::Legacy && pod.job {
                        notes.push("a Job with a legacy sidecar completes only when its app POSTs http://127.0.0.1:15000/shutdown at the end (or the proxy runs --exit-when-app-exits)".into());
                    }
                    pod::add(pod.template, &settings);
                }
                None => notes.push("mesh.io/inject is disabled; left without a sidecar".into()),
            }
            Ok(())
        })
    })
}

/// Removes what [`inject`] added.
pub fn uninject(input: &str) -> Result<Rewritten, InjectError> {
    rewrite(input, |_doc, obj, _notes| {
        for_each_pod(obj, &mut |pod| {
            pod::remove(pod.template);
            Ok(())
        })
    })
}

/// One document's place in the stream, for errors and notes.
struct DocRef {
    index: usize,
    what: String,
}

impl DocRef {
    fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> InjectError {
        InjectError {
            doc: self.index,
            what: self.what.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Splits the stream, lets `edit` change each document that holds pods,
/// and joins it again. A document whose edit leaves it equal to what it
/// was is copied through as written; one where `edit` says it did nothing
/// may leave notes about it.
fn rewrite(
    input: &str,
    mut edit: impl FnMut(&DocRef, &mut Value, &mut Vec<String>) -> Result<(), InjectError>,
) -> Result<Rewritten, InjectError> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (i, text) in split_documents(input).into_iter().enumerate() {
        let mut doc = DocRef {
            index: i + 1,
            what: String::new(),
        };
        if is_blank(text) {
            out.push(text.to_string());
            continue;
        }
        let value: Value = serde_norway::from_str(text)
            .map_err(|e| doc.error("(document)", format!("not YAML: {e}")))?;
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        doc.what = format!(" ({kind} {name})").replace(" )", ")");
        if !holds_pods(&value) {
            let shown = if kind.is_empty() { "no kind" } else { kind };
            notes.push(format!(
                "document {}{}: {shown} holds no pod template; left unchanged",
                doc.index, doc.what
            ));
            out.push(text.to_string());
            continue;
        }
        let mut edited = value.clone();
        let mut said = Vec::new();
        edit(&doc, &mut edited, &mut said)?;
        notes.extend(
            said.into_iter()
                .map(|why| format!("document {}{}: {why}", doc.index, doc.what)),
        );
        if edited == value {
            out.push(text.to_string());
        } else {
            let yaml = serde_norway::to_string(&edited)
                .map_err(|e| doc.error("(document)", format!("cannot render: {e}")))?;
            out.push(quote_yaml11_booleans(&yaml));
        }
    }
    Ok(Rewritten {
        yaml: join_documents(input, &out),
        notes,
    })
}

/// The pod template of one workload (`metadata` and `spec`), and what
/// decides its settings besides the pod's own annotations.
pub(crate) struct PodRef<'a> {
    pub template: &'a mut Mapping,
    /// The workload's own annotations (empty for a bare Pod).
    pub workload: Mapping,
    /// The workload's name: the default service.
    pub name: String,
    /// A Job's or CronJob's pod: it is meant to end.
    pub job: bool,
}

/// Whether `inject` handles the document's kind.
fn holds_pods(v: &Value) -> bool {
    match v.get("kind").and_then(Value::as_str) {
        Some("List") => true,
        Some(k) => template_path(k).is_some(),
        None => false,
    }
}

/// Where the pod template is, from the top of the object.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Calls `f` with each pod template of `obj` (the items of a `List`).
fn for_each_pod(
    obj: &mut Value,
    f: &mut dyn FnMut(PodRef<'_>) -> Result<(), InjectError>,
) -> Result<(), InjectError> {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "List" {
        if let Some(items) = obj.get_mut("items").and_then(Value::as_sequence_mut) {
            for item in items {
                for_each_pod(item, f)?;
            }
        }
        return Ok(());
    }
    let Some(path) = template_path(&kind) else {
        return Ok(());
    };
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let workload = match (path.is_empty(), meta.get("annotations")) {
        (false, Some(Value::Mapping(m))) => m.clone(),
        _ => Mapping::new(),
    };
    let mut template = obj;
    for key in path {
        match template.get_mut(*key) {
            Some(next) => template = next,
            None => return Ok(()),
        }
    }
    let Value::Mapping(template) = template else {
        return Ok(());
    };
    f(PodRef {
        template,
        workload,
        name,
        job: matches!(kind.as_str(), "Job" | "CronJob"),
    })
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// Cuts a YAML stream at its `---` lines (a marker at column 0 is always
/// a document boundary outside quoted multi-line scalars, which manifests
/// do not use). The markers themselves are not part of any document.
fn split_documents(input: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in input.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if marker {
            if at > start || !docs.is_empty() {
                docs.push(&input[start..at]);
            }
            // `--- {kind: Pod}`: what follows the marker is the next
            // document's first line.
            let rest = bare[3..].trim_start();
            start = if rest.is_empty() || rest.starts_with('#') {
                at + line.len()
            } else {
                at + (line.len() - line[3..].trim_start().len())
            };
        }
        at += line.len();
    }
    if start < input.len() || docs.is_empty() {
        docs.push(&input[start..]);
    }
    docs
}

/// The documents again, with `---` between them (and before the first,
/// when the input had one there).
fn join_documents(input: &str, docs: &[String]) -> String {
    let leading = input
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_end() == "---");
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 || leading {
            out.push_str("---\n");
        }
        out.push_str(doc);
        if !doc.is_empty() && !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// YAML 1.1 reads these plain scalars as booleans, and so do kubectl and
/// the API server (go-yaml v2): `value: on` is `true`, which a string field
/// rejects. The emitter quotes only YAML 1.2's forms (`true`, `false`), so
/// the others get single quotes here.
const YAML11_BOOLEANS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Quotes every key and scalar of emitter output that YAML 1.1 would read
/// as a boolean. The emitter's block style puts one scalar or `key: value`
/// per line, and block literals (`|`, `>`) are skipped by indentation.
fn quote_yaml11_booleans(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    // Lines indented deeper than this belong to a block literal.
    let mut literal_above: Option<usize> = None;
    for line in yaml.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let indent = body.len() - body.trim_start().len();
        if let Some(depth) = literal_above {
            if indent > depth || body.trim().is_empty() {
                out.push_str(line);
                continue;
            }
            literal_above = None;
        }
        let (head, mut rest) = body.split_at(indent);
        let mut fixed = head.to_string();
        while let Some(r) = rest.strip_prefix("- ") {
            fixed.push_str("- ");
            rest = r;
        }
        let (key, value) = match rest.split_once(": ") {
            Some((k, v)) => (Some(k), v),
            None => match rest.strip_suffix(':') {
                Some(k) => (Some(k), ""),
                None => (None, rest),
            },
        };
        let quote = |s: &str| {
            if YAML11_BOOLEANS.contains(&s) {
                format!("'{s}'")
            } else {
                s.to_string()
            }
        };
        match key {
            Some(k) => {
                fixed.push_str(&quote(k));
                fixed.push(':');
                if !value.is_empty() {
                    fixed.push(' ');
                    fixed.push_str(&quote(value));
                }
            }
            None => fixed.push_str(&quote(value)),
        }
        if value.starts_with('|') || value.starts_with('>') {
            literal_above = Some(indent);
        }
        out.push_str(&fixed);
        if line.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
