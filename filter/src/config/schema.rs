//! The JSON Schema of the filter configuration, generated from the serde types the filter
//! parses with (schemars derives on the `Raw*` structs), so the shape is written once.
//!
//! The schema describes the shape only: field names and types, which are required, no
//! unknown field, and each field's meaning. The checks of values (ranges, addresses, keys,
//! route shadowing) stay in the parser: `x402-filter check-config` runs them.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::{RawConfig, UniqueMap};

/// The schema committed at `filter/config.schema.json` (`x402-filter schema` prints it).
pub fn json_schema() -> Schema {
    schemars::schema_for!(RawConfig)
}

/// The schema as the committed file holds it: pretty JSON and a final newline.
pub fn json_schema_text() -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(&json_schema())?;
    text.push('\n');
    Ok(text)
}

/// A JSON object whose values are `T` (the deserializer refuses duplicate keys, which a
/// schema cannot say).
impl<T: JsonSchema> JsonSchema for UniqueMap<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        Cow::Owned(format!("Map_of_{}", T::schema_name()))
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "additionalProperties": generator.subschema_for::<T>(),
        })
    }
}
