#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn renders_every_family_with_labels() {
    let m = Metrics::new();
    m.count_request(RequestOutcome {
        side: Side::Agency,
        agency: "dvc",
        purpose: "public-service-prefill",
        connector: "canonical",
        status: 200,
    });
    m.observe(Stage::Store, Duration::from_micros(300));
    m.count_quota_rejection("pccovid", "covid-qr-status");
    m.count_handshake_failure(Side::Agency, "unknown_ca");
    let text = m.render(42);
    assert!(text.contains(
        r#"lienthong_requests_total{side="agency",agency="dvc",purpose="public-service-prefill",connector="canonical",status="200"} 1"#
    ), "{text}");
    assert!(
        text.contains(r#"lienthong_stage_duration_seconds_bucket{le="0.0005",stage="store"} 1"#)
            || text.contains(r#"lienthong_stage_duration_seconds_bucket{stage="store",le="0.0005"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"lienthong_quota_rejections_total{agency="pccovid",purpose="covid-qr-status"} 1"#)
    );
    assert!(text.contains("lienthong_audit_head_seq 42"), "{text}");
    assert!(
        text.contains(r#"lienthong_open_connections{side="agency"} 0"#),
        "{text}"
    );
    assert!(text.contains(r#"lienthong_handshake_failures_total{side="agency",reason="unknown_ca"} 1"#));
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn requests_counted_again_add_to_their_own_series_only() {
    let m = Metrics::new();
    let outcome = |agency, status| RequestOutcome {
        side: Side::Agency,
        agency,
        purpose: "public-service-prefill",
        connector: "canonical",
        status,
    };
    for _ in 0..3 {
        m.count_request(outcome("dvc", 200));
    }
    m.count_request(outcome("dvc", 404));
    m.count_request(outcome("moh", 200));
    let text = m.render(0);
    let series = |agency: &str, status: u16, n: u64| {
        format!(
            r#"lienthong_requests_total{{side="agency",agency="{agency}",purpose="public-service-prefill",connector="canonical",status="{status}"}} {n}"#
        )
    };
    assert!(text.contains(&series("dvc", 200, 3)), "{text}");
    assert!(text.contains(&series("dvc", 404, 1)), "{text}");
    assert!(text.contains(&series("moh", 200, 1)), "{text}");
}

#[test]
fn connection_gauge_follows_guards() {
    let m = Metrics::new();
    let a = m.connection_opened(Side::Admin);
    let b = m.connection_opened(Side::Admin);
    assert_eq!(m.open_connections(Side::Admin), 2);
    drop(a);
    assert_eq!(m.open_connections(Side::Admin), 1);
    drop(b);
    assert_eq!(m.open_connections(Side::Admin), 0);
    assert_eq!(m.open_connections(Side::Agency), 0);
}

#[test]
fn handshake_reasons_are_classified() {
    let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    assert_eq!(
        handshake_failure_reason(&io(rustls::Error::NoCertificatesPresented)),
        "no_client_certificate"
    );
    assert_eq!(
        handshake_failure_reason(&io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))),
        "certificate_revoked"
    );
    assert_eq!(
        handshake_failure_reason(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        "eof"
    );
}
