//! `bench/results/latest.{json,md}`, written by more than one bench: each merges its rows in
//! by name and replaces its own section of the markdown, leaving the others' in place.

use anyhow::Result;
use serde_json::{json, Value};

use crate::paths;

/// Merges `rows` into `latest.json` (rows with the same `name` replaced, the others kept),
/// sets each `(key, value)` of `extra` at the top level of the document, and puts `md` in
/// `latest.md` between `<!-- {section}: begin -->` and `<!-- {section}: end -->` (appended
/// when the file has no such section yet).
pub fn merge_into_latest(
    section: &str,
    md: &str,
    rows: Vec<Value>,
    extra: &[(&str, Value)],
) -> Result<()> {
    let dir = paths::root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let json_path = dir.join("latest.json");
    let mut doc: Value = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let ours: Vec<String> = rows
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    let mut merged: Vec<Value> = doc["rows"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| {
                    r["name"]
                        .as_str()
                        .is_none_or(|n| !ours.iter().any(|o| o == n))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    merged.extend(rows);
    doc["rows"] = Value::Array(merged);
    for (k, v) in extra {
        doc[*k] = v.clone();
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")?;

    let md_path = dir.join("latest.md");
    let old = std::fs::read_to_string(&md_path).unwrap_or_default();
    std::fs::write(&md_path, replace_section(&old, section, md))?;
    Ok(())
}

/// `old` with the text between our section's markers replaced by `md`.
fn replace_section(old: &str, section: &str, md: &str) -> String {
    let begin = format!("<!-- {section}: begin -->");
    let end = format!("<!-- {section}: end -->");
    let block = format!("{begin}\n{md}{end}\n");
    match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!(
            "{}{block}{}",
            &old[..a],
            old[b + end.len()..].trim_start_matches('\n')
        ),
        _ if old.trim().is_empty() => block,
        _ => format!("{}\n\n{block}", old.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn a_section_is_replaced_in_place_and_others_kept() {
        let old = "# head\n\n<!-- a: begin -->\nold a\n<!-- a: end -->\n<!-- b: begin -->\nb\n<!-- b: end -->\n";
        let new = replace_section(old, "a", "new a\n");
        assert_eq!(
            new,
            "# head\n\n<!-- a: begin -->\nnew a\n<!-- a: end -->\n<!-- b: begin -->\nb\n<!-- b: end -->\n"
        );
        let appended = replace_section(&new, "c", "c\n");
        assert!(appended.starts_with(&new.trim_end().to_string()));
        assert!(appended.ends_with("<!-- c: begin -->\nc\n<!-- c: end -->\n"));
        assert_eq!(
            replace_section("", "a", "x\n"),
            "<!-- a: begin -->\nx\n<!-- a: end -->\n"
        );
    }
}
