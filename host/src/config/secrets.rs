//! Secrets in a plugin's `config`: `${env:NAME}` and `${file:PATH}` in its
//! strings are replaced by an environment variable or a file's content
//! (without its final newline) when the config is read, so that API keys
//! stay out of the config file. `$${` writes a literal `${`.
//!
//! The values reach only the plugin's `init`: errors name the key and the
//! variable or file, never a value, and the resolved config is not shown
//! by `Debug` (see `PluginOverrides`).

/// Replace every reference in the strings of `value` (a `config` table);
/// `key` names where it is, for errors.
pub(super) fn resolve(value: &mut toml::Value, key: &str) -> Result<(), String> {
    match value {
        toml::Value::String(text) => {
            if text.contains("${") {
                *text = substitute(text).map_err(|why| format!("{key}: {why}"))?;
            }
            Ok(())
        }
        toml::Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(index, item)| resolve(item, &format!("{key}[{index}]"))),
        toml::Value::Table(table) => table
            .iter_mut()
            .try_for_each(|(name, item)| resolve(item, &format!("{key}.{name}"))),
        _ => Ok(()),
    }
}

/// `text` with its references replaced.
fn substitute(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').ok_or("a '${' has no closing '}'")?;
        out.push_str(&lookup(&rest[at + 2..at + end])?);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of one reference (`env:NAME` or `file:PATH`).
fn lookup(reference: &str) -> Result<String, String> {
    if let Some(name) = reference.strip_prefix("env:") {
        return std::env::var(name)
            .map_err(|_| format!("the environment variable {name} is not set (or not UTF-8)"));
    }
    if let Some(path) = reference.strip_prefix("file:") {
        let content = std::fs::read_to_string(path)
            .map_err(|error| format!("the secret file {path} could not be read: {error}"))?;
        return Ok(content
            .strip_suffix('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .unwrap_or(&content)
            .to_owned());
    }
    Err(format!(
        "'${{{reference}}}' is neither ${{env:NAME}} nor ${{file:PATH}}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_replaced_and_escapes_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        // A variable no one sets.
        let name = "WASMCLUSTER_TEST_SECRET_RESOLVE";
        let mut value: toml::Value = toml::from_str::<toml::Table>(&format!(
            "a = \"Bearer ${{env:PATH}}\"\nb = [\"${{file:{}}}\"]\nc = \"$${{literal}}\"\n",
            file.display()
        ))
        .unwrap()
        .into();
        resolve(&mut value, "config").unwrap();
        assert_eq!(
            value["a"].as_str().unwrap(),
            format!("Bearer {}", std::env::var("PATH").unwrap())
        );
        assert_eq!(value["b"][0].as_str().unwrap(), "from-file");
        assert_eq!(value["c"].as_str().unwrap(), "${literal}");
        let mut missing: toml::Value = toml::Value::String(format!("${{env:{name}}}"));
        let error = resolve(&mut missing, "config.key").unwrap_err();
        assert!(
            error.contains("config.key") && error.contains(name),
            "{error}"
        );
    }
}
