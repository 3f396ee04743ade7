//! Limits applied to raw JSON before it is parsed.
//!
//! serde_json's own recursion guard stops at 128 levels with a generic message; a record never
//! needs more than a handful, so the gateway refuses deep nesting earlier, with a clear error, and
//! without building the tree first.

/// `limits.max_json_depth` when the configuration does not set it.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// Returns the deepest nesting of arrays and objects in `bytes`, stopping early (with `limit + 1`)
/// once `limit` is exceeded. Brackets inside strings do not count.
pub fn nesting_depth(bytes: &[u8], limit: usize) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > limit {
                        return max;
                    }
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_objects_and_arrays() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":2}]}"#, 10), 3);
        assert_eq!(nesting_depth(b"1", 10), 0);
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{\"["}"#, 10), 1);
    }

    #[test]
    fn stops_past_the_limit() {
        let deep = "[".repeat(100_000);
        assert_eq!(nesting_depth(deep.as_bytes(), 32), 33);
    }
}
