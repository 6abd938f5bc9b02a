//! The command line as an operator uses it: `certs init`, `check-config`, `serve` with a bad config
//! (exit code 2, naming key and file), and `agency` commands against a running broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn lienthong(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lienthong"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("runs")
}

fn example_config_in(dir: &Path) -> std::path::PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("lienthong.toml");
    let target = dir.join("lienthong.toml");
    std::fs::copy(example, &target).unwrap();
    // The example names the repo's schemas and connectors relative to itself: bring them along.
    for folder in ["schemas", "connectors"] {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
        if from.is_dir() {
            copy_dir(&from, &dir.join(folder));
        }
    }
    let out = lienthong(&["certs", "init", "--dir", "certs/demo"], dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    target
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config_in(dir.path());
    let out = lienthong(&["check-config", "-c", config.to_str().unwrap()], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 20, item 2: a CRL under the CA's name but signed by another key is refused by `check-config`.
#[test]
fn check_config_refuses_a_crl_with_a_bad_signature() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config_in(dir.path());
    let forged = lienthong::dev::certs::CertAuthority::generate("lienthong development CA")
        .unwrap()
        .crl(&[], 9)
        .unwrap();
    std::fs::write(dir.path().join("certs/demo/crl.pem"), forged).unwrap();
    let out = lienthong(&["check-config", "-c", config.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("crl.pem") && err.contains("signature"), "{err}");
}

#[test]
fn unknown_key_exits_2_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config_in(dir.path());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_body_bytes", "max_body_byte");
    std::fs::write(&config, text).unwrap();
    let out = lienthong(&["serve", "-c", config.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lienthong.toml"), "{err}");
    assert!(err.contains("max_body_byte"), "{err}");
    assert!(err.contains("line"), "{err}");
}

#[test]
fn missing_file_and_bad_address_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config_in(dir.path());
    let original = std::fs::read_to_string(&config).unwrap();

    std::fs::write(
        &config,
        original.replace("certs/demo/ca.pem", "certs/demo/nope.pem"),
    )
    .unwrap();
    let out = lienthong(&["serve", "-c", config.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.ca_bundle") && err.contains("nope.pem"), "{err}");

    std::fs::write(&config, original.replace("127.0.0.1:8443", "localhost-8443")).unwrap();
    let out = lienthong(&["serve", "-c", config.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agency_listener.addr"), "{err}");

    let out = lienthong(&["serve", "-c", "does-not-exist.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn agency_commands_drive_the_admin_api() {
    let b = common::TestBroker::start().await;
    let base = b.cli_admin_args();
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["agency".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(base.iter().cloned());
        b.run_cli(args)
    };
    let out = run(&["suspend", "dvc"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        b.get("dvc", "/v1/whoami").await.error_code().as_deref(),
        Some("agency_suspended")
    );
    let out = run(&["resume", "dvc"]).await;
    assert!(out.status.success());
    assert_eq!(b.get("dvc", "/v1/whoami").await.status, 200);
    let out = run(&["list"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["agencies"].as_array().unwrap().len(), 5);
    let out = run(&["show", "nosuch"]).await;
    assert_eq!(out.status.code(), Some(1));
    // The X-Road identity: bound, refused when malformed (exit 2, nothing sent), cleared.
    let out = run(&["xroad", "moh", "VN/GOV/000.00.00.G10/moh"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let xroad = |b: &common::TestBroker| b.broker().registry.get("moh").unwrap().xroad;
    assert_eq!(xroad(&b).unwrap().to_string(), "VN/GOV/000.00.00.G10/moh");
    let out = run(&["xroad", "moh", "VN/GOV"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["xroad", "moh", "--clear"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(xroad(&b), None);
}

#[test]
fn serve_on_an_empty_data_dir_prints_a_summary_and_the_next_steps() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let config = example_config_in(dir.path());
    let (agency, admin) = (common::free_port(), common::free_port());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{agency}"))
        .replace("127.0.0.1:8444", &format!("127.0.0.1:{admin}"));
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lienthong"))
        .args(["serve", "-c", config.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut summary = String::new();
    while !summary.contains("citizens import") {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        summary.push_str(&line);
    }
    let _ = child.kill();
    let _ = child.wait();
    for expected in [
        format!("agency API  https://127.0.0.1:{agency}"),
        format!("console     https://127.0.0.1:{admin}/admin/console"),
        "agencies    0 registered, 0 active".to_string(),
        "citizens    0".to_string(),
        "lienthong agency add CODE".to_string(),
        "lienthong citizens import citizens.jsonl".to_string(),
    ] {
        assert!(
            summary.contains(&expected),
            "{expected:?} missing from:\n{summary}"
        );
    }
}
