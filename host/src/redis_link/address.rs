//! The `--broker` URL: which Redis, in which topology.
//!
//! - `redis://[[user]:password@]host[:port][/db]` (or `rediss://` for TLS,
//!   or `redis+unix://`): one server, as the Redis client parses it.
//! - `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<master>[/db]`
//!   with optional `?sentinel-username=...&sentinel-password=...`: the
//!   primary that these sentinels (port 26379 by default) name `<master>`.
//!   The credentials before `@` and the database are the Redis servers';
//!   the query's are the sentinels' own, when they require them.
//! - `redis+cluster://[[user]:password@]host:port[,host:port...]`: a Redis
//!   Cluster, found through any of these nodes (the rest are discovered).

use redis::{ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

/// The scheme of a Sentinel URL.
const SENTINEL_SCHEME: &str = "redis+sentinel://";
/// The scheme of a Cluster URL.
const CLUSTER_SCHEME: &str = "redis+cluster://";
/// The port sentinels listen on when the URL names none.
const SENTINEL_PORT: u16 = 26379;

/// Where Redis is.
#[derive(Debug, Clone)]
pub(crate) enum Topology {
    /// One server (a standalone Redis, or a primary at a fixed address).
    Server(ConnectionInfo),
    /// The primary a set of sentinels names.
    Sentinel(SentinelAddress),
    /// A Redis Cluster, through the nodes named (at least one must answer
    /// at start; the client learns the others from it).
    Cluster(Vec<ConnectionInfo>),
}

/// The sentinels and what to ask them, from a `redis+sentinel://` URL.
#[derive(Debug, Clone)]
pub(crate) struct SentinelAddress {
    /// The sentinels, with their own credentials.
    pub(crate) sentinels: Vec<ConnectionInfo>,
    /// The name the sentinels monitor the primary by.
    pub(crate) master: String,
    /// Database and credentials for the primary the sentinels name.
    pub(crate) node: RedisConnectionInfo,
}

impl Topology {
    /// The topology a `--broker` URL names, or why it names none.
    pub(crate) fn parse(url: &str) -> Result<Topology, String> {
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return parse_cluster(rest).map(Topology::Cluster);
        }
        match url.strip_prefix(SENTINEL_SCHEME) {
            Some(rest) => parse_sentinel(rest).map(Topology::Sentinel),
            None if url.starts_with("rediss+cluster://") => Err(
                "TLS to a cluster (rediss+cluster://) is not supported; use redis+cluster:// \
                 on a private network"
                    .into(),
            ),
            None if url.starts_with("rediss+sentinel://") => Err(
                "TLS to sentinels (rediss+sentinel://) is not supported; use redis+sentinel:// \
                 on a private network"
                    .into(),
            ),
            None => url
                .into_connection_info()
                .map(Topology::Server)
                .map_err(|error| error.to_string()),
        }
    }

    /// The topology's name, for `/healthz` and logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Topology::Server(_) => "server",
            Topology::Sentinel(_) => "sentinel",
            Topology::Cluster(_) => "cluster",
        }
    }
}

/// The part of a Cluster URL after its scheme: nodes with their port, and
/// no database (a cluster has only database 0).
fn parse_cluster(rest: &str) -> Result<Vec<ConnectionInfo>, String> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        return Err("a cluster has no database: the URL ends after the nodes".into());
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    hosts
        .split(',')
        .map(|host| {
            if host.is_empty() {
                return Err("an empty cluster node address".to_owned());
            }
            if !has_port(host) {
                return Err(format!("cluster node '{host}' needs a port"));
            }
            format!("redis://{userinfo}{host}")
                .into_connection_info()
                .map_err(|error| format!("cluster node '{host}': {error}"))
        })
        .collect()
}

/// The part of a Sentinel URL after its scheme.
fn parse_sentinel(rest: &str) -> Result<SentinelAddress, String> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut segments = path.split('/').filter(|segment| !segment.is_empty());
    let master = segments
        .next()
        .ok_or("name the primary after the sentinels: redis+sentinel://host:26379/<master>")?;
    let db = segments.next().unwrap_or("0");
    if db.parse::<u32>().is_err() {
        return Err(format!("the database '{db}' is not a number"));
    }
    if segments.next().is_some() {
        return Err("the path is /<master> or /<master>/<db>".into());
    }
    let master = percent_decoded(master)?;
    let sentinel_settings = sentinel_credentials(query)?;
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err("an empty sentinel address".into());
        }
        let host = if has_port(host) {
            host.to_owned()
        } else {
            format!("{host}:{SENTINEL_PORT}")
        };
        let sentinel = format!("redis://{host}")
            .into_connection_info()
            .map_err(|error| format!("sentinel '{host}': {error}"))?
            .set_redis_settings(sentinel_settings.clone());
        sentinels.push(sentinel);
    }
    // The servers' credentials and database, parsed by the Redis client as
    // it would parse them in a plain URL (percent-decoding included).
    let userinfo = userinfo.map(|info| format!("{info}@")).unwrap_or_default();
    let node = format!("redis://{userinfo}{}/{db}", sentinels[0].addr())
        .into_connection_info()
        .map_err(|error| error.to_string())?
        .redis_settings()
        .clone();
    Ok(SentinelAddress {
        sentinels,
        master,
        node,
    })
}

/// Whether `host` (`name`, `name:port`, `[v6]` or `[v6]:port`) has a port.
fn has_port(host: &str) -> bool {
    match host.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'),
        None => host.contains(':'),
    }
}

/// The sentinels' own credentials, from the URL's query.
fn sentinel_credentials(query: &str) -> Result<RedisConnectionInfo, String> {
    let mut settings = RedisConnectionInfo::default();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        settings = match name.as_ref() {
            "sentinel-username" => settings.set_username(value),
            "sentinel-password" => settings.set_password(value),
            other => {
                return Err(format!(
                    "unknown parameter '{other}' (known: sentinel-username, sentinel-password)"
                ));
            }
        };
    }
    Ok(settings)
}

fn percent_decoded(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| format!("'{text}' is not UTF-8 once decoded"))
}

/// A broker URL fit for logs: passwords (the servers' and the
/// sentinels') replaced by `***`.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable URL)".to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let query = query.map(|query| {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.contains("password") => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        format!("?{}", pairs.join("&"))
    });
    format!("{scheme}://{authority}{path}{}", query.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(url: &str) -> SentinelAddress {
        match Topology::parse(url).unwrap() {
            Topology::Sentinel(address) => address,
            other => panic!("not a sentinel topology: {other:?}"),
        }
    }

    #[test]
    fn plain_urls_name_one_server() {
        let Topology::Server(info) = Topology::parse("redis://:pw@127.0.0.1:6380/2").unwrap()
        else {
            panic!("one server");
        };
        assert_eq!(info.addr().to_string(), "127.0.0.1:6380");
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert!(Topology::parse("http://example.com").is_err());
    }

    #[test]
    fn sentinel_urls_name_sentinels_a_master_and_the_servers_settings() {
        let address = sentinel(
            "redis+sentinel://app:s%40cret@10.0.0.1,10.0.0.2:26380,[::1]/my%20master/3\
             ?sentinel-password=other",
        );
        let sentinels: Vec<String> = address
            .sentinels
            .iter()
            .map(|info| info.addr().to_string())
            .collect();
        assert_eq!(sentinels, ["10.0.0.1:26379", "10.0.0.2:26380", "::1:26379"]);
        assert_eq!(address.master, "my master");
        assert_eq!(address.node.db(), 3);
        assert_eq!(address.node.username(), Some("app"));
        assert_eq!(address.node.password(), Some("s@cret"));
        for info in &address.sentinels {
            assert_eq!(info.redis_settings().password(), Some("other"));
            assert_eq!(info.redis_settings().username(), None);
        }
        let plain = sentinel("redis+sentinel://h1:1,h2:2/mymaster");
        assert_eq!(plain.node.db(), 0);
        assert_eq!(plain.node.password(), None);
        assert_eq!(plain.sentinels[0].redis_settings().password(), None);
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong() {
        let error = |url| Topology::parse(url).unwrap_err();
        assert!(error("redis+sentinel://h1:26379").contains("name the primary"));
        assert!(error("redis+sentinel://h1,,h2/m").contains("empty sentinel"));
        assert!(error("redis+sentinel://h1/m/0/x").contains("/<master>/<db>"));
        assert!(error("redis+sentinel://h1/m?password=x").contains("unknown parameter 'password'"));
        assert!(error("redis+sentinel://h1:notaport/m").contains("sentinel 'h1:notaport'"));
        assert!(error("redis+sentinel://h1/m/notadb").contains("database 'notadb'"));
        assert!(error("rediss+sentinel://h1/m").contains("not supported"));
    }

    #[test]
    fn cluster_urls_name_nodes_with_the_servers_credentials() {
        let Topology::Cluster(nodes) =
            Topology::parse("redis+cluster://:s%40cret@10.0.0.1:7000,[::1]:7001").unwrap()
        else {
            panic!("a cluster");
        };
        let addresses: Vec<String> = nodes.iter().map(|node| node.addr().to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1:7000", "::1:7001"]);
        for node in &nodes {
            assert_eq!(node.redis_settings().password(), Some("s@cret"));
        }
        let error = |url| Topology::parse(url).unwrap_err();
        assert!(error("redis+cluster://h1").contains("needs a port"));
        assert!(error("redis+cluster://h1:1,,h2:2").contains("empty cluster node"));
        assert!(error("redis+cluster://h1:1/0").contains("no database"));
        assert!(error("redis+cluster://h1:x").contains("cluster node 'h1:x'"));
        assert!(error("rediss+cluster://h1:1").contains("not supported"));
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted("redis://:secret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(redacted("redis://redis:6379"), "redis://redis:6379");
        assert_eq!(
            redacted("redis+sentinel://u:p@a,b/m?sentinel-password=x&sentinel-username=y"),
            "redis+sentinel://u:***@a,b/m?sentinel-password=***&sentinel-username=y"
        );
        assert_eq!(redacted("nonsense"), "(unparsable URL)");
    }
}
