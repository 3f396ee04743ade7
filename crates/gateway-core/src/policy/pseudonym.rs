//! Pseudonymisation keys and pseudonyms (docs/pseudonyms.md).
//!
//! A pseudonym is `hex(HMAC-SHA-256(key, "hetao-pseudonym/v1" 0x00 <scope> 0x00 <value>))`. The
//! scope separates the domains: `to:<park>` by default, so the two parks receive unlinkable
//! pseudonyms for the same person; `to:<park>/purpose:<p>` when a rule names a purpose; `shared`
//! only when a rule declares the pseudonym linkable, with its reason.
//!
//! Each key has an id, `pk-` and 16 hex characters of SHA-256 over a domain label and the key
//! bytes: it names the key without revealing it, and travels with every pseudonym. During a
//! rotation the previous key stays in use beside the current one until a configured time, so a
//! receiving park can link the old pseudonyms to the new ones.
//!
//! The key bytes never leave this module: no `Debug`, no `Display`, and load errors describe the
//! file's shape and mode, never its content.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};
use serde::Serialize;

use super::PolicyLoadError;
use crate::config::PoliciesConfig;
use crate::key_file;

/// Shortest key accepted, in bytes (SPEC common formats: at least 32 bytes as hex).
pub const MIN_KEY_BYTES: usize = 32;
/// The label that starts every pseudonym's HMAC input (the version of this construction).
pub const PSEUDONYM_DOMAIN: &str = "hetao-pseudonym/v1";
/// The label hashed before the key bytes for a key id.
pub const KEY_ID_DOMAIN: &str = "hetao-pseudonym-key-id/v1";
/// The scope of a pseudonym a rule declares linkable across parks.
pub const SHARED_SCOPE: &str = "shared";

/// One pseudonymisation key and its id.
pub struct PseudonymKey {
    key: hmac::Key,
    id: String,
}

impl PseudonymKey {
    /// Reads a key file: 64 or more hex characters (32+ bytes), surrounding whitespace ignored.
    /// A file the group or others may read or write is refused before it is read.
    pub fn from_file(path: &Path) -> Result<PseudonymKey, PolicyLoadError> {
        let err = |message: String| PolicyLoadError::Key {
            path: path.display().to_string(),
            message,
        };
        key_file::check_private(path).map_err(|e| err(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::from_hex(&text).map_err(err)
    }

    /// Parses hex key text; the error never quotes the text.
    pub fn from_hex(text: &str) -> Result<PseudonymKey, String> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| "not hexadecimal (expected 64 or more hex characters)".to_string())?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "too short: {} bytes, at least {MIN_KEY_BYTES} are required",
                bytes.len()
            ));
        }
        Ok(PseudonymKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            id: key_id(&bytes),
        })
    }

    /// The content of a fresh key file: [`MIN_KEY_BYTES`] random bytes as lowercase hex and a
    /// newline (what `certs init` writes and [`PseudonymKey::from_file`] reads).
    pub fn generate_file_text() -> Result<String, ring::error::Unspecified> {
        let mut key = [0u8; MIN_KEY_BYTES];
        SystemRandom::new().fill(&mut key)?;
        Ok(format!("{}\n", hex::encode(key)))
    }

    /// The key's id: `pk-` and 16 hex characters.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pseudonym of `value` in `scope`: HMAC-SHA-256 under the key, lowercase hex.
    pub fn pseudonym(&self, scope: &str, value: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(PSEUDONYM_DOMAIN.as_bytes());
        ctx.update(&[0]);
        ctx.update(scope.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        hex::encode(ctx.sign().as_ref())
    }
}

/// `pk-` + the first 16 hex characters of SHA-256(`hetao-pseudonym-key-id/v1` || key bytes).
pub fn key_id(key_bytes: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(KEY_ID_DOMAIN.as_bytes());
    ctx.update(key_bytes);
    let d = ctx.finish();
    format!("pk-{}", hex::encode(&d.as_ref()[..8]))
}

/// The scope of a pseudonym bound for park `to`: `shared` when the rule declares it linkable,
/// else `to:<park>` and, when the rule names a purpose, `/purpose:<purpose>`.
pub fn scope(to: &str, purpose: Option<&str>, linkable: bool) -> String {
    if linkable {
        return SHARED_SCOPE.to_string();
    }
    match purpose {
        Some(p) => format!("to:{to}/purpose:{p}"),
        None => format!("to:{to}"),
    }
}

/// The keys in force: the current one and, during a rotation, the previous one until its overlap
/// ends.
pub struct PseudonymKeys {
    current: PseudonymKey,
    previous: Option<(PseudonymKey, DateTime<Utc>)>,
}

impl From<PseudonymKey> for PseudonymKeys {
    fn from(current: PseudonymKey) -> Self {
        PseudonymKeys {
            current,
            previous: None,
        }
    }
}

/// Where the keys come from: `[policies] pseudonymisation_key`, `pseudonymisation_previous_key`
/// and `pseudonymisation_previous_until`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFiles {
    pub current: Option<PathBuf>,
    pub previous: Option<PathBuf>,
    pub previous_until: Option<DateTime<Utc>>,
}

impl KeyFiles {
    /// The key files of the configuration's `[policies]`.
    pub fn of(policies: &PoliciesConfig) -> KeyFiles {
        KeyFiles {
            current: policies.pseudonymisation_key.clone(),
            previous: policies.pseudonymisation_previous_key.clone(),
            previous_until: policies.pseudonymisation_previous_until,
        }
    }

    /// Only a current key (or none).
    pub fn current_only(path: Option<&Path>) -> KeyFiles {
        KeyFiles {
            current: path.map(Path::to_path_buf),
            ..KeyFiles::default()
        }
    }
}

/// Which key and scope a pseudonymisation uses (what `check` shows and the audit line names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PseudonymPlan {
    pub key_id: String,
    pub scope: String,
    /// The previous key's id while its overlap lasts: the forwarded value carries both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
}

impl PseudonymKeys {
    /// Adds the previous key of a rotation, used beside the current one before `until`.
    pub fn with_previous(mut self, previous: PseudonymKey, until: DateTime<Utc>) -> PseudonymKeys {
        self.previous = Some((previous, until));
        self
    }

    pub fn current(&self) -> &PseudonymKey {
        &self.current
    }

    /// The previous key if its overlap still lasts at `now` (`now` before the configured end).
    pub fn previous_at(&self, now: DateTime<Utc>) -> Option<&PseudonymKey> {
        self.previous
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(k, _)| k)
    }

    /// The end of the overlap, if a previous key is loaded.
    pub fn previous_until(&self) -> Option<DateTime<Utc>> {
        self.previous.as_ref().map(|(_, until)| *until)
    }

    /// The key ids and scope a pseudonym for park `to` gets at `now`.
    pub fn plan(
        &self,
        to: &str,
        purpose: Option<&str>,
        linkable: bool,
        now: DateTime<Utc>,
    ) -> PseudonymPlan {
        PseudonymPlan {
            key_id: self.current.id().to_string(),
            scope: scope(to, purpose, linkable),
            previous_key_id: self.previous_at(now).map(|k| k.id().to_string()),
        }
    }

    /// Reads the configured key files as of `now`. Returns no keys when no current key is
    /// configured, and the warnings worth logging: a previous key whose overlap has ended is not
    /// read at all (it may already be deleted), and the warning says it can go.
    pub fn load(
        files: &KeyFiles,
        now: DateTime<Utc>,
    ) -> Result<(Option<PseudonymKeys>, Vec<String>), PolicyLoadError> {
        let mut warnings = Vec::new();
        let Some(current_path) = &files.current else {
            return Ok((None, warnings));
        };
        let keys = PseudonymKeys::from(PseudonymKey::from_file(current_path)?);
        let Some(previous_path) = &files.previous else {
            return Ok((Some(keys), warnings));
        };
        let key_err = |message: &str| PolicyLoadError::Key {
            path: previous_path.display().to_string(),
            message: message.to_string(),
        };
        let until = files.previous_until.ok_or_else(|| {
            key_err("a previous key needs `pseudonymisation_previous_until` (RFC 3339)")
        })?;
        if now >= until {
            warnings.push(format!(
                "pseudonymisation_previous_key {}: its overlap ended at {} and it is no longer \
                 used; delete the file and remove pseudonymisation_previous_key and \
                 pseudonymisation_previous_until from the configuration",
                previous_path.display(),
                until.to_rfc3339()
            ));
            return Ok((Some(keys), warnings));
        }
        let previous = PseudonymKey::from_file(previous_path)?;
        if previous.id() == keys.current.id() {
            return Err(key_err(
                "the previous key is the current key (same key id); name the retired key file",
            ));
        }
        Ok((Some(keys.with_previous(previous, until)), warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn write_key(dir: &Path, name: &str, hex_text: &str) -> PathBuf {
        let p = dir.join(name);
        key_file::write_private(&p, hex_text.as_bytes()).unwrap();
        p
    }

    #[test]
    fn pseudonym_is_hmac_over_domain_scope_and_value() {
        let k = PseudonymKey::from_hex(KEY).unwrap();
        let raw = hmac::Key::new(hmac::HMAC_SHA256, &hex::decode(KEY).unwrap());
        let expected = hex::encode(
            hmac::sign(&raw, b"hetao-pseudonym/v1\0to:hk\0passport:E12345678").as_ref(),
        );
        assert_eq!(k.pseudonym("to:hk", "passport:E12345678"), expected);
        assert_eq!(expected.len(), 64);
        // Stable under one key; different under another.
        assert_eq!(
            k.pseudonym("to:hk", "passport:E12345678"),
            k.pseudonym("to:hk", "passport:E12345678")
        );
        let other = PseudonymKey::from_hex(&KEY.replace("00", "ff")).unwrap();
        assert_ne!(other.pseudonym("to:hk", "passport:E12345678"), expected);
    }

    #[test]
    fn scopes_separate_parks_and_purposes_unless_shared() {
        let k = PseudonymKey::from_hex(KEY).unwrap();
        let v = "passport:E12345678";
        let hk = k.pseudonym(&scope("hk", None, false), v);
        let sz = k.pseudonym(&scope("sz", None, false), v);
        let research = k.pseudonym(&scope("hk", Some("research"), false), v);
        assert_ne!(hk, sz, "the two parks get unlinkable pseudonyms");
        assert_ne!(hk, research, "a purpose is a domain of its own");
        assert_eq!(
            scope("hk", Some("research"), false),
            "to:hk/purpose:research"
        );
        assert_eq!(
            k.pseudonym(&scope("hk", None, true), v),
            k.pseudonym(&scope("sz", None, true), v),
            "a linkable pseudonym is the same at every park"
        );
        assert_eq!(scope("sz", Some("x"), true), SHARED_SCOPE);
        // The separator keeps scope and value apart: moving a byte between them changes it.
        assert_ne!(k.pseudonym("to:h", "k\0v"), k.pseudonym("to:hk", "v"));
    }

    #[test]
    fn key_id_is_a_labelled_hash_of_the_key_and_not_the_key() {
        let k = PseudonymKey::from_hex(KEY).unwrap();
        let mut input = b"hetao-pseudonym-key-id/v1".to_vec();
        input.extend(hex::decode(KEY).unwrap());
        let d = digest::digest(&digest::SHA256, &input);
        assert_eq!(k.id(), format!("pk-{}", &hex::encode(d.as_ref())[..16]));
        assert_eq!(k.id().len(), 19);
        assert!(!KEY.contains(&k.id()[3..]));
        let plain = hex::encode(digest::digest(&digest::SHA256, &hex::decode(KEY).unwrap()));
        assert!(!plain.starts_with(&k.id()[3..]), "domain-separated");
        let other = PseudonymKey::from_hex(&KEY.replace("00", "ff")).unwrap();
        assert_ne!(k.id(), other.id());
    }

    #[test]
    fn generated_key_file_is_read_back_and_keys_differ() {
        let dir = tempfile::tempdir().unwrap();
        let text = PseudonymKey::generate_file_text().unwrap();
        let path = write_key(dir.path(), "pseudonymisation.key", &text);
        let read = PseudonymKey::from_file(&path).unwrap();
        assert_eq!(read.id(), PseudonymKey::from_hex(&text).unwrap().id());
        assert_eq!(
            read.pseudonym("to:hk", "x"),
            PseudonymKey::from_hex(&text)
                .unwrap()
                .pseudonym("to:hk", "x")
        );
        assert_ne!(text, PseudonymKey::generate_file_text().unwrap());
    }

    #[test]
    fn short_or_non_hex_keys_are_refused_without_quoting_them() {
        let e = PseudonymKey::from_hex("abcd").err().unwrap();
        assert!(e.contains("too short"));
        let e = PseudonymKey::from_hex("zz-secret-zz").err().unwrap();
        assert!(!e.contains("secret"));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_group_or_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), "p.key", KEY);
        for mode in [0o644, 0o640, 0o660, 0o606] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = PseudonymKey::from_file(&path).err().unwrap().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
            assert!(e.contains("chmod 600"), "{e}");
            assert!(!e.contains("0102030405"), "never the key: {e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        PseudonymKey::from_file(&path).unwrap();
    }

    #[test]
    fn the_previous_key_is_used_until_its_overlap_ends_and_then_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let current = write_key(dir.path(), "new.key", &"11".repeat(32));
        let previous = write_key(dir.path(), "old.key", &"22".repeat(32));
        let until = at("2026-12-31T00:00:00+08:00");
        let files = KeyFiles {
            current: Some(current.clone()),
            previous: Some(previous.clone()),
            previous_until: Some(until),
        };
        let (keys, warnings) = PseudonymKeys::load(&files, at("2026-12-01T00:00:00Z")).unwrap();
        let keys = keys.unwrap();
        assert!(warnings.is_empty());
        let old_id = PseudonymKey::from_hex(&"22".repeat(32))
            .unwrap()
            .id()
            .to_string();
        let before = keys.plan("hk", None, false, at("2026-12-30T15:59:59Z"));
        assert_eq!(before.previous_key_id.as_deref(), Some(old_id.as_str()));
        assert_eq!(before.key_id, keys.current().id());
        assert!(keys.previous_at(until).is_none(), "the end is exclusive");

        // After the overlap the file is not even read: deleting it is safe, and it is said so.
        std::fs::remove_file(&previous).unwrap();
        let (keys, warnings) = PseudonymKeys::load(&files, until).unwrap();
        assert!(keys.unwrap().previous_until().is_none());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("old.key") && warnings[0].contains("delete"));

        // Before it ends, a missing previous key is an error.
        assert!(PseudonymKeys::load(&files, at("2026-12-01T00:00:00Z")).is_err());
        // The same key twice is a mistake in the configuration.
        let same = KeyFiles {
            previous: Some(current.clone()),
            ..files.clone()
        };
        let e = PseudonymKeys::load(&same, at("2026-12-01T00:00:00Z"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("same key id"), "{e}");
        assert!(PseudonymKeys::load(&KeyFiles::default(), until)
            .unwrap()
            .0
            .is_none());
    }
}
