//! The component schemas: the canonical record from the loaded JSON Schema, and per purpose the projection
//! a read can release.

use super::*;

/// `#/$defs/X` → `#/components/schemas/X`, everywhere in `value`.
pub(super) fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/$defs/") {
                    *r = format!("#/components/schemas/{name}");
                }
            }
            obj.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// `Citizen`, its `$defs`, `Error`, `Purpose`.
pub(super) fn component_schemas(raw: &Value) -> Map<String, Value> {
    let mut schemas = Map::new();
    let mut citizen = raw.clone();
    if let Some(obj) = citizen.as_object_mut() {
        // The document's own dialect applies; $id would re-base the refs.
        obj.remove("$schema");
        obj.remove("$id");
        if let Some(Value::Object(defs)) = obj.remove("$defs") {
            for (name, mut def) in defs {
                rewrite_refs(&mut def);
                schemas.insert(name, def);
            }
        }
    }
    rewrite_refs(&mut citizen);
    schemas.insert("Citizen".into(), citizen);
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "properties": {
                        "code": { "type": "string", "description": "Stable machine-readable code." },
                        "message": { "type": "string" },
                        "request_id": { "type": "string" },
                    },
                },
            },
        }),
    );
    schemas.insert(
        "Purpose".into(),
        json!({
            "type": "object",
            "required": ["id", "title_vi", "title_en", "legal_basis", "read", "write", "price_vnd"],
            "properties": {
                "id": { "type": "string" },
                "title_vi": { "type": "string" },
                "title_en": { "type": "string" },
                "legal_basis": { "type": "string" },
                "read": { "type": "array", "items": { "type": "string" } },
                "write": { "type": "array", "items": { "type": "string" } },
                "price_vnd": { "type": "integer", "minimum": 0 },
                "consent_based": {
                    "type": "boolean",
                    "description": "Every request names the citizen's consent (X-Road-PDU-Consent-Ref).",
                },
                "max_hidden_days": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "How long an access may stay hidden from the citizen (X-Road-PDU-Hidden); 0 = never.",
                },
            },
        }),
    );
    schemas
}

/// The schema of what a projection onto `paths` can contain: only those properties, none required.
pub(super) fn project_node(root: &Value, node: &Value, paths: &[Vec<&str>]) -> Value {
    if paths.iter().any(|p| p.is_empty()) {
        let mut whole = node.clone();
        rewrite_refs(&mut whole);
        return whole;
    }
    let node = crate::schema::resolve_ref(root, node).unwrap_or(node);
    let description = node.get("description").cloned();
    let mut out = if paths.iter().all(|p| p.first() == Some(&"[]")) {
        let rest: Vec<Vec<&str>> = paths.iter().map(|p| p[1..].to_vec()).collect();
        let items = node.get("items").unwrap_or(&Value::Null);
        json!({ "type": "array", "items": project_node(root, items, &rest) })
    } else {
        let mut props = Map::new();
        let mut names: Vec<&str> = paths.iter().filter_map(|p| p.first().copied()).collect();
        names.dedup();
        for name in names {
            let Some(child) = node.get("properties").and_then(|p| p.get(name)) else {
                continue;
            };
            let rest: Vec<Vec<&str>> = paths
                .iter()
                .filter(|p| p.first() == Some(&name))
                .map(|p| p[1..].to_vec())
                .collect();
            props.insert(name.to_string(), project_node(root, child, &rest));
        }
        json!({ "type": "object", "additionalProperties": false, "properties": props })
    };
    if let (Some(d), Some(obj)) = (description, out.as_object_mut()) {
        obj.insert("description".into(), d);
    }
    out
}

/// What purpose `p` can release of a citizen record.
pub(super) fn project_schema(raw: &Value, p: &Purpose) -> Value {
    let mut paths: Vec<Vec<&str>> = p.read.iter().map(|f| f.segments()).collect();
    paths.sort();
    let mut schema = project_node(raw, raw, &paths);
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "description".into(),
            json!(format!(
                "What purpose `{}` releases of a citizen record ({}); fields absent from the record are left out.",
                p.id, p.title_en
            )),
        );
    }
    schema
}
