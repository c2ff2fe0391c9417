//! OCI conformance: `brig-oci-check` runs as a container's process and compares the
//! container's own config.json with what it sees (see tests/src/oci.rs). runc is the
//! reference: it must pass every check of the conformance bundle, and a spec the
//! container does not match must fail exactly the checks that differ. brig's agent
//! will run the same bundle and must print runc's lines.

use std::collections::BTreeMap;

use brig_tests::oci;
use brig_tests::scratch::Scratch;
use serde_json::{json, Value};

fn container_id(name: &str) -> String {
    format!("brig-{name}-{}", std::process::id())
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn runc_passes_every_conformance_check() {
    brig_tests::require_kvm_host();
    let scratch = Scratch::new("oci-conformance");
    let bundle = oci::bundle(scratch.path(), &[]);
    let output = oci::runc_run(&bundle, &container_id("conformance"));
    println!("runc, conformance bundle:\n{}", String::from_utf8_lossy(&output.stdout));
    oci::assert_conformant(&output, &oci::expected_checks(&[]));
}

/// The checker is given a second spec that differs from the one runc ran in one
/// point per kind of check: each difference, and nothing else, must FAIL, with
/// deterministic text.
#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_spec_the_container_does_not_match_fails_exactly_where_it_differs() {
    brig_tests::require_kvm_host();
    let scratch = Scratch::new("oci-mismatch");
    let tampered_in_container = "/brig-check/tampered.json";
    let extra = json!({"destination": tampered_in_container, "type": "bind", "source": "tampered.json", "options": ["bind", "ro"]});
    let mut bundle = oci::bundle(scratch.path(), std::slice::from_ref(&extra));
    let mut spec = bundle.spec.clone();
    spec["process"]["args"][1] = json!(tampered_in_container);
    bundle.write_config(spec.clone());

    let mut tampered = spec;
    let set = |spec: &mut Value, pointer: &str, value: Value| {
        *spec.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer} is in the spec")) = value;
    };
    let kept = json!(["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]);
    set(&mut tampered, "/process/capabilities/effective", kept);
    set(&mut tampered, "/process/user/uid", json!(0));
    set(&mut tampered, "/process/user/additionalGids", json!([1001]));
    set(&mut tampered, "/process/cwd", json!("/"));
    set(&mut tampered, "/process/env/1", json!("BRIG_GREETING=goodbye"));
    set(&mut tampered, "/process/rlimits/0/soft", json!(999));
    set(&mut tampered, "/process/noNewPrivileges", json!(false));
    set(&mut tampered, "/process/oomScoreAdj", json!(124));
    set(&mut tampered, "/hostname", json!("elsewhere"));
    set(&mut tampered, "/mounts/7/options/1", json!("rw"));
    set(&mut tampered, "/linux/sysctl/kernel.msgmax", json!("4097"));
    set(&mut tampered, "/linux/seccomp/syscalls/0/errnoRet", json!(1));
    tampered["linux"]["maskedPaths"].as_array_mut().expect("maskedPaths").push(json!("/etc/passwd"));
    tampered["linux"]["readonlyPaths"].as_array_mut().expect("readonlyPaths").push(json!("/tmp"));
    assert_eq!(tampered["mounts"][7]["destination"], "/mnt/ro-data");
    std::fs::write(scratch.join("tampered.json"), serde_json::to_vec(&tampered).expect("json")).expect("write");

    let output = oci::runc_run(&bundle, &container_id("mismatch"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("runc, tampered spec:\n{stdout}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "the checker exits 1 on a FAIL\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let want_failures: BTreeMap<&str, &str> = [
        "FAIL capabilities.effective: want CAP_CHOWN,CAP_KILL,CAP_NET_BIND_SERVICE,CAP_SYS_ADMIN got CAP_CHOWN,CAP_KILL,CAP_NET_BIND_SERVICE",
        "FAIL user.uid: want 0 got 1000",
        "FAIL user.additionalGids: want 1001 got 1001,1002",
        "FAIL cwd: want / got /tmp",
        "FAIL env BRIG_GREETING: want \"goodbye\" got \"hello conformance\"",
        "FAIL rlimit RLIMIT_NOFILE: want soft 999 hard 2000 got soft 1000 hard 2000",
        "FAIL noNewPrivileges: want 0 got 1",
        "FAIL oomScoreAdj: want 124 got 123",
        "FAIL hostname: want elsewhere got brig-conformance",
        "FAIL mount /mnt/ro-data: want bind rw got bind ro",
        "FAIL maskedPaths /etc/passwd: want the null device, reading empty got a regular file",
        "FAIL readonlyPaths /tmp: want EROFS got created an entry",
        "FAIL sysctl kernel.msgmax: want 4097 got 4096",
        "FAIL seccomp getpriority: want -1 EPERM got -1 EACCES",
    ]
    .into_iter()
    .map(|line| (line.split_once(": want ").expect("FAIL line").0.trim_start_matches("FAIL "), line))
    .collect();

    let verdicts = oci::verdicts(&stdout);
    let mut expected = oci::expected_checks(&[extra]);
    expected.extend(["maskedPaths /etc/passwd".to_owned(), "readonlyPaths /tmp".to_owned()]);
    let got: Vec<&String> = verdicts.keys().collect();
    assert_eq!(got, expected.iter().collect::<Vec<_>>(), "the same checks run, failing or not");
    for (name, line) in &verdicts {
        match want_failures.get(name.as_str()) {
            Some(want) => assert_eq!(line, want),
            None => assert_eq!(line, &format!("PASS {name}"), "only the tampered checks fail"),
        }
    }
}

/// The acceptance test: the same bundle, run by brig's agent in a micro-VM (the bundle
/// directory as an ext4 block device), prints exactly runc's verdicts.
#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn brig_gives_the_same_verdicts_as_runc() {
    use std::io::Read;

    use brig_protocol::agent::{CreateContainerRequest, Rootfs, Stdio};
    use brig_protocol::stdio::Stream;
    use brig_tests::container::{ctx, AgentVm};
    use brig_tests::vm::VmSpec;

    brig_tests::require_kvm_host();
    let scratch = Scratch::new("oci-brig");
    let bundle = oci::bundle(&scratch.path().join("bundle"), &[]);
    let runc = oci::runc_run(&bundle, &container_id("reference"));
    oci::assert_conformant(&runc, &oci::expected_checks(&[]));
    let runc_verdicts = oci::verdicts(&String::from_utf8_lossy(&runc.stdout));

    let image = scratch.join("bundle.ext4");
    brig_rootfs_builder::image::ext4_image(&bundle.dir, &image, 64).expect("bundle image");
    let mut vm =
        AgentVm::start_with(VmSpec::new().memory(256).block(format!("path={},ro,serial=bundle", image.display())));
    let request = CreateContainerRequest {
        container_id: "conformance".into(),
        oci_spec: std::fs::read(bundle.config()).expect("config.json"),
        rootfs: Some(Rootfs {
            serial: "bundle".into(),
            fstype: "ext4".into(),
            read_only: true,
            writable_layer: true,
            path: "rootfs".into(),
            ..Default::default()
        })
        .into(),
        stdio: Some(Stdio { stdout: true, stderr: true, ..Default::default() }).into(),
        ..Default::default()
    };
    vm.agent.create_container(ctx(), &request).expect("create");
    let mut out = vm.attach("conformance", "", Stream::Stdout).expect("stdout");
    let mut err = vm.attach("conformance", "", Stream::Stderr).expect("stderr");
    vm.start_container("conformance").expect("start");
    let (mut stdout, mut stderr) = (String::new(), String::new());
    out.read_to_string(&mut stdout).expect("stdout");
    err.read_to_string(&mut stderr).expect("stderr");
    let exit = vm.wait("conformance", "").expect("wait");
    println!("brig, conformance bundle:\n{stdout}{stderr}");
    let brig_verdicts = oci::verdicts(&stdout);
    let differing: Vec<(&String, Option<&String>, Option<&String>)> = runc_verdicts
        .keys()
        .chain(brig_verdicts.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| runc_verdicts.get(*k) != brig_verdicts.get(*k))
        .map(|k| (k, runc_verdicts.get(k), brig_verdicts.get(k)))
        .collect();
    assert!(differing.is_empty(), "brig and runc disagree (check, runc, brig): {differing:#?}\nstderr: {stderr}");
    assert_eq!(exit.exit_code, 0, "{stderr}");
}
