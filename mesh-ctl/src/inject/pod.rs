//! The parts inject adds to a pod template, and their removal.
//!
//! The proxy runs as [`PROXY_UID`]; `mesh-proxy init` exempts that uid
//! from interception (a container without NET_ADMIN cannot set SO_MARK,
//! so the mark is off). Only the init container has NET_ADMIN/NET_RAW.

use super::settings::{Mode, Settings};
use super::INJECTED;
use serde_norway::{Mapping, Value};

/// The proxy's uid and gid (the image's `mesh-proxy` user).
pub const PROXY_UID: u16 = 19781;
/// The proxy's admin port: `/ready`, `/live`, probes.
pub const ADMIN_PORT: u16 = 15000;
pub const INIT: &str = "mesh-init";
pub const PROXY: &str = "mesh-proxy";
pub const IDENTITY_VOLUME: &str = "mesh-identity";
/// The cache volume's name is this plus the workload's name: podman's
/// `kube play` shares an emptyDir among every pod that names it the same
/// (Kubernetes keeps one per pod either way).
const CACHE_VOLUME: &str = "mesh-cache";
/// The config volume, shared by the proxy (writing) and the app
/// containers (reading), is this plus the workload's name, like the cache.
pub const CONFIG_VOLUME: &str = "mesh-config";
const CONFIG_DIR: &str = "/var/run/mesh/config";
const IDENTITY_DIR: &str = "/var/run/mesh/identity";
const CACHE_DIR: &str = "/var/run/mesh/cache";

/// The Secret a pod's proxy proves its service with
/// (`mesh-ctl token create --service S --secret`).
pub fn token_secret(service: &str) -> String {
    format!("mesh-token-{service}")
}

/// `mesh-cache-NAME`.
fn cache_volume(workload: &str) -> String {
    volume_name(CACHE_VOLUME, workload)
}

/// `mesh-config-NAME`.
fn config_volume(workload: &str) -> String {
    volume_name(CONFIG_VOLUME, workload)
}

/// `PREFIX-NAME`, a valid volume name (a DNS label) whatever the
/// workload's name.
fn volume_name(prefix: &str, workload: &str) -> String {
    let full: String = format!("{prefix}-{workload}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut name = full.trim_end_matches('-').to_string();
    if name.len() > 63 {
        // Cut, and told apart by a hash of the whole name: two long names
        // with one prefix must not share a cache (it holds the key).
        let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        name.truncate(54);
        name = format!("{}-{:08x}", name.trim_end_matches('-'), hash & 0xffff_ffff);
    }
    name
}

/// Adds the init container, the proxy and their volumes.
pub fn add(template: &mut Mapping, s: &Settings) {
    let annotations = entry_map(entry_map(template, "metadata"), "annotations");
    annotations.insert(INJECTED.into(), env!("CARGO_PKG_VERSION").into());
    let spec = entry_map(template, "spec");
    let proxy = proxy(s);
    let inits = entry_seq(spec, "initContainers");
    match s.mode {
        // First: the app's own init containers run meshed.
        Mode::Native => {
            inits.insert(0, init(s));
            inits.insert(1, proxy);
        }
        // Last: until the proxy container starts nobody serves the
        // redirected ports, so the app's init containers must run before
        // the rules exist.
        Mode::Legacy => {
            inits.push(init(s));
            entry_seq(spec, "containers").insert(0, proxy);
        }
    }
    let volumes = entry_seq(spec, "volumes");
    if s.identity {
        volumes.push(map([
            ("name", IDENTITY_VOLUME.into()),
            (
                "secret",
                map([
                    ("secretName", token_secret(&s.service).into()),
                    // Kubernetes' default, said out loud: podman's kube
                    // play mounts nothing (or fails) without it.
                    ("optional", false.into()),
                ]),
            ),
        ]));
    }
    volumes.push(map([
        ("name", cache_volume(&s.workload).into()),
        (
            "emptyDir",
            map([("medium", "Memory".into()), ("sizeLimit", "16Mi".into())]),
        ),
    ]));
    if !s.config.is_empty() {
        // Up to four versions of each config are on it during a swap (two
        // kept, the current one, the one being written), each holding its
        // data three times (properties, JSON, .env) beside its files: 1 MiB
        // of content at most, ~4 MiB rendered.
        let size = format!("{}Mi", 16 * s.config.len());
        volumes.push(map([
            ("name", config_volume(&s.workload).into()),
            ("emptyDir", map([("sizeLimit", size.into())])),
        ]));
        // Every app container reads it; the proxy (a container in legacy
        // mode) mounts it writable already.
        let apps = entry_seq(spec, "containers")
            .iter_mut()
            .filter(|c| c.get("name").and_then(Value::as_str) != Some(PROXY));
        for app in apps {
            if let Value::Mapping(app) = app {
                entry_seq(app, "volumeMounts").push(map([
                    ("name", config_volume(&s.workload).into()),
                    ("mountPath", s.config_mount.clone().into()),
                    ("readOnly", true.into()),
                ]));
            }
        }
    }
}

/// Removes everything [`add`] adds, and the lists and maps that leaves
/// empty; whether there was anything to remove.
pub fn remove(template: &mut Mapping) -> bool {
    let mut found = false;
    if let Some(Value::Mapping(meta)) = template.get_mut("metadata") {
        if let Some(Value::Mapping(a)) = meta.get_mut("annotations") {
            if a.remove(INJECTED).is_some() {
                found = true;
                if a.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
        if found && meta.is_empty() {
            template.remove("metadata");
        }
    }
    let Some(Value::Mapping(spec)) = template.get_mut("spec") else {
        return found;
    };
    // The volumes are the ones our proxy mounts (their names depend on
    // the workload), found before the proxy goes.
    let mut ours: Vec<String> = vec![IDENTITY_VOLUME.to_string()];
    for list in ["initContainers", "containers"] {
        let proxies = spec
            .get(list)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter(|c| c.get("name").and_then(Value::as_str) == Some(PROXY));
        for proxy in proxies {
            let mounts = proxy.get("volumeMounts").and_then(Value::as_sequence);
            ours.extend(
                mounts
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.get("name").and_then(Value::as_str))
                    .map(str::to_string),
            );
        }
    }
    let ours: Vec<&str> = ours.iter().map(String::as_str).collect();
    // The config volume's mounts in the app containers: the proxy's own
    // config volume, whatever the workload's name made of it.
    let config: Vec<&str> = ours
        .iter()
        .copied()
        .filter(|n| n.starts_with(CONFIG_VOLUME))
        .collect();
    if let Some(Value::Sequence(apps)) = spec.get_mut("containers") {
        for app in apps.iter_mut().filter_map(Value::as_mapping_mut) {
            let Some(Value::Sequence(mounts)) = app.get_mut("volumeMounts") else {
                continue;
            };
            let before = mounts.len();
            mounts.retain(|m| {
                !m.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| config.contains(&n))
            });
            if mounts.len() != before {
                found = true;
                if mounts.is_empty() {
                    app.remove("volumeMounts");
                }
            }
        }
    }
    for (list, names) in [
        ("initContainers", &[INIT, PROXY][..]),
        ("containers", &[PROXY][..]),
        ("volumes", &ours[..]),
    ] {
        let Some(Value::Sequence(items)) = spec.get_mut(list) else {
            continue;
        };
        let before = items.len();
        items.retain(|c| {
            !c.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| names.contains(&n))
        });
        if items.len() != before {
            found = true;
            if items.is_empty() && list != "containers" {
                spec.remove(list);
            }
        }
    }
    found
}

fn init(s: &Settings) -> Value {
    let mut args = vec![format!("--uid={PROXY_UID}")];
    if let Some(p) = s.app_port {
        args.push(format!("--app-port={p}"));
    }
    if !s.exclude_outbound.is_empty() {
        args.push(format!("--exclude-ports={}", joined(&s.exclude_outbound)));
    }
    let mut mounts = Vec::new();
    if !s.config.is_empty() {
        // The proxy must write the config volume whoever mounted it first.
        args.push(format!("--config-dir={CONFIG_DIR}"));
        mounts.push(map([
            ("name", config_volume(&s.workload).into()),
            ("mountPath", CONFIG_DIR.into()),
        ]));
    }
    let mut c = vec![
        ("name", INIT.into()),
        ("image", s.image.clone().into()),
        ("imagePullPolicy", "IfNotPresent".into()),
        ("command", strings(["mesh-proxy", "init"])),
        ("args", strings(args)),
        (
            "securityContext",
            map([
                ("runAsUser", 0.into()),
                ("runAsNonRoot", false.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                (
                    "capabilities",
                    map([
                        ("add", strings(["NET_ADMIN", "NET_RAW"])),
                        ("drop", strings(["ALL"])),
                    ]),
                ),
            ]),
        ),
        ("resources", resources("10m", "16Mi", "64Mi")),
    ];
    if !mounts.is_empty() {
        c.push(("volumeMounts", Value::Sequence(mounts)));
    }
    map(c)
}

fn proxy(s: &Settings) -> Value {
    let mut args = vec![
        "run".to_string(),
        format!("--service={}", s.service),
        format!("--control={}", s.control),
        format!("--cache-dir={CACHE_DIR}"),
        // The uid exempts the proxy's sockets (see `init --uid`).
        "--mark=0".to_string(),
        // Probes come from the kubelet, at the pod's address.
        format!("--admin=0.0.0.0:{ADMIN_PORT}"),
    ];
    if let Some(p) = s.app_port {
        args.push(format!("--app-port={p}"));
    }
    if s.identity {
        args.push(format!("--token-file={IDENTITY_DIR}/token"));
        args.push(format!("--trust-bundle={IDENTITY_DIR}/bundle.pem"));
    } else {
        args.push("--identity=off".to_string());
    }
    if let Some(ports) = &s.opaque_ports {
        args.push(format!("--opaque-ports={}", joined(ports)));
    }
    if !s.config.is_empty() {
        args.push(format!("--config={}", s.config.join(",")));
        args.push(format!("--config-dir={CONFIG_DIR}"));
        if let Some(url) = &s.config_reload_url {
            args.push(format!("--config-reload-url={url}"));
        }
    }
    let mut mounts = Vec::new();
    if !s.config.is_empty() {
        mounts.push(map([
            ("name", config_volume(&s.workload).into()),
            ("mountPath", CONFIG_DIR.into()),
        ]));
    }
    if s.identity {
        mounts.push(map([
            ("name", IDENTITY_VOLUME.into()),
            ("mountPath", IDENTITY_DIR.into()),
            ("readOnly", true.into()),
        ]));
    }
    mounts.push(map([
        ("name", cache_volume(&s.workload).into()),
        ("mountPath", CACHE_DIR.into()),
    ]));
    let mut c = vec![
        ("name", PROXY.into()),
        ("image", s.image.clone().into()),
        ("imagePullPolicy", "IfNotPresent".into()),
        ("command", strings(["mesh-proxy"])),
        ("args", strings(args)),
        (
            "env",
            Value::Sequence(vec![
                map([
                    ("name", "MESH_INSTANCE_ID".into()),
                    (
                        "valueFrom",
                        map([("fieldRef", map([("fieldPath", "metadata.name".into())]))]),
                    ),
                ]),
                map([("name", "MESH_LOG_FORMAT".into()), ("value", "json".into())]),
            ]),
        ),
    ];
    if s.mode == Mode::Native {
        // An init container that keeps running: the app starts once the
        // startup probe passes, and the proxy stops after the app.
        c.push(("restartPolicy", "Always".into()));
        c.push(("startupProbe", probe("/ready", 1, 120)));
    } else {
        c.push((
            "lifecycle",
            map([(
                "postStart",
                map([(
                    "exec",
                    map([("command", strings(["mesh-proxy", "wait", "--timeout=2m"]))]),
                )]),
            )]),
        ));
    }
    c.push(("readinessProbe", probe("/ready", 2, 3)));
    c.push(("livenessProbe", probe("/live", 10, 3)));
    c.push((
        "securityContext",
        map([
            ("runAsUser", PROXY_UID.into()),
            ("runAsGroup", PROXY_UID.into()),
            ("runAsNonRoot", true.into()),
            ("allowPrivilegeEscalation", false.into()),
            ("readOnlyRootFilesystem", true.into()),
            ("capabilities", map([("drop", strings(["ALL"]))])),
        ]),
    ));
    c.push(("resources", resources("10m", "32Mi", "256Mi")));
    c.push(("volumeMounts", Value::Sequence(mounts)));
    map(c)
}

fn probe(path: &str, period: u32, failures: u32) -> Value {
    map([
        (
            "httpGet",
            map([("path", path.into()), ("port", ADMIN_PORT.into())]),
        ),
        ("periodSeconds", period.into()),
        ("failureThreshold", failures.into()),
    ])
}

fn resources(cpu: &str, memory: &str, limit: &str) -> Value {
    map([
        (
            "requests",
            map([("cpu", cpu.into()), ("memory", memory.into())]),
        ),
        ("limits", map([("memory", limit.into())])),
    ])
}

fn joined(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A YAML mapping with its keys in the order given.
pub(crate) fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::Sequence(items.into_iter().map(|s| Value::String(s.into())).collect())
}

/// `map[key]` as a mapping, made (or replacing a null) when missing.
fn entry_map<'m>(map: &'m mut Mapping, key: &str) -> &'m mut Mapping {
    let v = map
        .entry(key.into())
        .or_insert(Value::Mapping(Mapping::new()));
    if !v.is_mapping() {
        *v = Value::Mapping(Mapping::new());
    }
    match v {
        Value::Mapping(m) => m,
        _ => unreachable!("made a mapping above"),
    }
}

/// `map[key]` as a sequence, made (or replacing a null) when missing.
fn entry_seq<'m>(map: &'m mut Mapping, key: &str) -> &'m mut Vec<Value> {
    let v = map.entry(key.into()).or_insert(Value::Sequence(Vec::new()));
    if !v.is_sequence() {
        *v = Value::Sequence(Vec::new());
    }
    match v {
        Value::Sequence(s) => s,
        _ => unreachable!("made a sequence above"),
    }
}
