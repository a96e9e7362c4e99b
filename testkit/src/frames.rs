//! Reading fields of reply frames without a full JSON parse, for a load
//! generator that reads hundreds of thousands of them a second.

/// The `rid` of a reply frame (both SocketCluster and wasmcluster start
/// replies with `{"rid":`).
pub fn reply_id(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("{\"rid\":")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// The integer after the first `"<key>":` in a frame.
pub fn integer_field(text: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let start = text.find(&pattern)? + pattern.len();
    let rest = &text[start..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Whether a reply frame carries an error.
pub fn is_error_reply(text: &str) -> bool {
    text.contains("\"error\":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reply_ids_and_fields() {
        assert_eq!(reply_id(r#"{"rid":42,"data":1}"#), Some(42));
        assert_eq!(reply_id(r#"{"event":"x"}"#), None);
        assert_eq!(
            integer_field(
                r##"{"event":"#publish","data":{"channel":"b","data":{"t":123,"p":"x"}}}"##,
                "t"
            ),
            Some(123)
        );
        assert!(is_error_reply(r#"{"rid":1,"error":{"message":"x"}}"#));
    }
}
