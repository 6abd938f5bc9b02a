//! Stage: decode/encode for XML connectors. A small namespace-aware DOM read with quick-xml, refusing what
//! an inter-agency broker must never process: DOCTYPE declarations (and with them every entity expansion
//! attack), entity references other than the five predefined ones, non-UTF-8 documents, and documents too
//! deep, too large or with oversized attributes.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use crate::error::{ApiError, ErrorCode};

/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most elements in one document.
pub const MAX_ELEMENTS: usize = 20_000;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 8 * 1024;

/// One element: its namespace URI and local name, attributes, children and text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    /// Namespace URI, if bound.
    pub ns: Option<String>,
    /// Local name.
    pub local: String,
    /// Attributes (namespace declarations excluded).
    pub attrs: Vec<Attribute>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// Concatenated text content (not of children).
    pub text: String,
}

/// One attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// Namespace URI if prefixed.
    pub ns: Option<String>,
    /// Local name.
    pub local: String,
    /// Unescaped value.
    pub value: String,
}

/// One step of an element path: namespace URI (or none) and local name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Namespace URI the step's prefix stands for; `None` for an unprefixed name.
    pub ns: Option<String>,
    /// Local name.
    pub local: String,
}

fn bad(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

fn owned_ns(r: ResolveResult<'_>) -> Result<Option<String>, ApiError> {
    match r {
        ResolveResult::Bound(ns) => Ok(Some(ns.as_ref().to_string())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(bad(
            ErrorCode::InvalidXml,
            format!("undeclared namespace prefix {prefix:?}"),
        )),
    }
}

/// Parse a request body into its root element.
pub fn parse(body: &[u8]) -> Result<Element, ApiError> {
    let body = body.strip_prefix("\u{FEFF}".as_bytes()).unwrap_or(body);
    let text = std::str::from_utf8(body)
        .map_err(|_| bad(ErrorCode::InvalidEncoding, "the XML document is not UTF-8"))?;
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| bad(ErrorCode::InvalidXml, e.to_string()))?;
        let (ns, start_or_empty) = match &event {
            Event::Start(_) => (owned_ns(resolved)?, StartKind::Start),
            Event::Empty(_) => (owned_ns(resolved)?, StartKind::Empty),
            _ => (None, StartKind::Other),
        };
        match event {
            Event::DocType(_) => {
                return Err(bad(
                    ErrorCode::XmlDoctypeRefused,
                    "DOCTYPE and entity declarations are refused",
                ));
            }
            Event::Decl(decl) => {
                if let Some(Ok(enc)) = decl.encoding() {
                    if !enc.eq_ignore_ascii_case("utf-8") {
                        return Err(bad(
                            ErrorCode::InvalidEncoding,
                            format!("encoding {enc} is not supported; send UTF-8"),
                        ));
                    }
                }
            }
            Event::Start(start) | Event::Empty(start) => {
                let empty = matches!(start_or_empty, StartKind::Empty);
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(bad(
                        ErrorCode::XmlTooLarge,
                        format!("more than {MAX_ELEMENTS} elements"),
                    ));
                }
                if root.is_some() {
                    return Err(bad(ErrorCode::InvalidXml, "content after the root element"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(bad(
                        ErrorCode::TooDeep,
                        format!("XML nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
                let local = start.local_name().as_ref().to_string();
                let mut attrs = Vec::new();
                for attr in start.attributes() {
                    let attr = attr.map_err(|e| bad(ErrorCode::InvalidXml, e.to_string()))?;
                    let key = attr.key;
                    if key.as_ref() == "xmlns" || key.as_ref().starts_with("xmlns:") {
                        continue;
                    }
                    if attr.value.len() > MAX_ATTRIBUTE_BYTES {
                        return Err(bad(
                            ErrorCode::XmlTooLarge,
                            format!("an attribute is over {MAX_ATTRIBUTE_BYTES} bytes"),
                        ));
                    }
                    let (attr_ns, attr_local) = reader.resolver().resolve_attribute(key);
                    let value = attr
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| bad(ErrorCode::XmlEntityRefused, e.to_string()))?
                        .into_owned();
                    attrs.push(Attribute {
                        ns: owned_ns(attr_ns)?,
                        local: attr_local.as_ref().to_string(),
                        value,
                    });
                }
                stack.push(Element {
                    ns,
                    local,
                    attrs,
                    children: Vec::new(),
                    text: String::new(),
                });
                if empty {
                    close(&mut stack, &mut root)?;
                }
            }
            Event::End(_) => close(&mut stack, &mut root)?,
            Event::Text(t) => push_text(&mut stack, &t.xml10_content())?,
            Event::CData(c) => push_text(&mut stack, &c.xml10_content())?,
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|e| bad(ErrorCode::InvalidXml, e.to_string()))?
                } else {
                    match r.xml10_content().as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        other => {
                            return Err(bad(
                                ErrorCode::XmlEntityRefused,
                                format!("entity reference &{other}; is refused"),
                            ))
                        }
                    }
                };
                if let Some(c) = resolved {
                    push_text(&mut stack, c.encode_utf8(&mut [0u8; 4]))?;
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(bad(
            ErrorCode::InvalidXml,
            "unclosed element at the end of the document",
        ));
    }
    root.ok_or_else(|| bad(ErrorCode::InvalidXml, "no root element"))
}

enum StartKind {
    Start,
    Empty,
    Other,
}

fn close(stack: &mut Vec<Element>, root: &mut Option<Element>) -> Result<(), ApiError> {
    let element = stack
        .pop()
        .ok_or_else(|| bad(ErrorCode::InvalidXml, "unbalanced end tag"))?;
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
    Ok(())
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), ApiError> {
    match stack.last_mut() {
        Some(element) => {
            element.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(bad(ErrorCode::InvalidXml, "text outside the root element")),
    }
}

impl Element {
    /// The first child with this namespace and local name.
    pub fn child(&self, step: &Step) -> Option<&Element> {
        self.children
            .iter()
            .find(|c| c.local == step.local && c.ns == step.ns)
    }

    /// Whether some step of `path` (the first names this element itself) matches more than one element:
    /// reading the first of two `SoDinhDanh` would silently pick one of two answers.
    pub fn ambiguous(&self, path: &[Step]) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return false;
        };
        if first.local != self.local || first.ns != self.ns {
            return false;
        }
        let mut at = self;
        for step in rest {
            let mut matching = at
                .children
                .iter()
                .filter(|c| c.local == step.local && c.ns == step.ns);
            let Some(next) = matching.next() else {
                return false;
            };
            if matching.next().is_some() {
                return true;
            }
            at = next;
        }
        false
    }

    /// The text at `path` (the first step names this element itself), or an attribute's value when
    /// `attribute` is given.
    pub fn find(&self, path: &[Step], attribute: Option<&Step>) -> Option<&str> {
        let (first, rest) = path.split_first()?;
        if first.local != self.local || first.ns != self.ns {
            return None;
        }
        let mut at = self;
        for step in rest {
            at = at.child(step)?;
        }
        match attribute {
            Some(a) => at
                .attrs
                .iter()
                .find(|x| x.local == a.local && x.ns == a.ns)
                .map(|x| x.value.as_str()),
            None => Some(at.text.as_str()),
        }
    }
}

/// Escape text for element content and attribute values.
pub fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DC: &str = "http://www.mic.gov.vn/dancu/1.0";

    fn step(ns: Option<&str>, local: &str) -> Step {
        Step {
            ns: ns.map(str::to_string),
            local: local.into(),
        }
    }

    #[test]
    fn reads_namespaced_elements_attributes_and_predefined_entities() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
            <a:Root xmlns:a="http://www.mic.gov.vn/dancu/1.0" xmlns:b="urn:b" b:kind="x&amp;y">
              <a:Ten>Nguy&#7877;n &lt;An&gt;</a:Ten><a:Empty/><Plain>p</Plain>
            </a:Root>"#;
        let root = parse(doc).unwrap_or_default();
        let path = [step(Some(DC), "Root"), step(Some(DC), "Ten")];
        assert_eq!(root.find(&path, None), Some("Nguyễn <An>"));
        assert_eq!(
            root.find(&[step(Some(DC), "Root")], Some(&step(Some("urn:b"), "kind"))),
            Some("x&y")
        );
        assert_eq!(
            root.find(&[step(Some(DC), "Root"), step(None, "Plain")], None),
            Some("p")
        );
        assert_eq!(
            root.find(&[step(Some(DC), "Root"), step(Some(DC), "Empty")], None),
            Some("")
        );
        assert_eq!(root.find(&[step(None, "Root")], None), None, "namespace matters");
    }

    #[test]
    fn refuses_doctype_entities_and_oversize() {
        let xxe = br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#;
        assert_eq!(
            parse(xxe).err().map(|e| e.code.as_str()),
            Some("xml_doctype_refused")
        );
        assert_eq!(
            parse(b"<r>&x;</r>").err().map(|e| e.code.as_str()),
            Some("xml_entity_refused")
        );
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert_eq!(
            parse(deep.as_bytes()).err().map(|e| e.code.as_str()),
            Some("too_deep")
        );
        let big = format!("<r a=\"{}\"/>", "x".repeat(MAX_ATTRIBUTE_BYTES + 1));
        assert_eq!(
            parse(big.as_bytes()).err().map(|e| e.code.as_str()),
            Some("xml_too_large")
        );
        assert_eq!(
            parse(b"<r>\xff</r>").err().map(|e| e.code.as_str()),
            Some("invalid_encoding")
        );
        assert_eq!(
            parse(b"<r><x></r>").err().map(|e| e.code.as_str()),
            Some("invalid_xml")
        );
        assert_eq!(
            parse(b"<r/><r/>").err().map(|e| e.code.as_str()),
            Some("invalid_xml")
        );
        assert_eq!(parse(b"").err().map(|e| e.code.as_str()), Some("invalid_xml"));
        assert_eq!(
            parse(br#"<?xml version="1.0" encoding="ISO-8859-1"?><r/>"#)
                .err()
                .map(|e| e.code.as_str()),
            Some("invalid_encoding")
        );
    }
}
