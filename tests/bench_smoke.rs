//! The benchmark harness in smoke mode (`lienthong bench --smoke`, with the upstream and PostgreSQL
//! scenarios), so that it cannot rot: it must run to the end, and on the broker every answer must be 2xx
//! with exactly one audit entry each. No timings are asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn bench_smoke_completes_and_audits_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_lienthong"))
        .args(["bench", "--smoke", "--upstream", "--postgres", "--out"])
        .arg(&out)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    for scenario in [
        "canonical-read",
        "pccovid-qr",
        "dvc-soap",
        "vaccination-write",
        "fhir-write",
        "handshake-read",
    ] {
        for target in ["baseline", "broker"] {
            let n = runs
                .iter()
                .filter(|r| r["scenario"] == scenario && r["target"] == target)
                .count();
            assert_eq!(
                n, 2,
                "{scenario} on {target}: one run per concurrency level (1, 4)"
            );
        }
    }
    for r in runs.iter().filter(|r| r["target"] == "broker") {
        let answered = r["answered"].as_u64().unwrap();
        assert!(answered > 0, "{r}");
        assert_eq!(r["ok_2xx"].as_u64(), Some(answered), "{r}");
        assert_eq!(r["audit_entries"].as_u64(), Some(answered), "{r}");
        assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
    }
    assert!(report["broker_peak_rss_kib"].as_u64().unwrap() > 0);
    // Upstream provider mode: the read through the front broker and the provider's own, all served.
    for target in ["baseline", "provider", "front→provider"] {
        let upstream: Vec<_> = runs
            .iter()
            .filter(|r| r["scenario"] == "upstream-read" && r["target"] == target)
            .collect();
        assert_eq!(
            upstream.len(),
            2,
            "upstream-read on {target}: one run per concurrency level"
        );
        for r in upstream {
            let answered = r["answered"].as_u64().unwrap();
            assert!(answered > 0, "{r}");
            assert_eq!(r["ok_2xx"].as_u64(), Some(answered), "{r}");
            assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
        }
    }
    let notes = report["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.starts_with("upstream hop"))),
        "{notes:?}"
    );
    // PostgreSQL: the read and the write on the embedded broker, one broker on PostgreSQL and three, every
    // answer audited; the read on the baseline too; audit commits noted for each PostgreSQL run.
    for (scenario, targets) in [
        (
            "postgres-canonical-read",
            &["baseline", "embedded", "postgres ×1", "postgres ×3"][..],
        ),
        (
            "postgres-vaccination-write",
            &["embedded", "postgres ×1", "postgres ×3"][..],
        ),
    ] {
        for target in targets {
            let measured: Vec<_> = runs
                .iter()
                .filter(|r| r["scenario"] == scenario && r["target"] == *target)
                .collect();
            assert_eq!(
                measured.len(),
                2,
                "{scenario} on {target}: one run per concurrency level"
            );
            for r in measured {
                let answered = r["answered"].as_u64().unwrap();
                assert!(answered > 0, "{r}");
                assert_eq!(r["ok_2xx"].as_u64(), Some(answered), "{r}");
                assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
                if *target != "baseline" {
                    assert_eq!(r["audit_entries"].as_u64(), Some(answered), "{r}");
                }
            }
        }
    }
    let commit_notes = notes
        .iter()
        .filter(|n| n.as_str().is_some_and(|n| n.contains("entries per commit")))
        .count();
    assert_eq!(commit_notes, 8, "{notes:?}");
}
