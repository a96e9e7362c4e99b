//! The origin allow-list of the WebSocket upgrade, as SocketCluster's
//! `origins` option: browsers send an `Origin` header, and a server that is
//! not meant for every web page refuses the pages it does not know.

/// Which origins may open a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    /// `*:*` was listed: every request passes, with or without `Origin`.
    any: bool,
    /// `host:port`, `host:*` and `*:port` entries.
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// Check the entries of `--origins`; the error says which entry is wrong.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut allowed = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.trim().to_ascii_lowercase();
            let valid = entry.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains('/')
                    && (port == "*" || port.parse::<u16>().is_ok())
            });
            if !valid {
                return Err(format!(
                    "'{entry}' is not an origin pattern: use host:port, host:*, *:port or *:*"
                ));
            }
            allowed.push(entry);
        }
        if allowed.is_empty() {
            return Err("the list is empty; use *:* to allow every origin".into());
        }
        Ok(OriginPolicy {
            any: allowed.iter().any(|entry| entry == "*:*"),
            allowed,
        })
    }

    /// Whether a request with this `Origin` header may upgrade. Without the
    /// header (or with `null`) only `*:*` lets it through, as in SocketCluster.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let Some(url) = origin.and_then(|origin| url::Url::parse(origin).ok()) else {
            return false;
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        [
            format!("{host}:{port}"),
            format!("{host}:*"),
            format!("*:{port}"),
        ]
        .iter()
        .any(|candidate| self.allowed.contains(candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OriginPolicy {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        OriginPolicy::parse(&entries).unwrap()
    }

    #[test]
    fn any_origin_lets_everything_through() {
        let any = policy(&["*:*"]);
        assert!(any.allows(None));
        assert!(any.allows(Some("https://evil.example")));
    }

    #[test]
    fn entries_match_host_and_port_with_default_ports() {
        let list = policy(&["app.example.com:443", "localhost:*", "*:8080"]);
        assert!(list.allows(Some("https://app.example.com")));
        assert!(!list.allows(Some("http://app.example.com")));
        assert!(list.allows(Some("http://localhost:3000")));
        assert!(list.allows(Some("http://other.example:8080")));
        assert!(list.allows(Some("https://APP.example.com")));
        assert!(!list.allows(Some("https://evil.example")));
        assert!(!list.allows(None));
        assert!(!list.allows(Some("null")));
        assert!(!list.allows(Some("not a url")));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["example.com", "https://example.com:443", "host:port", ":80"] {
            let error = OriginPolicy::parse(&[bad.to_owned()]).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert!(OriginPolicy::parse(&[]).is_err());
    }
}
