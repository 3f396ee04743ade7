//! The organisation registry: eligibility facts held by the parks, not asserted by senders.
//!
//! Which Hetao white-list ids, permits, TechTAS quota references and authorised-host status an
//! organisation holds is the parks' knowledge. A record may cite such a fact; a policy condition
//! (`registry = "whitelist_ids"`, docs/policies.md) checks the citation against the sender's
//! entry, or against the entry of an organisation the record names (`of = "/body/host_org/name"`).
//! The file is reloaded with the rest of the rule set. An organisation, or an attribute, the
//! registry does not give reads as missing, so a rule written as "not held" denies (fail closed).
//! Format: docs/registry.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// The attributes a registry entry may give, as policy conditions name them.
pub const ATTRIBUTES: &[&str] = &[
    "park",
    "name",
    "whitelist_ids",
    "permits",
    "techtas_quota_refs",
    "authorised_host",
    "ciio",
];

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    organisation: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    park: String,
    name: String,
    /// Free text for operators (who granted what, a contact); never read by rules.
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    whitelist_ids: Option<Vec<String>>,
    #[serde(default)]
    permits: Option<Vec<String>>,
    #[serde(default)]
    techtas_quota_refs: Option<Vec<String>>,
    #[serde(default)]
    authorised_host: Option<bool>,
    #[serde(default)]
    ciio: Option<bool>,
}

/// One organisation's facts, as JSON values so conditions read them like record fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub park: String,
    pub name: String,
    attributes: BTreeMap<&'static str, Value>,
}

impl Entry {
    /// The attribute's value, if the registry gives it.
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes.get(name)
    }
}

/// A loaded registry: entries by (park, name), a name index for `of` look-ups, and a digest of
/// the file so decisions can say which registry they were made under.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    /// Park → name → entry: looked up by `&str` on every decision that reads the registry, so
    /// without building a key.
    entries: BTreeMap<String, BTreeMap<String, Entry>>,
    /// Name → parks holding an entry of that name (for look-ups by a name in a record).
    by_name: BTreeMap<String, Vec<String>>,
    digest: String,
}

impl Registry {
    /// Reads and checks a registry file. `parks`, when given, are the parks a gateway serves:
    /// an entry for any other park is an error (a typo would otherwise silently deny).
    pub fn load(path: &Path, parks: Option<&BTreeSet<String>>) -> Result<Registry, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError::Invalid {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, parks).map_err(|message| RegistryError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses registry text (see [`Registry::load`]).
    pub fn parse(text: &str, parks: Option<&BTreeSet<String>>) -> Result<Registry, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut entries: BTreeMap<String, BTreeMap<String, Entry>> = BTreeMap::new();
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, e) in raw.organisation.into_iter().enumerate() {
            let at = format!("organisation #{}", i + 1);
            let name = e.name.trim().to_string();
            if name.is_empty() || name != e.name {
                return Err(format!(
                    "{at}: `name` must be the certificate's Subject O exactly (non-empty, no \
                     surrounding spaces)"
                ));
            }
            if let Some(parks) = parks {
                if !parks.contains(&e.park) {
                    return Err(format!(
                        "{at} ({name}): park `{}` is not a park of this gateway ({})",
                        e.park,
                        parks.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            let _ = e.note;
            let mut attributes = BTreeMap::new();
            attributes.insert("park", Value::String(e.park.clone()));
            attributes.insert("name", Value::String(name.clone()));
            for (attr, list) in [
                ("whitelist_ids", e.whitelist_ids),
                ("permits", e.permits),
                ("techtas_quota_refs", e.techtas_quota_refs),
            ] {
                if let Some(list) = list {
                    if let Some(bad) = list.iter().find(|s| s.trim().is_empty() || s.trim() != *s) {
                        return Err(format!(
                            "{at} ({name}): `{attr}` holds `{bad}`: empty or with surrounding spaces"
                        ));
                    }
                    attributes.insert(attr, Value::from(list));
                }
            }
            for (attr, flag) in [("authorised_host", e.authorised_host), ("ciio", e.ciio)] {
                if let Some(b) = flag {
                    attributes.insert(attr, Value::Bool(b));
                }
            }
            let of_park = entries.entry(e.park.clone()).or_default();
            if of_park.contains_key(&name) {
                return Err(format!(
                    "{at}: `{name}` appears twice in park `{}`; give each organisation one entry",
                    e.park
                ));
            }
            by_name
                .entry(name.clone())
                .or_default()
                .push(e.park.clone());
            of_park.insert(
                name.clone(),
                Entry {
                    park: e.park,
                    name,
                    attributes,
                },
            );
        }
        let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()));
        Ok(Registry {
            entries,
            by_name,
            digest,
        })
    }

    /// The entry of the organisation `name` of `park` (a sender: certificate park and Subject O).
    pub fn get(&self, park: &str, name: &str) -> Option<&Entry> {
        self.entries.get(park)?.get(name)
    }

    /// The entry of an organisation a record names: found by name in any park; a name two parks
    /// register is ambiguous and reads as missing (the rule then fails closed).
    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        match self.by_name.get(name).map(Vec::as_slice) {
            Some([park]) => self.get(park, name),
            _ => None,
        }
    }

    /// SHA-256 (hex) of the registry file as read.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// How many organisations it holds.
    pub fn len(&self) -> usize {
        self.entries.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.values().all(BTreeMap::is_empty)
    }

    /// Every entry, by park then name.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().flat_map(BTreeMap::values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[[organisation]]
park = "sz"
name = "Shenzhen Bay Genomics Institute"
whitelist_ids = ["HT-SZ-INST-2025-0147"]

[[organisation]]
park = "hk"
name = "HKSTP Quantum Devices Ltd."
authorised_host = true
"#;

    #[test]
    fn entries_are_found_by_park_and_name_and_give_only_what_they_declare() {
        let r = Registry::parse(TEXT, None).expect("parses");
        let e = r
            .get("sz", "Shenzhen Bay Genomics Institute")
            .expect("entry");
        assert_eq!(
            e.attribute("whitelist_ids"),
            Some(&serde_json::json!(["HT-SZ-INST-2025-0147"]))
        );
        assert_eq!(e.attribute("authorised_host"), None);
        assert!(r.get("hk", "Shenzhen Bay Genomics Institute").is_none());
        assert_eq!(
            r.by_name("HKSTP Quantum Devices Ltd.")
                .and_then(|e| e.attribute("authorised_host")),
            Some(&Value::Bool(true))
        );
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn a_name_registered_in_two_parks_is_ambiguous_by_name() {
        let text = format!(
            "{TEXT}\n[[organisation]]\npark = \"sz\"\nname = \"HKSTP Quantum Devices Ltd.\"\n"
        );
        let r = Registry::parse(&text, None).expect("parses");
        assert!(r.by_name("HKSTP Quantum Devices Ltd.").is_none());
        assert!(r.get("hk", "HKSTP Quantum Devices Ltd.").is_some());
    }

    #[test]
    fn mistakes_are_refused_with_the_entry_named() {
        let dup = format!(
            "{TEXT}\n[[organisation]]\npark = \"sz\"\nname = \"Shenzhen Bay Genomics Institute\"\n"
        );
        assert!(Registry::parse(&dup, None)
            .expect_err("duplicate")
            .contains("appears twice"));
        let unknown = "[[organisation]]\npark = \"sz\"\nname = \"A\"\nwhitelist = [\"x\"]\n";
        assert!(Registry::parse(unknown, None)
            .expect_err("unknown key")
            .contains("unknown field"));
        let parks: BTreeSet<String> = ["sz".to_string(), "hk".to_string()].into();
        let other = "[[organisation]]\npark = \"mo\"\nname = \"A\"\n";
        assert!(Registry::parse(other, Some(&parks))
            .expect_err("park")
            .contains("not a park of this gateway"));
        let spaced = "[[organisation]]\npark = \"sz\"\nname = \" A\"\n";
        assert!(Registry::parse(spaced, None).is_err());
        let empty_id = "[[organisation]]\npark = \"sz\"\nname = \"A\"\npermits = [\"\"]\n";
        assert!(Registry::parse(empty_id, None).is_err());
    }
}
