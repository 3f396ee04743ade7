//! JSON Schemas (draft 2020-12) for the envelope and each kind, compiled once per load.
//! INTERFACE STUB: to be implemented (see issue 2).

use std::path::Path;

use serde::Serialize;

use crate::envelope::Kind;

/// One way a record breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaViolation {
    /// JSON pointer into the record as sent (`/body/items/0/hs_code`; `""` for the root).
    pub pointer: String,
    /// The schema keyword broken (`required`, `enum`, `pattern`, `format`, ...).
    pub rule: String,
    /// A sentence a person can act on.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaLoadError {
    #[error("schema {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Where a record failed: the envelope (answered 400) or the body of its kind (answered 422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaFailure {
    Envelope(Vec<SchemaViolation>),
    Body(Kind, Vec<SchemaViolation>),
}

/// The compiled schemas of one load.
pub struct SchemaSet {}

impl SchemaSet {
    /// Loads `envelope.json`, `talent.json`, `materials.json` and `data.json` from `dir`.
    pub fn load(_dir: &Path) -> Result<SchemaSet, SchemaLoadError> {
        unimplemented!()
    }
    /// Validates the envelope, then the body against the schema of its kind.
    pub fn validate(&self, _record: &serde_json::Value) -> Result<Kind, SchemaFailure> {
        unimplemented!()
    }
    /// SHA-256 (hex) over the schema files of this load: recorded in every audit entry.
    pub fn hash(&self) -> &str {
        unimplemented!()
    }
    /// The raw schema document of a kind (policy loading checks pointers against it).
    pub fn kind_schema(&self, _kind: Kind) -> &serde_json::Value {
        unimplemented!()
    }
}
