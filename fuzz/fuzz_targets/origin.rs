//! `OriginPolicy::parse` and `allows`. Input: the first line is the
//! `--origins` list (comma-separated, as the flag splits it); what follows
//! the first newline is the `Origin` header (no newline: no header).
//! Must never panic.
//!
//! Also checked: `*:*` lets everything through, and the `host:port` of an
//! origin URL, listed alone, lets that origin through.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmcluster::config::OriginPolicy;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (list, origin) = match text.split_once('\n') {
        Some((list, origin)) => (list, Some(origin)),
        None => (text, None),
    };
    let entries: Vec<String> = list.split(',').map(str::to_owned).collect();
    if let Ok(policy) = OriginPolicy::parse(&entries) {
        let allowed = policy.allows(origin);
        if entries.iter().any(|e| e.trim() == "*:*") {
            assert!(allowed, "*:* refused {origin:?}");
        }
    }
    let Some(origin) = origin else {
        return;
    };
    let Ok(url) = url::Url::parse(origin) else {
        return;
    };
    if let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) {
        let own = vec![format!("{host}:{port}")];
        let policy = OriginPolicy::parse(&own)
            .unwrap_or_else(|error| panic!("{own:?} from {origin:?} refused: {error}"));
        assert!(policy.allows(Some(origin)), "{own:?} refused {origin:?}");
    }
});
