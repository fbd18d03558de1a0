//! Command-line conventions the three programs share: every flag reads
//! `MESH_<FLAG>`, one name per concept across programs, and old names kept
//! readable for a release.

/// Environment variables renamed so that one concept has one name in all
/// three programs: (old name, new name). The old one is still read, with a
/// warning, when the new one is not set.
pub const RENAMED_ENV: &[(&str, &str)] = &[
    // mesh-ctl's `--control` (mesh-proxy always read MESH_CONTROL).
    ("MESH_CONTROL_URL", "MESH_CONTROL"),
    // `mesh-proxy init --inbound-port`, now `--inbound` like the proxy's.
    ("MESH_INBOUND_PORT", "MESH_INBOUND"),
];

/// Copies each old variable of [`RENAMED_ENV`] to its new name where only
/// the old one is set, so clap's `env = "NEW"` sees it. Call first thing
/// in `main`, before any thread exists (the environment is process-wide).
/// Returns one warning per variable copied, for the caller to print once
/// logging is up.
pub fn apply_renamed_env() -> Vec<String> {
    let mut warnings = Vec::new();
    for (old, new) in RENAMED_ENV {
        if std::env::var_os(new).is_some() {
            continue;
        }
        if let Some(v) = std::env::var_os(old) {
            std::env::set_var(new, v);
            warnings.push(format!(
                "{old} is deprecated and will be removed in the next release: set {new} instead"
            ));
        }
    }
    warnings
}

/// The help section every program prints after its flags.
pub const ENV_HELP: &str = "\
Every flag can also be set as an environment variable MESH_<FLAG> (upper case, \
'-' becomes '_'); a flag on the command line wins. MESH_LOG sets the log filter \
(tracing's EnvFilter syntax, e.g. `info,mesh::proxy=debug`; default info).";
