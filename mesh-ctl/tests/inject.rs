//! The real `mesh-ctl inject` / `uninject` binary on the golden files
//! (`tests/inject/`), every output checked by PyPI's `kubernetes-validate
//! --strict` (the published schemas, offline) at Kubernetes 1.29 and 1.33,
//! and the native sidecar refused at 1.27 (proof the check is real).

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use support::{ctl_bin, stderr, stdout};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

fn golden(suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("tests/inject")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// mesh-ctl with `args`, `input` on stdin.
fn run(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(ctl_bin())
        .env_remove("MESH_OUTPUT")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mesh-ctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("mesh-ctl output")
}

/// `kubernetes-validate --strict -k VERSION FILES...`: its exit status and
/// what it printed.
fn validate(version: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .args(files)
        .output()
        .expect("run python3");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !text.contains("No module named"),
        "kubernetes-validate is missing: python3 -m pip install kubernetes-validate ({text})"
    );
    (out.status.success(), text)
}

#[test]
fn the_binary_prints_the_golden_files_from_a_file_and_from_stdin() {
    let inputs = golden("");
    let inputs: Vec<&PathBuf> = inputs
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().matches('.').count() == 1)
        })
        .collect();
    assert!(inputs.len() >= 9, "{inputs:?}");
    for input in inputs {
        let text = std::fs::read_to_string(input).expect("read input");
        let stem = input.file_stem().expect("stem").to_string_lossy();
        for (flags, suffix) in [(&[][..], "native"), (&["--legacy-sidecar"][..], "legacy")] {
            let want = std::fs::read_to_string(dir().join(format!("{stem}.{suffix}.yaml")))
                .expect("golden output");
            let path = input.to_string_lossy();
            let mut args = vec!["inject", "-f", &path];
            args.extend(flags);
            let from_file = run(&args, "");
            assert_eq!(from_file.status.code(), Some(0), "{}", stderr(&from_file));
            assert_eq!(stdout(&from_file), want, "{stem} {suffix}");
            let mut args = vec!["inject"];
            args.extend(flags);
            let from_stdin = run(&args, &text);
            assert_eq!(stdout(&from_stdin), want, "{stem} {suffix} from stdin");
            let back = run(&["uninject"], &want);
            assert_eq!(stdout(&back), text, "{stem} {suffix}: uninject");
        }
    }
}

#[test]
fn every_output_is_valid_at_1_29_and_1_33_and_the_native_sidecar_is_not_at_1_27() {
    let outputs: Vec<PathBuf> = [golden(".native.yaml"), golden(".legacy.yaml")].concat();
    assert!(outputs.len() >= 18, "{outputs:?}");
    for version in ["1.29.0", "1.33.0"] {
        let (ok, text) = validate(version, &outputs);
        assert!(ok, "kubernetes-validate --strict -k {version}:\n{text}");
        assert_eq!(
            text.matches(" passed for resource ").count(),
            // Every workload, and the Services/ConfigMaps beside them.
            text.lines().filter(|l| l.starts_with("INFO")).count(),
            "{text}"
        );
    }
    let pod = [dir().join("pod.native.yaml")];
    let (ok, text) = validate("1.27.0", &pod);
    assert!(!ok, "a native sidecar must not validate at 1.27:\n{text}");
    assert!(text.contains("restartPolicy"), "{text}");
    let legacy = [dir().join("pod.legacy.yaml")];
    let (ok, text) = validate("1.27.0", &legacy);
    assert!(
        ok,
        "the legacy sidecar is for clusters before 1.29:\n{text}"
    );
}

#[test]
fn bad_input_exits_2_naming_the_field_and_prints_nothing() {
    for (input, want) in [
        ("kind: Pod\nmetadata: [unclosed\n", "document 1: (document): not YAML"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    mesh.io/app-port: '99999'\nspec:\n  containers:\n  - name: a\n    image: a\n",
            "document 1 (Pod p): annotation mesh.io/app-port: \"99999\" is not a port (1-65535)",
        ),
    ] {
        let out = run(&["inject"], input);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    let out = run(
        &["inject", "--app-port", "http"],
        "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: a}]}\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--app-port: \"http\" is not a port"),
        "{}",
        stderr(&out)
    );
    let missing = run(&["inject", "-f", "/nonexistent/app.yaml"], "");
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("/nonexistent/app.yaml"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn kinds_it_cannot_handle_pass_through_with_a_note() {
    let input = "apiVersion: v1\nkind: Service\nmetadata: {name: s}   # kept as written\n";
    let out = run(&["inject"], input);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), input);
    assert_eq!(
        stderr(&out),
        "note: -: document 1 (Service s): Service holds no pod template; left unchanged\n"
    );
}

#[test]
fn the_deploy_manifests_are_valid_at_1_29_and_1_33() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&deploy)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for version in ["1.29.0", "1.33.0"] {
        let (ok, text) = validate(version, &files);
        assert!(ok, "kubernetes-validate --strict -k {version}:\n{text}");
        for kind in [
            "statefulset/mesh-control",
            "service/mesh-control",
            "poddisruptionbudget/mesh-control",
            "namespace/mesh-system",
        ] {
            assert!(text.contains(kind), "{kind} not validated:\n{text}");
        }
    }
}
