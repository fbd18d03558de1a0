//! What one pod's injection is made of: flags first, then the pod's
//! annotations, then the workload's, then the defaults. Every value is
//! checked here, so a bad one names its field before anything is written.

use super::PodRef;
use mesh::model::validate_service_name;
use serde_norway::{Mapping, Value};

/// Native sidecar (an init container with `restartPolicy: Always`,
/// Kubernetes 1.29+) or legacy (a container whose `postStart` waits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Native,
    Legacy,
}

/// The command line's say; each `Some` beats the annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flags {
    pub mode: Mode,
    pub image: String,
    /// `--identity off`: no token Secret, `http://` control plane.
    pub identity: bool,
    pub service: Option<String>,
    pub app_port: Option<String>,
    pub opaque_ports: Option<String>,
    pub exclude_outbound_ports: Option<String>,
    pub control: Option<String>,
    /// `APP[:PROFILE],...`: the configs the sidecar delivers to the app.
    pub config: Option<String>,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            mode: Mode::Native,
            image: DEFAULT_IMAGE.to_string(),
            identity: true,
            service: None,
            app_port: None,
            opaque_ports: None,
            exclude_outbound_ports: None,
            control: None,
            config: None,
        }
    }
}

/// The image `deploy/image/build.sh` tags.
pub const DEFAULT_IMAGE: &str = concat!("mesh:", env!("CARGO_PKG_VERSION"));
/// Where `deploy/kubernetes/` runs mesh-control.
pub const DEFAULT_CONTROL: &str = "mesh-control.mesh-system.svc:15010";

pub const INJECT: &str = "mesh.io/inject";
pub const SERVICE: &str = "mesh.io/service";
pub const APP_PORT: &str = "mesh.io/app-port";
pub const OPAQUE_PORTS: &str = "mesh.io/opaque-ports";
pub const EXCLUDE_OUTBOUND: &str = "mesh.io/exclude-outbound-ports";
pub const CONTROL: &str = "mesh.io/control";
pub const CONFIG: &str = "mesh.io/config";
pub const CONFIG_MOUNT: &str = "mesh.io/config-mount";
pub const CONFIG_RELOAD_URL: &str = "mesh.io/config-reload-url";
/// Where the app containers find their config files.
pub const DEFAULT_CONFIG_MOUNT: &str = "/etc/mesh/config";

/// Everything [`super::pod::add`] needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub image: String,
    pub identity: bool,
    pub service: String,
    /// The workload's name (names the cache volume).
    pub workload: String,
    /// `None`: no inbound (a client-only pod, not registered).
    pub app_port: Option<u16>,
    pub opaque_ports: Option<Vec<u16>>,
    pub exclude_outbound: Vec<u16>,
    pub control: String,
    /// `APP:PROFILE` each; empty: no config delivered.
    pub config: Vec<String>,
    /// The config volume's path in the app containers.
    pub config_mount: String,
    pub config_reload_url: Option<String>,
}

type Bad = (String, String);

impl Settings {
    /// `Ok(None)` when the pod opts out (`mesh.io/inject: disabled`).
    pub fn resolve(flags: &Flags, pod: &PodRef<'_>) -> Result<Option<Settings>, Bad> {
        let own = pod
            .template
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(Value::as_mapping)
            .cloned()
            .unwrap_or_default();
        // The flag if given, else the pod's annotation, else the workload's.
        let pick = |flag: &Option<String>,
                    flag_name: &str,
                    key: &str|
         -> Result<Option<(String, String)>, Bad> {
            if let Some(v) = flag {
                return Ok(Some((v.clone(), format!("--{flag_name}"))));
            }
            for (map, whose) in [(&own, "the pod's"), (&pod.workload, "the workload's")] {
                match map.get(key) {
                    None => {}
                    Some(Value::String(s)) => {
                        return Ok(Some((s.clone(), format!("annotation {key}"))))
                    }
                    Some(Value::Number(n)) => {
                        return Ok(Some((n.to_string(), format!("annotation {key}"))))
                    }
                    Some(_) => {
                        return Err((
                            format!("annotation {key}"),
                            format!("{whose} annotation must be a string"),
                        ))
                    }
                }
            }
            Ok(None)
        };
        match pick(&None, "", INJECT)? {
            None => {}
            Some((v, _)) if v == "enabled" => {}
            Some((v, _)) if v == "disabled" => return Ok(None),
            Some((v, field)) => {
                return Err((field, format!("{v:?}: expected enabled or disabled")));
            }
        }
        let service = match pick(&flags.service, "service", SERVICE)? {
            Some((s, field)) => {
                validate_service_name(&s).map_err(|why| (field, format!("{s:?}: {why}")))?;
                s
            }
            None => default_service(&pod.name)?,
        };
        let app_port = match pick(&flags.app_port, "app-port", APP_PORT)? {
            Some((v, field)) => Some(port(&v).map_err(|why| (field, why))?),
            None => first_container_port(pod.template)?,
        };
        let opaque_ports = match pick(&flags.opaque_ports, "opaque-ports", OPAQUE_PORTS)? {
            Some((v, field)) => Some(ports(&v).map_err(|why| (field, why))?),
            None => None,
        };
        let exclude_outbound = match pick(
            &flags.exclude_outbound_ports,
            "exclude-outbound-ports",
            EXCLUDE_OUTBOUND,
        )? {
            Some((v, field)) => ports(&v).map_err(|why| (field, why))?,
            None => Vec::new(),
        };
        let scheme = if flags.identity { "https" } else { "http" };
        let control = match pick(&flags.control, "mesh-control", CONTROL)? {
            Some((v, field)) => {
                if !(v.starts_with("https://") || v.starts_with("http://"))
                    || v.contains(char::is_whitespace)
                {
                    return Err((field, format!("{v:?}: expected {scheme}://HOST:PORT")));
                }
                v
            }
            None => format!("{scheme}://{DEFAULT_CONTROL}"),
        };
        let config = match pick(&flags.config, "config", CONFIG)? {
            Some((v, field)) => v
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    mesh::config::delivery::parse_subscription(c)
                        .map(|s| format!("{}:{}", s.application, s.profile))
                        .map_err(|why| (field.clone(), why))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let config_mount = match pick(&None, "", CONFIG_MOUNT)? {
            Some((v, field)) => {
                let ok = v.starts_with('/') && !v.split('/').any(|p| p == "..") && !v.contains(':');
                if !ok {
                    return Err((field, format!("{v:?}: an absolute path without '..'")));
                }
                v
            }
            None => DEFAULT_CONFIG_MOUNT.to_string(),
        };
        let config_reload_url = match pick(&None, "", CONFIG_RELOAD_URL)? {
            Some((v, field)) => {
                mesh::config::delivery::parse_reload_url(&v).map_err(|why| (field, why))?;
                Some(v)
            }
            None => None,
        };
        if config.is_empty() && config_reload_url.is_some() {
            return Err((
                format!("annotation {CONFIG_RELOAD_URL}"),
                format!("there is no config to reload: set {CONFIG}"),
            ));
        }
        Ok(Some(Settings {
            config,
            config_mount,
            config_reload_url,
            mode: flags.mode,
            image: flags.image.clone(),
            identity: flags.identity,
            service,
            workload: pod.name.clone(),
            app_port,
            opaque_ports,
            exclude_outbound,
            control,
        }))
    }
}

/// The workload's name as a service name; a name that is not one (dots,
/// capitals) must be given with `mesh.io/service`.
fn default_service(name: &str) -> Result<String, Bad> {
    validate_service_name(name).map_err(|why| {
        (
            "metadata.name".to_string(),
            format!("{name:?} is the default service name but {why}: set annotation {SERVICE}"),
        )
    })?;
    Ok(name.to_string())
}

/// The first `containerPort` of the first container (the app's).
fn first_container_port(template: &Mapping) -> Result<Option<u16>, Bad> {
    let first = template
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_sequence)
        .and_then(|c| c.first())
        .and_then(|c| c.get("ports"))
        .and_then(Value::as_sequence)
        .and_then(|p| p.first())
        .and_then(|p| p.get("containerPort"));
    match first {
        None => Ok(None),
        Some(v) => match v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|p| *p > 0)
        {
            Some(p) => Ok(Some(p)),
            None => Err((
                "spec.containers[0].ports[0].containerPort".into(),
                "not a port (1-65535)".into(),
            )),
        },
    }
}

fn port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port (1-65535)")),
    }
}

/// `25,3306`: comma-separated ports (empty: none).
fn ports(s: &str) -> Result<Vec<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(port)
        .collect()
}
