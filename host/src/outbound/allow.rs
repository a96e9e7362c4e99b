//! Which destinations a plugin may reach: the operator's
//! `allowed-outbound-hosts` list, in the form Spin uses for
//! `allowed_outbound_hosts`.
//!
//! An entry is `scheme://host[:port]`:
//! - scheme `http`, `https`, or `*` for both;
//! - host a name (`api.example.com`), an IP address (`127.0.0.1`,
//!   `[::1]`), `*.example.com` for every subdomain of a name (not the name
//!   itself), or `*` for any host;
//! - port a number, or `*` for any; left out, the scheme's default (80 or
//!   443; both for scheme `*`).
//!
//! A host named without a wildcard is *explicit*: the operator meant that
//! machine, so it may be reached even on a private or loopback address.
//! A wildcard never grants an internal address (see `address`).

use std::fmt;
use std::net::IpAddr;

/// A destination's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `http://`.
    Http,
    /// `https://`.
    Https,
}

impl Scheme {
    /// The scheme's default port.
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// One entry of an allow list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    /// The entry as the operator wrote it: the `host` label of metrics.
    text: String,
    /// `None` for `*`.
    scheme: Option<Scheme>,
    host: HostPattern,
    /// `None` for `*`.
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Any host.
    Any,
    /// Every subdomain of this name (lowercase, no leading dot).
    SubdomainsOf(String),
    /// This name (lowercase).
    Name(String),
    /// This address.
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Any,
    Default,
    Port(u16),
}

/// A plugin's allow list; empty (every request denied) by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<AllowedHost>);

/// How a request was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant<'a> {
    /// The entry that allowed it, as written.
    pub(crate) entry: &'a str,
    /// Whether the entry names the host without a wildcard.
    pub(crate) explicit: bool,
}

impl AllowedHosts {
    /// Parse the entries of a config list; the error names the entry and
    /// what is wrong with it.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| AllowedHost::parse(entry).map_err(|why| format!("'{entry}': {why}")))
            .collect::<Result<_, _>>()
            .map(AllowedHosts)
    }

    /// Whether the list is empty (every request denied).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entry that allows `scheme://host:port`, preferring one that
    /// names the host explicitly. `host` is a lowercase name or an address.
    pub(crate) fn grant(&self, scheme: Scheme, host: &str, port: u16) -> Option<Grant<'_>> {
        let mut granted = None;
        for entry in self
            .0
            .iter()
            .filter(|entry| entry.allows(scheme, host, port))
        {
            let explicit = matches!(entry.host, HostPattern::Name(_) | HostPattern::Ip(_));
            let grant = Grant {
                entry: &entry.text,
                explicit,
            };
            if explicit {
                return Some(grant);
            }
            granted.get_or_insert(grant);
        }
        granted
    }
}

impl AllowedHost {
    fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or("write it as scheme://host[:port], e.g. https://api.example.com")?;
        let scheme = match scheme {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "*" => None,
            other => return Err(format!("scheme '{other}' is not http, https or *")),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err("only a scheme, a host and a port may be given (no path or user)".into());
        }
        let (host, port) = split_port(rest)?;
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(port) => PortPattern::Port(
                port.parse()
                    .map_err(|_| format!("port '{port}' is not a number from 0 to 65535 or *"))?,
            ),
        };
        Ok(AllowedHost {
            text: text.to_owned(),
            scheme,
            host: HostPattern::parse(host)?,
            port,
        })
    }

    fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.is_none_or(|allowed| allowed == scheme);
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Port(allowed) => allowed == port,
            PortPattern::Default => match self.scheme {
                Some(allowed) => allowed.default_port() == port,
                None => scheme.default_port() == port,
            },
        };
        scheme_ok && port_ok && self.host.matches(host)
    }
}

impl HostPattern {
    fn parse(host: &str) -> Result<Self, String> {
        if host.is_empty() {
            return Err("the host is missing".into());
        }
        if host == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return inner
                .parse()
                .map(HostPattern::Ip)
                .map_err(|_| format!("'{host}' is not an IPv6 address"));
        }
        if let Ok(ip) = host.parse() {
            return Ok(HostPattern::Ip(ip));
        }
        let (subdomains, name) = match host.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, host),
        };
        let valid = name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !valid {
            return Err(format!(
                "'{host}' is not a host name, an IP address, *.name or *"
            ));
        }
        let name = name.to_ascii_lowercase();
        Ok(if subdomains {
            HostPattern::SubdomainsOf(name)
        } else {
            HostPattern::Name(name)
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Name(name) => host == name,
            HostPattern::SubdomainsOf(name) => host
                .strip_suffix(name.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            HostPattern::Ip(ip) => parse_host_ip(host) == Some(*ip),
        }
    }
}

/// `host[:port]`, where an IPv6 host is in brackets.
fn split_port(rest: &str) -> Result<(&str, Option<&str>), String> {
    if rest.starts_with('[') {
        let end = rest
            .find(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        let (host, after) = rest.split_at(end + 1);
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected '{after}' after the address")),
        };
    }
    Ok(match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    })
}

/// The address a URL's host names, when it is an address (`127.0.0.1`,
/// `[::1]` or `::1`).
pub(crate) fn parse_host_ip(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<&str> = self.0.iter().map(|entry| entry.text.as_str()).collect();
        write!(f, "[{}]", entries.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn entries_match_scheme_host_and_port() {
        let allowed = list(&["https://api.example.com", "http://127.0.0.1:9000"]);
        assert!(
            allowed
                .grant(Scheme::Https, "api.example.com", 443)
                .is_some()
        );
        assert!(
            allowed
                .grant(Scheme::Http, "api.example.com", 443)
                .is_none(),
            "scheme"
        );
        assert!(
            allowed
                .grant(Scheme::Https, "api.example.com", 8443)
                .is_none(),
            "port"
        );
        assert!(
            allowed.grant(Scheme::Https, "evil.com", 443).is_none(),
            "host"
        );
        let grant = allowed.grant(Scheme::Http, "127.0.0.1", 9000).unwrap();
        assert!(grant.explicit);
        assert_eq!(grant.entry, "http://127.0.0.1:9000");
        assert!(allowed.grant(Scheme::Http, "127.0.0.1", 9001).is_none());
    }

    #[test]
    fn wildcards_cover_subdomains_ports_and_schemes_but_are_not_explicit() {
        let allowed = list(&["https://*.example.com", "*://cdn.test:*", "http://*:8080"]);
        let grant = allowed
            .grant(Scheme::Https, "a.b.example.com", 443)
            .unwrap();
        assert!(!grant.explicit);
        assert!(allowed.grant(Scheme::Https, "example.com", 443).is_none());
        assert!(
            allowed
                .grant(Scheme::Https, "badexample.com", 443)
                .is_none()
        );
        assert!(
            allowed
                .grant(Scheme::Http, "cdn.test", 1234)
                .unwrap()
                .explicit
        );
        assert!(allowed.grant(Scheme::Https, "cdn.test", 1).is_some());
        assert!(
            !allowed
                .grant(Scheme::Http, "localhost", 8080)
                .unwrap()
                .explicit
        );
    }

    #[test]
    fn an_explicit_entry_wins_over_a_wildcard() {
        let allowed = list(&["http://*:*", "http://localhost:*"]);
        assert!(
            allowed
                .grant(Scheme::Http, "localhost", 80)
                .unwrap()
                .explicit
        );
        assert!(!allowed.grant(Scheme::Http, "other", 80).unwrap().explicit);
    }

    #[test]
    fn ipv6_entries_and_hosts() {
        let allowed = list(&["http://[::1]:9000"]);
        assert!(allowed.grant(Scheme::Http, "[::1]", 9000).unwrap().explicit);
        assert!(allowed.grant(Scheme::Http, "::1", 9000).is_some());
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (entry, says) in [
            ("api.example.com", "scheme://host"),
            ("ftp://x", "scheme 'ftp'"),
            ("https://x/path", "no path"),
            ("https://x:eighty", "port 'eighty'"),
            ("https://exa mple.com", "not a host name"),
            ("https://", "missing"),
        ] {
            let error = AllowedHosts::parse(&[entry.to_owned()]).unwrap_err();
            assert!(
                error.contains(entry) && error.contains(says),
                "{entry}: {error}"
            );
        }
    }
}
