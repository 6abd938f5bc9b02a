//! A new operator's first hour: what the demo prints works as printed (every `curl` line of its banner is
//! run against it), the start-up summary, clear refusals (a second broker on the same data dir or
//! ports, plaintext HTTP on a TLS port, a typo in a field name), and loading citizens with
//! `lienthong citizens import`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, TestBroker};
use serde_json::{json, Value};

fn lienthong() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lienthong"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// A demo child on fresh ports under `dir`, and its banner (stdout up to "Stop with Ctrl-C").
fn demo_with_banner(dir: &Path) -> (Child, String, u16, u16) {
    let (agency, admin) = (free_port(), free_port());
    let mut child = lienthong()
        .args(["demo", "--citizens", "300", "--certs-dir"])
        .arg(dir.join("certs"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--agency-addr", &format!("127.0.0.1:{agency}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("demo.log")).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    let started = Instant::now();
    while !banner.contains("Stop with Ctrl-C") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no banner: {banner}"
        );
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("the demo exited: {banner}");
        }
        banner.push_str(&line);
    }
    // Keep reading what it prints (its stdout stays open, as a terminal's would).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, banner, agency, admin)
}

/// The banner's `curl` commands, continuation lines joined.
fn curl_commands(banner: &str) -> Vec<String> {
    let joined = banner.replace(" \\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl "))
        .map(str::to_string)
        .collect()
}

/// Run a shell script of `curl` calls at the repo root, as a user pastes it, with each call made to fail
/// on a non-2xx answer; panics naming the script if one fails.
fn run_curls(script: &str, demo_log: &Path) {
    let checked = script.replace("curl ", "curl -sS --fail-with-body -o /dev/null ");
    let out = Command::new("sh")
        .arg("-ec")
        .arg(&checked)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("sh and curl (scripts/install-deps.sh installs curl)");
    assert!(
        out.status.success(),
        "failed as printed:\n{script}\n{}{}\nthe demo's log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(demo_log).unwrap_or_default()
    );
}

/// A second `lienthong demo` with the given arguments: its exit code and stderr.
fn second_demo(args: &[&str]) -> (i32, String) {
    let mut child = lienthong()
        .arg("demo")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the second demo did not stop");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_banner_works_as_printed_and_a_second_demo_is_told_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, banner, agency, admin) = demo_with_banner(dir.path());

    // The start-up summary: where, what is loaded, where the data lives.
    for expected in [
        format!("agency API  https://127.0.0.1:{agency}"),
        format!("console     https://127.0.0.1:{admin}/admin/console"),
        "agencies    5 registered, 5 active: dvc, moh, pccovid, sms, vneid".to_string(),
        "citizens    300".to_string(),
        "connectors  5".to_string(),
        "storage     sled in".to_string(),
    ] {
        assert!(banner.contains(&expected), "{expected:?} missing from:\n{banner}");
    }

    // Every curl line answers 2xx as printed (FHIR batch and SMS included).
    let commands = curl_commands(&banner);
    assert!(commands.len() >= 10, "{commands:?}");
    for command in &commands {
        run_curls(command, &dir.path().join("demo.log"));
    }

    // SIGHUP reloads TLS (systemd's ExecReload); the log, written to a file, has no colour codes.
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let log_file = dir.path().join("demo.log");
    let started = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&log_file).unwrap();
        if log.contains("SIGHUP: TLS reloaded") || started.elapsed() > Duration::from_secs(10) {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(log.contains("SIGHUP: TLS reloaded"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a log file:\n{log}");
    let whoami = Command::new("sh").arg("-c").arg(&commands[0]).output().unwrap();
    assert!(whoami.status.success(), "not serving after SIGHUP");

    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    // The same data dir: told that another lienthong uses it.
    let other_ports = [
        "--agency-addr".to_string(),
        format!("127.0.0.1:{}", free_port()),
        "--admin-addr".into(),
        format!("127.0.0.1:{}", free_port()),
    ];
    let mut args: Vec<&str> = vec![
        "--certs-dir",
        certs.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend(other_ports.iter().map(String::as_str));
    let (code, err) = second_demo(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("another lienthong is using data dir {}", data.display())),
        "{err}"
    );
    assert!(!err.contains("WouldBlock"), "{err}");

    // The same ports on another data dir: the flag to change is named.
    let fresh = dir.path().join("data-2");
    let agency_addr = format!("127.0.0.1:{agency}");
    let admin_addr = format!("127.0.0.1:{admin}");
    let (code, err) = second_demo(&[
        "--citizens",
        "10",
        "--certs-dir",
        certs.to_str().unwrap(),
        "--data-dir",
        fresh.to_str().unwrap(),
        "--agency-addr",
        &agency_addr,
        "--admin-addr",
        &admin_addr,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("address already in use") || err.contains("Address already in use"),
        "{err}"
    );
    assert!(err.contains("--agency-addr"), "{err}");

    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn plaintext_http_on_a_tls_port_gets_a_plain_400() {
    let b = TestBroker::start().await;
    for addr in [b.agency, b.admin] {
        let answer = tokio::task::spawn_blocking(move || {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            tcp.write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            tcp.read_to_string(&mut answer).unwrap();
            answer
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("content-type: text/plain"), "{answer}");
        assert!(
            answer.contains("This port speaks HTTPS with client certificates"),
            "{answer}"
        );
    }
    // TLS clients are served as before.
    assert_eq!(b.get("dvc", "/v1/whoami").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_told_so_by_its_tls_library() {
    let b = TestBroker::start().await;
    let ca = b.certs_dir().join("ca.pem");
    let url = format!("https://{}/v1/whoami", b.agency);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--cacert", ca.to_str().unwrap(), &url])
            .output()
            .expect("curl (scripts/install-deps.sh installs it)")
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // The TLS alert reaches curl, not a reset ("getpeername() failed").
    assert!(err.contains("alert certificate required"), "{err}");
}

#[tokio::test]
async fn a_typo_in_a_field_or_purpose_gets_a_suggestion() {
    let b = TestBroker::start().await;
    let r = b
        .get(
            "dvc",
            "/v1/citizens/001090000001?purpose=public-service-prefill&fields=fullname",
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "unknown_field");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("did you mean `full_name`?"), "{message}");
    let r = b
        .get("dvc", "/v1/citizens/001090000001?purpose=public-service-prefil")
        .await;
    assert_eq!(r.json()["error"]["code"], "unknown_purpose");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("did you mean `public-service-prefill`?"),
        "{message}"
    );
}

/// A `lienthong` admin command (`agency …`, `citizens …`) against the test broker's admin API: exit code,
/// stdout, stderr.
fn admin_cli(b: &TestBroker, args: &[&str]) -> (i32, String, String) {
    let out = lienthong().args(args).args(b.cli_admin_args()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn import(b: &TestBroker, file: &Path) -> (i32, String, String) {
    admin_cli(b, &["citizens", "import", file.to_str().unwrap()])
}

/// The README's operator's path, command by command: issue a certificate, register the agency, grant it
/// a purpose, give it a plan; the grant is audited, applies at once, survives a restart and can be
/// revoked (except where the catalogue file itself grants it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agency_is_registered_granted_a_purpose_and_served() {
    let b = TestBroker::start().await;
    let certs = b.certs_dir();
    let out = lienthong()
        .args([
            "certs",
            "init",
            "--dir",
            certs.to_str().unwrap(),
            "--client",
            "bhxh",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(certs.join("bhxh.pem").is_file() && certs.join("bhxh.key").is_file());
    let cert = certs.join("bhxh.pem");
    let (code, _, err) = admin_cli(
        &b,
        &[
            "agency",
            "add",
            "bhxh",
            "--name",
            "Bảo hiểm xã hội Việt Nam",
            "--billing-class",
            "state-budget",
            "--cert-file",
            cert.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let read = "/v1/citizens/001090000001?purpose=public-service-prefill";
    let r = b.get("bhxh", read).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (403, json!("purpose_not_allowed"))
    );

    let (code, out, err) = admin_cli(&b, &["agency", "grant", "bhxh", "public-service-prefill"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"public-service-prefill\""), "{out}");
    assert_eq!(b.get("bhxh", read).await.status, 200);
    let purposes = b.get("bhxh", "/v1/purposes").await.json();
    assert!(
        purposes.to_string().contains("public-service-prefill"),
        "{purposes}"
    );
    let (code, _, err) = admin_cli(
        &b,
        &[
            "agency",
            "plan",
            "bhxh",
            "--purpose",
            "public-service-prefill",
            "--per-day",
            "1000",
        ],
    );
    assert_eq!(code, 0, "{err}");

    // A typo is refused with a suggestion; a catalogue grant is not revocable at run time.
    let (code, _, err) = admin_cli(&b, &["agency", "grant", "bhxh", "public-service-prefil"]);
    assert_eq!(code, 1);
    assert!(err.contains("did you mean `public-service-prefill`?"), "{err}");
    let (code, _, err) = admin_cli(&b, &["agency", "revoke", "dvc", "public-service-prefill"]);
    assert_eq!(code, 1);
    assert!(err.contains("purpose_in_catalogue"), "{err}");

    let b = b.restart().await;
    assert_eq!(
        b.get("bhxh", read).await.status,
        200,
        "the grant survives a restart"
    );
    let (code, _, err) = admin_cli(&b, &["agency", "revoke", "bhxh", "public-service-prefill"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(b.get("bhxh", read).await.status, 403);

    let ops = b.admin_operations().await;
    assert!(ops.iter().any(|op| op == "admin:grant_purpose"), "{ops:?}");
    assert!(ops.iter().any(|op| op == "admin:revoke_purpose"), "{ops:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citizens_import_is_validated_numbered_and_all_or_nothing() {
    let b = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A record of the sample citizen, renamed: visible through a read once imported.
    let mut record: Value = lienthong::dev::population::generate(3, 2021).next().unwrap();
    record["full_name"] = json!("Nguyễn Văn Nhập");
    let id = record["citizen_id"].as_str().unwrap().to_string();
    let path = format!("/v1/citizens/{id}?purpose=public-service-prefill&fields=full_name");

    let bad = dir.path().join("bad.jsonl");
    let lines = [
        record.to_string(),
        json!({ "citizen_id": "123" }).to_string(),
        "{not json".to_string(),
        record.to_string(),
    ];
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let (code, _, err) = import(&b, &bad);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lines 1-4 refused (422 invalid_import)"), "{err}");
    assert!(err.contains("line 2: "), "{err}");
    assert!(err.contains("line 3: invalid_json"), "{err}");
    assert!(
        err.contains("line 4: duplicate_citizen the same citizen_id as line 1"),
        "{err}"
    );
    assert!(!err.contains("line 1: "), "{err}");
    // Nothing from the refused batch was written.
    assert_ne!(
        b.get("dvc", &path).await.json()["citizen"]["full_name"],
        json!("Nguyễn Văn Nhập")
    );

    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, record.to_string() + "\n").unwrap();
    let (code, out, err) = import(&b, &good);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 1 citizens"), "{out}");
    assert_eq!(
        b.get("dvc", &path).await.json()["citizen"]["full_name"],
        json!("Nguyễn Văn Nhập")
    );

    // Both attempts are in the audit trail.
    let trail = b
        .admin_get("/admin/v1/audit/entries?agency=admin&limit=50")
        .await
        .json();
    let imports: Vec<(String, u64)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "admin:import_citizens")
        .map(|e| {
            (
                e["error_code"].as_str().unwrap_or("").to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(imports.contains(&("invalid_import".into(), 422)), "{imports:?}");
    assert!(imports.contains(&(String::new(), 200)), "{imports:?}");
}

/// The README's `sh` blocks that call `curl`, as a user pastes them into a shell at the repo root, against
/// a demo on free ports (the blocks' `certs/demo` and ports rewritten to the test's): every call answers
/// 2xx.
#[test]
fn the_readme_curl_examples_work_against_the_demo() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("\n```").next())
        .filter(|block| block.contains("curl "))
        .collect();
    assert!(blocks.len() >= 4, "README curl blocks: {}", blocks.len());

    let dir = tempfile::tempdir().unwrap();
    let (mut child, _, agency, admin) = demo_with_banner(dir.path());
    let certs = dir.path().join("certs");
    for block in blocks {
        let script = block
            .replace("certs/demo", certs.to_str().unwrap())
            .replace("127.0.0.1:8443", &format!("127.0.0.1:{agency}"))
            .replace("127.0.0.1:8444", &format!("127.0.0.1:{admin}"));
        run_curls(&script, &dir.path().join("demo.log"));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The PostgreSQL the cluster tests need is there after `scripts/install-deps.sh` (or this fails naming
/// the missing tool).
#[test]
fn postgresql_server_tools_are_installed() {
    for tool in ["initdb", "pg_ctl"] {
        let path = common::postgres_tool(tool);
        let out = Command::new(&path).arg("--version").output().unwrap();
        assert!(out.status.success(), "{} --version failed", path.display());
        assert!(String::from_utf8_lossy(&out.stdout).contains("PostgreSQL"));
    }
}

/// A broker whose stdout nobody reads any more (a closed pipe) keeps serving: printing the summary and
/// the banner must not be what stops it.
#[test]
fn a_demo_whose_stdout_is_closed_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let agency = free_port();
    let mut child = lienthong()
        .args(["demo", "--citizens", "50", "--certs-dir"])
        .arg(dir.path().join("certs"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--agency-addr", &format!("127.0.0.1:{agency}")])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the read end closes before anything is printed
    let certs = dir.path().join("certs");
    let started = Instant::now();
    let served = loop {
        std::thread::sleep(Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "the demo exited");
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "-o", "/dev/null", "--cacert"])
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("dvc.pem"))
            .arg("--key")
            .arg(certs.join("dvc.key"))
            .arg(format!("https://127.0.0.1:{agency}/v1/whoami"))
            .output()
            .unwrap();
        if out.status.success() || started.elapsed() > Duration::from_secs(60) {
            break out.status.success();
        }
    };
    // Still alive after the summary and banner were written into the closed pipe.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the demo exited after printing"
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "the demo never served");
}
