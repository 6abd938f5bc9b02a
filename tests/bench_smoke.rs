//! The benchmark harness in smoke mode (`lienthong bench --smoke`, with upstream and cluster mode), so that
//! it cannot rot: it must run to the end, and on every broker every answer must be 2xx with exactly one
//! audit entry each. No timings are asserted. Cluster mode needs PostgreSQL's binaries
//! (`scripts/install-deps.sh --for-tests` installs them, as for tests/cluster.rs).
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
    for r in runs.iter().filter(|r| {
        r["target"] == "broker" || r["target"].as_str().is_some_and(|t| t.starts_with("postgres"))
    }) {
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
    // Cluster mode: one node and three on PostgreSQL, beside the embedded broker, for reads and writes.
    for scenario in ["cluster-read", "cluster-write"] {
        for target in ["broker", "postgres×1", "postgres×3"] {
            let n = runs
                .iter()
                .filter(|r| r["scenario"] == scenario && r["target"] == target)
                .count();
            assert_eq!(n, 2, "{scenario} on {target}: one run per concurrency level");
        }
    }
    let notes = report["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("entries per commit"))),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.starts_with("upstream hop"))),
        "{notes:?}"
    );
}
