//! Paths of the binaries under test.
//!
//! `mesh-proxy` and `mesh-control` belong to this package, so cargo builds
//! them before the tests and tells us where. `mesh-ctl` is another crate of
//! the workspace: it is built once per test process with
//! `cargo build -p mesh-ctl` (a no-op when fresh; the target dir may be
//! shared with other branches, so an existing file alone is not trusted).

use super::proc::{command, run_with_timeout};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

pub const MESH_PROXY: &str = env!("CARGO_BIN_EXE_mesh-proxy");
pub const MESH_CONTROL: &str = env!("CARGO_BIN_EXE_mesh-control");

/// Upper bound for building mesh-ctl (it may queue on the shared target
/// dir's lock behind other builds).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// Path of a fresh `mesh-ctl`, next to `mesh-proxy`.
pub fn mesh_ctl() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(MESH_PROXY)
            .parent()
            .expect("mesh-proxy has a parent dir");
        let path: PathBuf = dir.join("mesh-ctl");
        let cargo = std::env::var("CARGO")
            .ok()
            .or_else(|| option_env!("CARGO").map(str::to_string))
            .unwrap_or_else(|| "cargo".to_string());
        // Build into the same target dir and profile as the test binaries.
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut args = vec!["build", "-p", "mesh-ctl"];
        if release {
            args.push("--release");
        }
        let mut cmd = command(&cargo, &args, &[]);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
        if let Some(target_dir) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        let out = run_with_timeout(cmd, BUILD_TIMEOUT);
        assert!(
            out.status.success(),
            "cargo build -p mesh-ctl failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(path.exists(), "mesh-ctl not found at {}", path.display());
        path.to_string_lossy().into_owned()
    })
}
