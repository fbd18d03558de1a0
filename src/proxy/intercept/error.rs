//! Why `mesh-proxy init` failed.

/// Why installing or removing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A flag value that cannot produce sensible rules.
    #[error("invalid --{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    /// The iptables (or ip) binary could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// `--config-dir` could not be made writable.
    #[error("--config-dir {path}: {source}")]
    ConfigDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// An iptables command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}
