//! Fuzz target: the hardened XML decoder of the XML/SOAP connectors (no DOCTYPE, no entities beyond the
//! predefined five, bounded depth, element count and attribute size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lienthong::connector::xml;

fn depth(e: &xml::Element) -> usize {
    1 + e.children.iter().map(depth).max().unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(root) = xml::parse(data) {
        assert!(depth(&root) <= xml::MAX_DEPTH);
        assert!(root.attrs.iter().all(|a| a.value.len() <= xml::MAX_ATTRIBUTE_BYTES));
    }
});
