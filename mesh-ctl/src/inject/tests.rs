//! Golden files: every `tests/inject/NAME.yaml` input has
//! `NAME.native.yaml` and `NAME.legacy.yaml` beside it, what inject must
//! print. `UPDATE_GOLDEN=1 cargo test -p mesh-ctl inject` rewrites them
//! (then read the diff). Each output also uninjects back to its input and
//! is a fixed point of inject.

use super::*;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

fn inputs() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.ends_with(".yaml") && name.matches('.').count() == 1
        })
        .map(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
            (stem, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 8, "golden inputs missing: {out:?}");
    out
}

fn flags(mode: Mode) -> Flags {
    Flags {
        mode,
        ..Flags::default()
    }
}

#[test]
fn golden_outputs_for_every_kind_and_mode() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for (name, input) in inputs() {
        for (mode, suffix) in [(Mode::Native, "native"), (Mode::Legacy, "legacy")] {
            let got = inject(&input, &flags(mode)).unwrap().yaml;
            let path = dir().join(format!("{name}.{suffix}.yaml"));
            if update {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if got != want {
                stale.push(format!("{} differs:\n{got}", path.display()));
            }
        }
    }
    assert!(stale.is_empty(), "{}", stale.join("\n\n"));
}

#[test]
fn inject_is_idempotent_and_uninject_restores_the_input() {
    for (name, input) in inputs() {
        for mode in [Mode::Native, Mode::Legacy] {
            let once = inject(&input, &flags(mode)).unwrap().yaml;
            let twice = inject(&once, &flags(mode)).unwrap().yaml;
            assert_eq!(once, twice, "{name} {mode:?}: injecting twice differs");
            let back = uninject(&once).unwrap().yaml;
            assert_eq!(
                back, input,
                "{name} {mode:?}: uninject did not restore the input"
            );
        }
        let other = inject(&input, &flags(Mode::Native)).unwrap().yaml;
        let switched = inject(&other, &flags(Mode::Legacy)).unwrap().yaml;
        assert_eq!(
            switched,
            inject(&input, &flags(Mode::Legacy)).unwrap().yaml,
            "{name}: re-injecting in another mode replaces the first injection"
        );
    }
}

fn pod(annotations: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n{annotations}spec:\n  containers:\n  - name: app\n    image: app:1\n{ports}"
    )
}

fn proxy_args(yaml: &str) -> Vec<String> {
    let v: Value = serde_norway::from_str(yaml).unwrap();
    let inits = v["spec"]["initContainers"].as_sequence().unwrap();
    let proxy = inits.iter().find(|c| c["name"] == "mesh-proxy").unwrap();
    proxy["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn annotations_then_flags_decide() {
    let yaml = pod(
        "    mesh.io/service: api\n    mesh.io/app-port: \"9000\"\n    mesh.io/opaque-ports: 5432, 6379\n    mesh.io/control: https://ctl.example:15010\n",
        "    ports:\n    - containerPort: 8080\n",
    );
    let args = proxy_args(&inject(&yaml, &Flags::default()).unwrap().yaml);
    for want in [
        "--service=api",
        "--app-port=9000",
        "--opaque-ports=5432,6379",
        "--control=https://ctl.example:15010",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "{want} missing from {args:?}"
        );
    }
    let flagged = Flags {
        service: Some("edge".into()),
        app_port: Some("7000".into()),
        ..Flags::default()
    };
    let args = proxy_args(&inject(&yaml, &flagged).unwrap().yaml);
    assert!(args.iter().any(|a| a == "--service=edge"), "{args:?}");
    assert!(args.iter().any(|a| a == "--app-port=7000"), "{args:?}");
}

#[test]
fn defaults_are_the_workload_name_and_first_container_port() {
    let yaml = pod("    team: a\n", "    ports:\n    - containerPort: 8080\n");
    let args = proxy_args(&inject(&yaml, &Flags::default()).unwrap().yaml);
    assert!(args.iter().any(|a| a == "--service=web"), "{args:?}");
    assert!(args.iter().any(|a| a == "--app-port=8080"), "{args:?}");
    // No port: a client-only proxy, nothing registered.
    let client = pod("    team: a\n", "");
    let args = proxy_args(&inject(&client, &Flags::default()).unwrap().yaml);
    assert!(
        !args.iter().any(|a| a.starts_with("--app-port")),
        "{args:?}"
    );
}

#[test]
fn bad_input_names_the_document_and_field() {
    let bad_port = format!(
        "kind: Service\nmetadata:\n  name: s\n---\n{}",
        pod("    mesh.io/app-port: 80a\n", "")
    );
    let e = inject(&bad_port, &Flags::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "document 2 (Pod web): annotation mesh.io/app-port: \"80a\" is not a port (1-65535)"
    );
    let bad_flag = Flags {
        exclude_outbound_ports: Some("22,0".into()),
        ..Flags::default()
    };
    let e = inject(&pod("    a: b\n", ""), &bad_flag).unwrap_err();
    assert_eq!(e.field, "--exclude-outbound-ports");
    let e = inject(&pod("    mesh.io/inject: maybe\n", ""), &Flags::default()).unwrap_err();
    assert!(e.reason.contains("enabled or disabled"), "{e}");
    let e = inject(
        &pod("    mesh.io/service: Bad_Name\n", ""),
        &Flags::default(),
    )
    .unwrap_err();
    assert_eq!(e.field, "annotation mesh.io/service");
    let e = inject("kind: Pod\nmetadata: [unclosed\n", &Flags::default()).unwrap_err();
    assert_eq!((e.doc, e.field.as_str()), (1, "(document)"));
    assert!(e.reason.starts_with("not YAML"), "{e}");
    for (annotations, field) in [
        ("    mesh.io/config: Hello\n", "annotation mesh.io/config"),
        (
            "    mesh.io/config: hello\n    mesh.io/config-mount: etc/x\n",
            "annotation mesh.io/config-mount",
        ),
        (
            "    mesh.io/config: hello\n    mesh.io/config-reload-url: http://app/x\n",
            "annotation mesh.io/config-reload-url",
        ),
        (
            "    mesh.io/config-reload-url: http://127.0.0.1:8080/x\n",
            "annotation mesh.io/config-reload-url",
        ),
    ] {
        let e = inject(&pod(annotations, ""), &Flags::default()).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
}

#[test]
fn what_inject_does_not_handle_passes_through_byte_for_byte() {
    let input = "# a comment kept\napiVersion: v1\nkind: ConfigMap   # odd spacing kept\nmetadata: {name: c}\n---\n\n---\nkind: Pod\nmetadata:\n  name: off\n  annotations: {mesh.io/inject: disabled}\nspec: {containers: [{name: a, image: a}]}\n";
    let out = inject(input, &Flags::default()).unwrap();
    assert_eq!(out.yaml, input);
    assert_eq!(out.notes.len(), 2, "{:?}", out.notes);
    assert!(
        out.notes[0].contains("ConfigMap holds no pod template"),
        "{:?}",
        out.notes
    );
    assert!(
        out.notes[1].contains("mesh.io/inject is disabled"),
        "{:?}",
        out.notes
    );
}

#[test]
fn identity_off_mounts_no_secret() {
    let off = Flags {
        identity: false,
        ..Flags::default()
    };
    let out = inject(&pod("    a: b\n", ""), &off).unwrap().yaml;
    assert!(!out.contains("mesh-token"), "{out}");
    let args = proxy_args(&out);
    assert!(args.iter().any(|a| a == "--identity=off"), "{args:?}");
    assert!(
        args.iter()
            .any(|a| a == "--control=http://mesh-control.mesh-system.svc:15010"),
        "{args:?}"
    );
}

#[test]
fn host_network_pods_are_left_alone() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: node\nspec:\n  hostNetwork: true\n  containers:\n  - name: a\n    image: a\n";
    let out = inject(input, &Flags::default()).unwrap();
    assert_eq!(out.yaml, input);
    assert!(
        out.notes[0].contains("hostNetwork: true"),
        "{:?}",
        out.notes
    );
}

#[test]
fn yaml11_booleans_stay_strings() {
    let input = pod("    a: b\n", "    env:\n    - {name: A, value: \"on\"}\n    - {name: B, value: \"Yes\"}\n    - {name: C, value: \"true\"}\n");
    let out = inject(&input, &Flags::default()).unwrap().yaml;
    for want in ["value: 'on'", "value: 'Yes'", "value: 'true'"] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let v: Value = serde_norway::from_str(&out).unwrap();
    assert_eq!(v["spec"]["containers"][0]["env"][0]["value"], "on");
}

#[test]
fn a_document_starting_on_its_marker_line_is_kept() {
    let input = "--- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n--- {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: [{name: a, image: a}]}}\n";
    let out = inject(input, &Flags::default()).unwrap();
    assert!(out.yaml.contains("kind: ConfigMap"), "{}", out.yaml);
    assert!(out.yaml.contains("- name: mesh-proxy"), "{}", out.yaml);
    let back = uninject(&out.yaml).unwrap().yaml;
    assert!(!back.contains("mesh-"), "{back}");
}

#[test]
fn long_workload_names_get_distinct_cache_volumes() {
    let long = "a".repeat(60);
    let names: Vec<String> = ["x", "y"]
        .iter()
        .map(|tail| {
            let yaml = format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {long}{tail}\n  annotations: {{mesh.io/service: web}}\nspec:\n  containers:\n  - name: a\n    image: a\n"
            );
            let v: Value = serde_norway::from_str(&inject(&yaml, &Flags::default()).unwrap().yaml).unwrap();
            let vols = v["spec"]["volumes"].as_sequence().unwrap();
            vols.iter()
                .map(|v| v["name"].as_str().unwrap().to_string())
                .find(|n| n.starts_with("mesh-cache"))
                .unwrap()
        })
        .collect();
    assert_ne!(names[0], names[1]);
    assert!(names.iter().all(|n| n.len() <= 63), "{names:?}");
}

#[test]
fn legacy_mode_runs_the_apps_init_containers_before_the_rules() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  initContainers:\n  - name: migrate\n    image: m\n  containers:\n  - name: a\n    image: a\n";
    let names = |mode| -> Vec<String> {
        let v: Value = serde_norway::from_str(&inject(input, &flags(mode)).unwrap().yaml).unwrap();
        v["spec"]["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(Mode::Native), ["mesh-init", "mesh-proxy", "migrate"]);
    assert_eq!(names(Mode::Legacy), ["migrate", "mesh-init"]);
}
