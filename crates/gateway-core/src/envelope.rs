//! The record envelope every partner organisation sends (`POST /v1/records`).
//!
//! ```json
//! {"record_id": "<uuid>", "kind": "talent|materials|data", "from": "sz", "to": "hk",
//!  "created_at": "<RFC 3339>", "body": { ...fields of that kind... }}
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// The three kinds of flow across the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// People crossing to work, research or visit.
    Talent,
    /// Shipments of research materials and equipment.
    Materials,
    /// Cross-boundary transfers of datasets and personal information.
    Data,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Talent, Kind::Materials, Kind::Data];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Talent => "talent",
            Kind::Materials => "materials",
            Kind::Data => "data",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "talent" => Some(Kind::Talent),
            "materials" => Some(Kind::Materials),
            "data" => Some(Kind::Data),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The routing facts of an envelope, read after it has passed the envelope schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHead {
    pub record_id: String,
    pub kind: Kind,
    pub from: String,
    pub to: String,
}

impl EnvelopeHead {
    /// Reads the head from a parsed record. `None` if a field is missing or of the wrong type
    /// (the envelope schema reports the details).
    pub fn read(record: &serde_json::Value) -> Option<EnvelopeHead> {
        let s = |k: &str| record.get(k).and_then(|v| v.as_str());
        Some(EnvelopeHead {
            record_id: s("record_id")?.to_string(),
            kind: Kind::parse(s("kind")?)?,
            from: s("from")?.to_string(),
            to: s("to")?.to_string(),
        })
    }
}

/// The record id if the body has a usable one, for answers and audit entries of records that fail
/// later checks. Bounded so a hostile id cannot bloat the log.
pub fn record_id_hint(record: &serde_json::Value) -> Option<String> {
    let id = record.get("record_id")?.as_str()?;
    if id.is_empty() || id.len() > 128 {
        return None;
    }
    Some(id.to_string())
}
