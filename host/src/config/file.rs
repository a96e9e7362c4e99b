//! The TOML config file of `serve --config FILE`.
//!
//! Every `serve` flag has a key of the same name (`port = 8000`,
//! `allow-client-publish = false`, `origins = ["app.example.com:443"]`).
//! File values become the flags' defaults, so the precedence is flag, then
//! environment variable, then file, then built-in default. `[plugin.NAME]`
//! sections set one plugin's deadline, memory cap and the config its `init`
//! receives. A key that is unknown or a value that does not parse is an
//! error naming the file, the line and the key.

use super::secrets;
use crate::broker::{HistoryRule, HistoryRules};
use crate::outbound::{AllowedHosts, OutboundSettings};
use crate::plugins::PluginOverrides;
use crate::protocol::MAX_NAME_BYTES;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use toml::Spanned;

/// The key of the per-plugin sections: `[plugin.NAME]`.
const PLUGIN_SECTIONS: &str = "plugin";
/// The key of the `[channels."PATTERN"]` sections.
const CHANNEL_SECTIONS: &str = "channels";
/// The most publications one channel may keep.
const MAX_HISTORY_SIZE: usize = 100_000;

/// Flags that make no sense in the file itself.
const NOT_IN_FILE: [&str; 2] = ["config", "help"];

/// Why a config file cannot be used.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a `[plugin.NAME]` section is wrong;
    /// the message has the line and column.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// A key is unknown or its value is refused.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// One `[plugin.NAME]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PluginSection {
    /// Overrides `plugin-deadline-ms` for this plugin.
    deadline_ms: Option<u64>,
    /// Overrides `plugin-memory-mib` for this plugin.
    memory_mib: Option<usize>,
    /// Overrides `plugin-max-data-bytes` for this plugin.
    max_data_bytes: Option<usize>,
    /// Overrides `plugin-max-timers` for this plugin.
    max_timers: Option<usize>,
    /// Overrides `plugin-max-instances` for this plugin.
    max_instances: Option<usize>,
    /// Overrides `plugin-max-wait-ms` for this plugin.
    max_wait_ms: Option<u64>,
    /// Overrides `kv-max-keys` for this plugin.
    kv_max_keys: Option<u64>,
    /// Overrides `kv-max-bytes` for this plugin.
    kv_max_bytes: Option<u64>,
    /// Where the plugin may send HTTP requests (none by default).
    allowed_outbound_hosts: Option<Vec<String>>,
    /// How long one outbound request may take, body included.
    outbound_timeout_ms: Option<u64>,
    /// The largest outbound response body, in bytes.
    outbound_max_response_bytes: Option<u64>,
    /// The most outbound requests in flight at once.
    outbound_max_concurrent: Option<usize>,
    /// What the plugin's `init` receives, as a JSON object.
    config: Option<toml::Table>,
}

/// Only the plugin sections, read in a second pass so that their errors
/// carry the TOML parser's line and column.
#[derive(Deserialize)]
struct PluginSections {
    #[serde(default, rename = "plugin")]
    plugins: BTreeMap<String, PluginSection>,
}

/// One `[channels."PATTERN"]` section: the history of matching channels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ChannelSection {
    /// Publications kept per channel.
    history_size: usize,
    /// How long each is kept, in seconds.
    history_ttl_secs: u64,
    /// Whether a new subscriber gets the latest publication at once.
    #[serde(default)]
    last_value: bool,
}

/// Only the channel sections, read like the plugin sections.
#[derive(Deserialize)]
struct ChannelSections {
    #[serde(default, rename = "channels")]
    channels: BTreeMap<String, ChannelSection>,
}

/// A parsed config file.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    /// The text, to turn byte offsets into line numbers.
    text: String,
    /// Top-level keys (flag names) with their values and positions.
    settings: BTreeMap<String, Spanned<toml::Value>>,
    /// `[plugin.NAME]` sections by plugin name.
    plugins: BTreeMap<String, PluginSection>,
    /// `[channels."PATTERN"]` sections by pattern.
    channels: BTreeMap<String, ChannelSection>,
}

impl ConfigFile {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, text)
    }

    /// Parse the text of a config file read from `path`.
    pub fn parse(path: &Path, text: String) -> Result<Self, ConfigFileError> {
        let syntax = |error: toml::de::Error| ConfigFileError::Syntax {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        };
        let mut settings: BTreeMap<String, Spanned<toml::Value>> =
            toml::from_str(&text).map_err(syntax)?;
        let PluginSections { plugins } = toml::from_str(&text).map_err(syntax)?;
        let ChannelSections { channels } = toml::from_str(&text).map_err(syntax)?;
        settings.remove(PLUGIN_SECTIONS);
        settings.remove(CHANNEL_SECTIONS);
        Ok(ConfigFile {
            path: path.to_owned(),
            text,
            settings,
            plugins,
            channels,
        })
    }

    /// Make the file's values the defaults of the `serve` command's flags,
    /// after checking each against its flag's parser.
    pub fn apply(&self, mut serve: clap::Command) -> Result<clap::Command, ConfigFileError> {
        for (key, value) in &self.settings {
            let line = self.line(value.span().start);
            let invalid = |message: String| ConfigFileError::Invalid {
                path: self.path.clone(),
                line,
                message,
            };
            let arg = serve
                .get_arguments()
                .find(|arg| arg.get_long() == Some(key) && !NOT_IN_FILE.contains(&key.as_str()))
                .ok_or_else(|| {
                    invalid(format!(
                        "unknown key '{key}' (see `wasmcluster config --example`)"
                    ))
                })?;
            let values = scalars(value.get_ref()).ok_or_else(|| {
                invalid(format!(
                    "key '{key}' must be a string, number, boolean or a list of them"
                ))
            })?;
            check_values(arg, value.get_ref(), &values)
                .map_err(|why| invalid(format!("key '{key}': {why}")))?;
            let id = arg.get_id().clone();
            serve = serve.mut_arg(id, |arg| arg.default_values(values));
        }
        Ok(serve)
    }

    /// Where `key` is set in the file, as `FILE:LINE`, if it is.
    pub fn location_of(&self, key: &str) -> Option<String> {
        let value = self.settings.get(key)?;
        Some(format!(
            "{}:{}",
            self.path.display(),
            self.line(value.span().start)
        ))
    }

    /// The `[plugin.NAME]` sections, with limits resolved and the init config
    /// as JSON text.
    pub fn plugin_overrides(&self) -> Result<HashMap<String, PluginOverrides>, ConfigFileError> {
        let mut overrides = HashMap::new();
        for (name, section) in &self.plugins {
            let invalid = |message: String| ConfigFileError::Invalid {
                path: self.path.clone(),
                line: self.line_of_section(name),
                message,
            };
            if section.deadline_ms == Some(0) {
                return Err(invalid(format!(
                    "[plugin.{name}] deadline-ms must be more than 0"
                )));
            }
            if section.max_instances.is_some_and(|n| n == 0 || n > 1024) {
                return Err(invalid(format!(
                    "[plugin.{name}] max-instances must be between 1 and 1024"
                )));
            }
            if section.max_wait_ms == Some(0) {
                return Err(invalid(format!(
                    "[plugin.{name}] max-wait-ms must be more than 0"
                )));
            }
            if section.memory_mib.is_some_and(|mib| mib == 0 || mib > 4096) {
                return Err(invalid(format!(
                    "[plugin.{name}] memory-mib must be between 1 and 4096"
                )));
            }
            let outbound = OutboundSettings {
                allowed: AllowedHosts::parse(
                    section
                        .allowed_outbound_hosts
                        .as_deref()
                        .unwrap_or_default(),
                )
                .map_err(|why| invalid(format!("[plugin.{name}] allowed-outbound-hosts: {why}")))?,
                timeout: section.outbound_timeout_ms.map(Duration::from_millis),
                max_response_bytes: section.outbound_max_response_bytes,
                max_concurrent: section.outbound_max_concurrent,
            };
            if section.outbound_timeout_ms == Some(0) || section.outbound_max_concurrent == Some(0)
            {
                return Err(invalid(format!(
                    "[plugin.{name}] outbound-timeout-ms and outbound-max-concurrent must be \
                     more than 0"
                )));
            }
            let config = match &section.config {
                Some(table) => {
                    let mut value = toml::Value::Table(table.clone());
                    secrets::resolve(&mut value, &format!("[plugin.{name}] config"))
                        .map_err(invalid)?;
                    Some(
                        serde_json::to_string(&value)
                            .map_err(|error| invalid(format!("[plugin.{name}] config: {error}")))?,
                    )
                }
                None => None,
            };
            overrides.insert(
                name.clone(),
                PluginOverrides {
                    deadline: section.deadline_ms.map(Duration::from_millis),
                    memory_bytes: section.memory_mib.map(|mib| mib * 1024 * 1024),
                    max_data_bytes: section.max_data_bytes,
                    max_timers: section.max_timers,
                    max_instances: section.max_instances,
                    max_wait: section.max_wait_ms.map(Duration::from_millis),
                    kv_max_keys: section.kv_max_keys,
                    kv_max_bytes: section.kv_max_bytes,
                    outbound,
                    config,
                },
            );
        }
        Ok(overrides)
    }

    /// The history rules of the `[channels."PATTERN"]` sections, checked.
    pub fn history_rules(&self) -> Result<HistoryRules, ConfigFileError> {
        let mut rules = Vec::new();
        for (pattern, section) in &self.channels {
            let header = format!("[{CHANNEL_SECTIONS}.\"{pattern}\"]");
            let invalid = |message: String| ConfigFileError::Invalid {
                path: self.path.clone(),
                line: self.line_of(&header),
                message,
            };
            if pattern.is_empty() || pattern.len() > MAX_NAME_BYTES {
                return Err(invalid(format!(
                    "{header}: a channel pattern has 1 to {MAX_NAME_BYTES} bytes"
                )));
            }
            if section.history_size == 0 || section.history_size > MAX_HISTORY_SIZE {
                return Err(invalid(format!(
                    "{header} history-size must be between 1 and {MAX_HISTORY_SIZE}"
                )));
            }
            if section.history_ttl_secs == 0 {
                return Err(invalid(format!(
                    "{header} history-ttl-secs must be more than 0"
                )));
            }
            let rule = HistoryRule {
                size: section.history_size,
                ttl: Duration::from_secs(section.history_ttl_secs),
                last_value: section.last_value,
            };
            rules.push((pattern.clone(), rule));
        }
        Ok(HistoryRules::new(rules))
    }

    /// The 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&byte| byte == b'\n')
            .count()
            + 1
    }

    /// The line of the `[plugin.NAME]` header (1 when it cannot be found,
    /// e.g. for a section written as an inline table).
    fn line_of_section(&self, name: &str) -> usize {
        self.line_of(&format!("[{PLUGIN_SECTIONS}.{name}]"))
    }

    /// The line of `header` in the file (1 when it is written otherwise).
    fn line_of(&self, header: &str) -> usize {
        self.text.find(header).map_or(1, |offset| self.line(offset))
    }
}

/// A TOML value as the command-line strings of one flag.
fn scalars(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(text) => Some(vec![text.clone()]),
        toml::Value::Integer(number) => Some(vec![number.to_string()]),
        toml::Value::Float(number) => Some(vec![number.to_string()]),
        toml::Value::Boolean(flag) => Some(vec![flag.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Array(_) | toml::Value::Table(_) => None,
                scalar => scalars(scalar).and_then(|mut one| one.pop()),
            })
            .collect(),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

/// Check a file value as the flag's own parser would take it on the command
/// line (types, ranges, allowed values).
fn check_values(arg: &clap::Arg, value: &toml::Value, values: &[String]) -> Result<(), String> {
    if matches!(
        arg.get_action(),
        clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
    ) {
        return match value {
            toml::Value::Boolean(_) => Ok(()),
            _ => Err("must be true or false".into()),
        };
    }
    // The flag alone, without what ties it to other flags (`requires`):
    // those are checked when the whole command parses, and naming a flag
    // the probe lacks is a clap debug assertion.
    let probe = clap::Command::new("probe").no_binary_name(true).arg(
        arg.clone()
            .env(clap::builder::Resettable::Reset)
            .requires(clap::builder::Resettable::Reset)
            .required(false),
    );
    let long = arg.get_long().unwrap_or_default();
    let argv = values.iter().map(|text| format!("--{long}={text}"));
    probe
        .try_get_matches_from(argv)
        .map(drop)
        .map_err(|error| clap_message(&error))
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_message(error: &clap::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// A commented config file with every `serve` flag and its default, for
/// `wasmcluster config --example`. Generated from the flags themselves, so
/// it never misses one.
pub fn example(serve: &clap::Command) -> String {
    // Building fills in what clap adds by itself, such as `false` as the
    // default of on/off flags.
    let mut serve = serve.clone();
    serve.build();
    let mut out = String::from(
        "# wasmcluster config file: `wasmcluster serve --config FILE`.\n\
         # Every key is a `serve` flag; the flag and its WASMCLUSTER_* environment\n\
         # variable override the file. Keys left commented out have no default.\n\n",
    );
    for arg in serve.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&key) {
            continue;
        }
        if let Some(help) = arg.get_long_help().or(arg.get_help()) {
            for line in textwrap(&help.to_string(), 76) {
                out.push_str(&format!("# {line}\n"));
            }
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# env: {}\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| toml_literal(&value.to_string_lossy()))
            .collect();
        let is_list = matches!(arg.get_action(), clap::ArgAction::Append);
        match defaults.as_slice() {
            [] => out.push_str(&format!("#{key} =\n\n")),
            [one] if !is_list => out.push_str(&format!("{key} = {one}\n\n")),
            many => out.push_str(&format!("{key} = [{}]\n\n", many.join(", "))),
        }
    }
    out.push_str(
        "# One section per plugin, by the name in its manifest: limits that\n\
         # override the ones above, and the JSON object its `init` receives.\n\
         #[plugin.auth]\n\
         #deadline-ms = 200\n\
         #memory-mib = 32\n\
         #max-data-bytes = 65536\n\
         #max-timers = 1000\n\
         #max-instances = 4\n\
         #max-wait-ms = 10000\n\
         #allowed-outbound-hosts = [\"https://api.example.com\", \"https://*.example.org:8443\"]\n\
         #outbound-timeout-ms = 10000\n\
         #outbound-max-response-bytes = 10485760\n\
         #outbound-max-concurrent = 64\n\
         #config = { users = { alice = \"$argon2id$v=19$...\" }, api-key = \"${env:API_KEY}\" }\n",
    );
    out
}

/// A default value as a TOML literal: numbers and booleans bare, the rest
/// quoted.
fn toml_literal(value: &str) -> String {
    if value.parse::<i64>().is_ok() || value == "true" || value == "false" {
        value.to_owned()
    } else {
        toml::Value::String(value.to_owned()).to_string()
    }
}

/// Split `text` into lines of at most `width` characters, at spaces.
fn textwrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}
