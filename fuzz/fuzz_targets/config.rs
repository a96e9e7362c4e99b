//! `ConfigFile::parse` on any UTF-8 text, then what `serve --config FILE`
//! does with it: `plugin_overrides`, `apply` to the `serve` command, the
//! command parsed with the file's values as defaults, and `into_config`.
//! Must never panic.

#![no_main]

use clap::{Args, FromArgMatches};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::LazyLock;
use wasmcluster::config::{ConfigFile, ServeArgs};

/// The `serve` subcommand, as `wasmcluster` defines it (its flags are
/// `ServeArgs`).
static SERVE: LazyLock<clap::Command> =
    LazyLock::new(|| ServeArgs::augment_args(clap::Command::new("serve")));

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(file) = ConfigFile::parse(Path::new("fuzz.toml"), text.to_owned()) else {
        return;
    };
    let _ = file.location_of("port");
    let overrides = file.plugin_overrides();
    let Ok(serve) = file.apply(SERVE.clone()) else {
        return;
    };
    // No flags on the command line: every value comes from the file (or
    // the built-in defaults), as for `wasmcluster serve --config FILE`.
    let Ok(matches) = serve.try_get_matches_from(["serve"]) else {
        return;
    };
    let Ok(args) = ServeArgs::from_arg_matches(&matches) else {
        return;
    };
    if let (Ok(mut config), Ok(overrides)) = (args.into_config(), overrides) {
        config.set_plugin_overrides(overrides);
    }
});
