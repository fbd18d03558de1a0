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
(tracing's EnvFilter syntax, e.g. `info,mesh::proxy=debug`; default \
`info,hickory_server=warn,hickory_proto=warn`; RUST_LOG is read when MESH_LOG is unset).";

/// Why `cmd`'s flags (and its subcommands', recursively) break the
/// contract: a flag without help text, or a long flag or its environment
/// variable missing from its program's section of `reference` (the text of
/// docs/reference.md). `section` names the `## ` heading for a command
/// path (`["mesh-proxy", "init"]`). Each binary's unit tests call this, so
/// a new flag cannot ship undocumented.
pub fn undocumented(
    cmd: &clap::Command,
    reference: &str,
    section: &dyn Fn(&[&str]) -> &'static str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut path = vec![cmd.get_name().to_string()];
    walk(cmd, &mut path, reference, section, &mut problems);
    problems
}

fn walk(
    cmd: &clap::Command,
    path: &mut Vec<String>,
    reference: &str,
    section: &dyn Fn(&[&str]) -> &'static str,
    problems: &mut Vec<String>,
) {
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    let heading = section(&names);
    let text = section_text(reference, heading);
    if text.is_empty() {
        problems.push(format!("docs/reference.md has no `{heading}` section"));
    }
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let at = format!("{} --{long}", names.join(" "));
        if arg.get_help().is_none() {
            problems.push(format!("{at}: no help text"));
        }
        if !text.contains(&format!("`--{long}`")) {
            problems.push(format!("{at}: not in `{heading}`"));
        }
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            if !text.contains(&format!("`{env}`")) {
                problems.push(format!("{at}: {env} not in `{heading}`"));
            }
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        path.push(sub.get_name().to_string());
        walk(sub, path, reference, section, problems);
        path.pop();
    }
}

/// The text under the `heading` line, up to the next `## ` heading.
fn section_text<'a>(reference: &'a str, heading: &str) -> &'a str {
    let Some(start) = reference.match_indices(heading).map(|(i, _)| i).find(|&i| {
        (i == 0 || reference[..i].ends_with('\n'))
            && reference[i + heading.len()..].starts_with('\n')
    }) else {
        return "";
    };
    let body = &reference[start + heading.len()..];
    match body.find("\n## ") {
        Some(end) => &body[..end],
        None => body,
    }
}

/// `on` or `off` (also true/false, yes/no, 1/0).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        other => Err(format!("{other:?} is neither on nor off")),
    }
}
