//! `wasmcluster strip FILE`: a plugin build made small enough to ship
//! (a Kubernetes ConfigMap holds 1 MiB; a hot swap reads and compiles the
//! whole file) while its fault reports still name functions, files and
//! lines.
//!
//! A Rust plugin's debug info is mostly the standard library's: variables,
//! types, names and location lists that a fault report never reads. What
//! the host's fault report reads is kept: the `name` section (function
//! names), the line tables and the tree of inlined calls (file, line and
//! column of each frame and of each call inlined into it). The DWARF is
//! rewritten, not copied (`dwarf`); every other section is copied byte for
//! byte, so the code, and the addresses the line tables point into, do not
//! move.

mod dwarf;

use anyhow::{Context, bail};
use std::borrow::Cow;
use std::path::Path;
use wasm_encoder::{CustomSection, RawSection, Section};
use wasmparser::{BinaryReader, Parser};

/// A component's section holding a nested core module.
const CORE_MODULE_SECTION: u8 = 1;
/// A component's section holding a nested component.
const COMPONENT_SECTION: u8 = 4;
/// A custom section (name, then contents), in modules and components.
const CUSTOM_SECTION: u8 = 0;

/// The sizes before and after, for the command's report.
#[derive(Debug)]
pub(crate) struct Stripped {
    pub(crate) before: usize,
    pub(crate) after: usize,
}

/// Strip the plugin at `input` into `output` (which may be the same path).
/// The result is written beside `output` and renamed over it, so a server
/// watching that directory never reads half a file.
pub(crate) fn strip_file(input: &Path, output: &Path) -> anyhow::Result<Stripped> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let stripped = strip(&bytes).with_context(|| format!("{}", input.display()))?;
    let name = output
        .file_name()
        .with_context(|| format!("{}: not a file name", output.display()))?;
    let temporary = output.with_file_name(format!(".{}.strip-tmp", name.to_string_lossy()));
    std::fs::write(&temporary, &stripped)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    if let Err(error) = std::fs::rename(&temporary, output) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error).with_context(|| format!("cannot write {}", output.display()));
    }
    Ok(Stripped {
        before: bytes.len(),
        after: stripped.len(),
    })
}

/// The stripped form of a component or core module, checked to be valid
/// WebAssembly before it is returned.
fn strip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !Parser::is_component(bytes) && !Parser::is_core_wasm(bytes) {
        bail!("not a WebAssembly component or module");
    }
    wasmparser::Validator::new()
        .validate_all(bytes)
        .context("not valid WebAssembly")?;
    let stripped = strip_unchecked(bytes)?;
    wasmparser::Validator::new()
        .validate_all(&stripped)
        .context("the stripped form is not valid WebAssembly (a bug in `strip`)")?;
    Ok(stripped)
}

/// Copy `bytes` section by section: nested modules and components are
/// stripped in turn, a core module's `.debug_*` sections are set aside as
/// they go by and replaced at the end by the DWARF fault reports read.
fn strip_unchecked(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let component = Parser::is_component(bytes);
    // The 8-byte header: magic and version (or layer).
    let (header, body) = bytes.split_at(8);
    let mut out = header.to_vec();
    let mut debug_sections = Vec::new();
    let mut reader = BinaryReader::new(body, header.len());
    while !reader.eof() {
        let id = reader.read_u8()?;
        let size = reader.read_var_u32()? as usize;
        let data = reader.read_bytes(size)?;
        let data: Cow<[u8]> = match id {
            CORE_MODULE_SECTION | COMPONENT_SECTION if component => strip_unchecked(data)?.into(),
            CUSTOM_SECTION if !component => match debug_section(data)? {
                Some(section) => {
                    debug_sections.push(section);
                    continue;
                }
                None => data.into(),
            },
            _ => data.into(),
        };
        RawSection { id, data: &data }.append_to(&mut out);
    }
    if !component {
        for (name, data) in dwarf::fault_report_dwarf(&debug_sections)? {
            CustomSection {
                name: name.into(),
                data: data.into(),
            }
            .append_to(&mut out);
        }
    }
    Ok(out)
}

/// A custom section's name and contents when it is DWARF (`.debug_info`,
/// ...).
fn debug_section(custom: &[u8]) -> anyhow::Result<Option<(&str, &[u8])>> {
    let mut reader = BinaryReader::new(custom, 0);
    let name = reader.read_string()?;
    let contents = &custom[reader.original_position()..];
    Ok(name.starts_with(".debug_").then_some((name, contents)))
}
