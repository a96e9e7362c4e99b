//! `wasmcluster new NAME`: a plugin crate that builds to a wasm component at
//! once, from the templates in `host/templates/plugin/`.

use anyhow::{Context, bail};
use std::path::{Component, Path, PathBuf};

/// The template files: (path in the new crate, text).
const TEMPLATES: [(&str, &str); 4] = [
    (
        "Cargo.toml",
        include_str!("../../templates/plugin/Cargo.toml.tmpl"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/plugin/lib.rs.tmpl"),
    ),
    (
        "README.md",
        include_str!("../../templates/plugin/README.md.tmpl"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/plugin/gitignore.tmpl"),
    ),
];

/// The SDK of the checkout this binary was built from; used when it is still
/// there and no other SDK is given or found.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk");

/// Names a crate cannot have: Rust keywords (the library would be named
/// after one), Rust's own libraries and cargo's build directories.
const RESERVED: &[&str] = &[
    "abstract",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
    "alloc",
    "core",
    "proc_macro",
    "std",
    "test",
    "build",
    "deps",
    "examples",
    "incremental",
];

/// Create a plugin crate that builds to a wasm component at once.
#[derive(clap::Args)]
pub struct NewArgs {
    /// Name of the crate and of the plugin: lowercase letters, digits, '-'
    /// and '_', starting with a letter. Its events are `NAME.hello` and
    /// `NAME.say`; the build is `NAME.wasm` with '_' for '-'.
    name: String,
    /// Directory to create the crate in: the crate is DIR/NAME.
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
    /// The `plugin-sdk` directory of a wasmcluster checkout, which the crate
    /// depends on by path. Default: the first `plugin-sdk` in DIR or one of
    /// its parents, else the checkout this binary was built from.
    #[arg(long, value_name = "PATH", conflicts_with = "sdk_git")]
    sdk: Option<PathBuf>,
    /// Depend on the SDK in this git repository (a wasmcluster repository)
    /// instead of a local checkout.
    #[arg(long, value_name = "URL")]
    sdk_git: Option<String>,
}

/// What `new` made, for the message to the user.
pub struct Created {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The wasm file a release build produces, relative to `dir` unless
    /// `CARGO_TARGET_DIR` puts builds elsewhere.
    pub wasm: String,
    /// Where the SDK comes from, as written in Cargo.toml.
    pub sdk: String,
}

/// Create the crate; nothing is left behind on failure.
pub fn create(args: &NewArgs) -> anyhow::Result<Created> {
    check_name(&args.name)?;
    std::fs::create_dir_all(&args.path)
        .with_context(|| format!("cannot create {}", args.path.display()))?;
    let parent = args
        .path
        .canonicalize()
        .with_context(|| format!("cannot open {}", args.path.display()))?;
    let dir = parent.join(&args.name);
    let sdk = sdk_dependency(args, &dir)?;
    // create_dir (not create_dir_all) fails when anything is there already:
    // an existing crate is never overwritten.
    std::fs::create_dir(&dir).map_err(|error| match error.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{} already exists: choose another name or --path, or remove it",
            dir.display()
        ),
        _ => anyhow::Error::new(error).context(format!("cannot create {}", dir.display())),
    })?;
    if let Err(error) = write_files(&dir, &args.name, &sdk) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(error);
    }
    // Where cargo will put the build: CARGO_TARGET_DIR when it is set (a
    // relative one is read from the crate's directory, where the build runs).
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let wasm = Path::new(&target)
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", args.name.replace('-', "_")));
    Ok(Created {
        wasm: wasm.display().to_string(),
        dir,
        sdk,
    })
}

fn write_files(dir: &Path, name: &str, sdk: &str) -> anyhow::Result<()> {
    std::fs::create_dir(dir.join("src"))
        .with_context(|| format!("cannot create {}/src", dir.display()))?;
    for (path, template) in TEMPLATES {
        let text = template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{struct}}", &struct_name(name))
            .replace("{{sdk}}", sdk);
        let file = dir.join(path);
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(())
}

/// A name that is both a valid crate name and a valid plugin name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "invalid plugin name '{name}': use 1 to 64 lowercase letters, digits, '-' \
             and '_', starting with a letter (it names the crate, the plugin and its events)"
        );
    }
    if RESERVED.contains(&name.replace('-', "_").as_str()) {
        bail!(
            "invalid plugin name '{name}': it is a Rust keyword or the name of a Rust \
             library or cargo directory, which a crate cannot have"
        );
    }
    Ok(())
}

/// The Rust type of the plugin: `demo-plugin` becomes `DemoPlugin`,
/// `greeter` `GreeterPlugin` (so that it never collides with a name the
/// template uses, such as `Plugin`, `Error`, `Config` or `String`).
fn struct_name(name: &str) -> String {
    let mut camel: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    if camel == "Plugin" || !camel.ends_with("Plugin") {
        camel.push_str("Plugin");
    }
    camel
}

/// The `wasmcluster-sdk = ...` value of the new crate's Cargo.toml.
fn sdk_dependency(args: &NewArgs, dir: &Path) -> anyhow::Result<String> {
    if let Some(url) = &args.sdk_git {
        return Ok(format!("{{ git = {} }}", toml_string(url)));
    }
    let sdk = match &args.sdk {
        Some(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("--sdk {}", path.display()))?;
            sdk_in(&path).with_context(|| {
                format!(
                    "--sdk {}: not the wasmcluster SDK (no Cargo.toml of package \
                     wasmcluster-sdk there); pass the plugin-sdk directory of a \
                     wasmcluster checkout",
                    path.display()
                )
            })?
        }
        None => find_sdk(dir).context(
            "cannot find the wasmcluster SDK: pass --sdk PATH (the plugin-sdk directory \
             of a wasmcluster checkout) or --sdk-git URL",
        )?,
    };
    let path = relative_to(&sdk, dir);
    let path = path
        .to_str()
        .with_context(|| format!("the SDK path {} is not UTF-8", sdk.display()))?;
    Ok(format!("{{ path = {} }}", toml_string(path)))
}

/// The SDK at `path`: `path` itself, or `path/plugin-sdk` (a checkout).
fn sdk_in(path: &Path) -> Option<PathBuf> {
    [path.to_owned(), path.join("plugin-sdk")]
        .into_iter()
        .find(|candidate| is_sdk(candidate))
}

/// Whether `dir` holds the package `wasmcluster-sdk`.
fn is_sdk(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
        return false;
    };
    let Ok(manifest) = text.parse::<toml::Table>() else {
        return false;
    };
    manifest
        .get("package")
        .and_then(|package| package.get("name"))
        .and_then(|name| name.as_str())
        == Some("wasmcluster-sdk")
}

/// The default SDK: `plugin-sdk` in the crate's parent directory or one of
/// its ancestors, else the checkout this binary was built from.
fn find_sdk(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .skip(1)
        .map(|ancestor| ancestor.join("plugin-sdk"))
        .find(|candidate| is_sdk(candidate))
        .or_else(|| {
            let built_from = Path::new(BUILT_FROM_SDK);
            is_sdk(built_from)
                .then(|| built_from.canonicalize().ok())
                .flatten()
        })
}

/// `target` relative to `from` when both are under a common directory other
/// than the root (`../../plugin-sdk`); otherwise `target` as it is.
fn relative_to(target: &Path, from: &Path) -> PathBuf {
    let target_parts: Vec<Component> = target.components().collect();
    let from_parts: Vec<Component> = from.components().collect();
    let common = target_parts
        .iter()
        .zip(&from_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let only_root = target_parts[..common]
        .iter()
        .all(|part| matches!(part, Component::RootDir | Component::Prefix(_)));
    if only_root {
        return target.to_owned();
    }
    let mut relative = PathBuf::new();
    for _ in common..from_parts.len() {
        relative.push("..");
    }
    for part in &target_parts[common..] {
        relative.push(part);
    }
    relative
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["demo", "demo-plugin", "a_b-c2", "x"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "_a",
            "Demo",
            "a b",
            "a/b",
            "a.b",
            "fn",
            "self",
            "test",
            "std",
            "proc-macro",
            "héllo",
        ] {
            assert!(check_name(bad).is_err(), "{bad} was accepted");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn struct_names() {
        assert_eq!(struct_name("demo-plugin"), "DemoPlugin");
        assert_eq!(struct_name("greeter"), "GreeterPlugin");
        assert_eq!(struct_name("plugin"), "PluginPlugin");
        assert_eq!(struct_name("string"), "StringPlugin");
        assert_eq!(struct_name("a__b-"), "ABPlugin");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(
                Path::new("/w/repo/plugin-sdk"),
                Path::new("/w/repo/ex/demo")
            ),
            Path::new("../../plugin-sdk")
        );
        assert_eq!(
            relative_to(Path::new("/w/plugin-sdk"), Path::new("/tmp/demo")),
            Path::new("/w/plugin-sdk")
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        for text in [r#"a"b\c"#, "/plain/path", "it's"] {
            let table: toml::Table = format!("x = {}", toml_string(text)).parse().unwrap();
            assert_eq!(table["x"].as_str(), Some(text));
        }
    }
}
