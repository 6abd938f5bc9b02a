#![allow(clippy::unwrap_used)]
use super::*;

fn error_for(edit: impl Fn(&str) -> String) -> (ConfigError, String) {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lienthong.toml")).unwrap();
    let text = edit(&example);
    let path = dir.path().join("lienthong.toml");
    std::fs::write(&path, &text).unwrap();
    (Config::load(&path).unwrap_err(), text)
}

fn line_of_text(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn an_unknown_key_is_reported_on_its_own_line_with_its_table() {
    let (e, text) = error_for(|t| t.replace("max_body_bytes", "max_body_byte"));
    assert_eq!(e.key, "limits.max_body_byte");
    let line = line_of_text(&text, "max_body_byte =");
    assert!(e.message.ends_with(&format!("(line {line})")), "{}", e.message);
}

#[test]
fn a_type_error_names_the_dotted_key() {
    let (e, text) = error_for(|t| t.replace("cache_mb = 64", "cache_mb = \"64\""));
    assert_eq!(e.key, "storage.cache_mb");
    let line = line_of_text(&text, "cache_mb =");
    assert!(e.message.ends_with(&format!("(line {line})")), "{}", e.message);
}

#[test]
fn the_example_sets_the_default_commit_delay_and_more_than_ten_milliseconds_is_refused() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lienthong.toml")).unwrap();
    let config: Config = toml::from_str(&example).unwrap();
    assert_eq!(
        config.audit.commit_delay_us,
        AuditConfig::default().commit_delay_us
    );
    assert_eq!(config.audit.check(), Ok(()));
    let too_long = AuditConfig {
        commit_delay_us: 10_001,
        ..AuditConfig::default()
    };
    let (key, message) = too_long.check().unwrap_err();
    assert_eq!(key, "audit.commit_delay_us");
    assert!(message.contains("at most 10000"), "{message}");
}
