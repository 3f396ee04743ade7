//! Obligations of allow decisions, applied to the record before it is forwarded: pseudonymise a
//! field (keyed HMAC-SHA-256, lowercase hex) and drop a field.
//!
//! The key never leaves this module: no `Debug`, no `Display`, and load errors describe the file's
//! shape, never its content.

use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

use super::compile::parse_pointer;
use super::{Decision, Effect, Obligation, ObligationError, PolicyLoadError};

/// Shortest key accepted, in bytes (SPEC common formats: at least 32 bytes as hex).
pub const MIN_KEY_BYTES: usize = 32;

/// The deployment's pseudonymisation key.
pub struct PseudonymKey {
    key: hmac::Key,
}

impl PseudonymKey {
    /// Reads a key file: 64 or more hex characters (32+ bytes), surrounding whitespace ignored.
    pub fn from_file(path: &Path) -> Result<PseudonymKey, PolicyLoadError> {
        let err = |message: String| PolicyLoadError::Key {
            path: path.display().to_string(),
            message,
        };
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
        })
    }

    /// The content of a fresh key file: [`MIN_KEY_BYTES`] random bytes as lowercase hex and a
    /// newline (what `certs init` writes and [`PseudonymKey::from_file`] reads).
    pub fn generate_file_text() -> Result<String, ring::error::Unspecified> {
        let mut key = [0u8; MIN_KEY_BYTES];
        SystemRandom::new().fill(&mut key)?;
        Ok(format!("{}\n", hex::encode(key)))
    }

    /// The pseudonym of a value: HMAC-SHA-256 under the key, lowercase hex.
    pub fn pseudonym(&self, value: &str) -> String {
        hex::encode(hmac::sign(&self.key, value.as_bytes()).as_ref())
    }
}

/// Applies an allow decision's obligations in order (pseudonymisations first, then drops, so a
/// field both pseudonymised and dropped is simply gone). Returns one line per action for the
/// audit log: action and pointer, never a value.
pub fn apply(
    key: Option<&PseudonymKey>,
    decision: &Decision,
    record: &mut Value,
) -> Result<Vec<String>, ObligationError> {
    let mut done = Vec::new();
    if decision.effect != Effect::Allow {
        return Ok(done);
    }
    let fail = |rule: &str, pointer: &str, message: &str| ObligationError::Failed {
        rule: rule.to_string(),
        pointer: pointer.to_string(),
        message: message.to_string(),
    };
    for o in &decision.obligations {
        if let Obligation::Pseudonymise { pointer, rule } = o {
            let key =
                key.ok_or_else(|| fail(rule, pointer, "no pseudonymisation key configured"))?;
            let Some(slot) = record.pointer_mut(pointer) else {
                done.push(format!("pseudonymise {pointer}: absent"));
                continue;
            };
            let input = match slot {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Null => {
                    done.push(format!("pseudonymise {pointer}: absent"));
                    continue;
                }
                _ => {
                    return Err(fail(
                        rule,
                        pointer,
                        "only strings and numbers can be pseudonymised",
                    ))
                }
            };
            *slot = Value::String(key.pseudonym(&input));
            done.push(format!("pseudonymise {pointer}"));
        }
    }
    for o in &decision.obligations {
        if let Obligation::Drop { pointer, rule } = o {
            let parsed = parse_pointer(pointer).map_err(|m| fail(rule, pointer, &m))?;
            let Some((last, parent_tokens)) = parsed.tokens.split_last() else {
                return Err(fail(rule, pointer, "cannot drop the whole record"));
            };
            let parent_ptr = pointer
                .rfind('/')
                .map(|i| &pointer[..i])
                .unwrap_or_default();
            debug_assert_eq!(parent_tokens.len() + 1, parsed.tokens.len());
            let removed = match record.pointer_mut(parent_ptr) {
                Some(Value::Object(m)) => m.shift_remove(&*last.key).is_some(),
                Some(Value::Array(a)) => match last.index {
                    Some(i) if i < a.len() => {
                        a.remove(i);
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
            done.push(if removed {
                format!("drop {pointer}")
            } else {
                format!("drop {pointer}: absent")
            });
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn allow(obligations: Vec<Obligation>) -> Decision {
        Decision {
            effect: Effect::Allow,
            matched: vec![],
            obligations,
            policy_version: "t".into(),
        }
    }

    #[test]
    fn generated_key_file_is_read_back_and_keys_differ() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pseudonymisation.key");
        let text = PseudonymKey::generate_file_text().unwrap();
        std::fs::write(&path, &text).unwrap();
        let read = PseudonymKey::from_file(&path).unwrap();
        assert_eq!(
            read.pseudonym("x"),
            PseudonymKey::from_hex(&text).unwrap().pseudonym("x")
        );
        assert_ne!(text, PseudonymKey::generate_file_text().unwrap());
    }

    #[test]
    fn pseudonym_is_keyed_hmac_sha256_and_stable() {
        let k = PseudonymKey::from_hex(KEY).unwrap();
        let expected = hex::encode(
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, &hex::decode(KEY).unwrap()),
                b"passport:E1234567",
            )
            .as_ref(),
        );
        assert_eq!(k.pseudonym("passport:E1234567"), expected);
        assert_eq!(
            k.pseudonym("passport:E1234567"),
            k.pseudonym("passport:E1234567")
        );
        let other = PseudonymKey::from_hex(&KEY.replace("00", "ff")).unwrap();
        assert_ne!(other.pseudonym("passport:E1234567"), expected);
    }

    #[test]
    fn short_or_non_hex_keys_are_refused_without_quoting_them() {
        let e = PseudonymKey::from_hex("abcd").err().unwrap();
        assert!(e.contains("too short"));
        let e = PseudonymKey::from_hex("zz-secret-zz").err().unwrap();
        assert!(!e.contains("secret"));
    }

    #[test]
    fn pseudonymise_then_drop_rewrites_the_record() {
        let k = PseudonymKey::from_hex(KEY).unwrap();
        let mut rec = json!({"body": {"person_ref": "hkid:A1234567", "employer": "X", "keep": 1}});
        let d = allow(vec![
            Obligation::Drop {
                pointer: "/body/employer".into(),
                rule: "r".into(),
            },
            Obligation::Pseudonymise {
                pointer: "/body/person_ref".into(),
                rule: "r".into(),
            },
        ]);
        let done = apply(Some(&k), &d, &mut rec).unwrap();
        assert_eq!(
            rec["body"]["person_ref"],
            json!(k.pseudonym("hkid:A1234567"))
        );
        assert!(rec["body"].get("employer").is_none());
        assert_eq!(rec["body"]["keep"], json!(1));
        assert_eq!(
            done,
            vec!["pseudonymise /body/person_ref", "drop /body/employer"]
        );
        assert!(done.iter().all(|l| !l.contains("A1234567")));
    }

    #[test]
    fn missing_fields_are_reported_absent_and_objects_refused() {
        let k = PseudonymKey::from_hex(KEY).unwrap();
        let mut rec = json!({"body": {"obj": {"a": 1}}});
        let d = allow(vec![Obligation::Drop {
            pointer: "/body/nope".into(),
            rule: "r".into(),
        }]);
        assert_eq!(
            apply(Some(&k), &d, &mut rec).unwrap(),
            vec!["drop /body/nope: absent"]
        );
        let d = allow(vec![Obligation::Pseudonymise {
            pointer: "/body/obj".into(),
            rule: "r".into(),
        }]);
        assert!(apply(Some(&k), &d, &mut rec).is_err());
        let d = allow(vec![Obligation::Pseudonymise {
            pointer: "/body/obj/a".into(),
            rule: "r".into(),
        }]);
        assert!(apply(None, &d, &mut rec).is_err(), "no key: fail closed");
    }
}
