//! The file and line of each frame of a fault's wasm backtrace, read from
//! the plugin's own debug line tables (DWARF) when a fault is *logged*.
//!
//! wasmtime can do this itself (`wasm_backtrace_details`), but it builds a
//! fresh DWARF index for every frame of every trap: about 60 ms of worker
//! time per fault for the `echo` example, which a client calling a
//! panicking RPC could spend at will. Here the index is built once per
//! plugin build, on the first fault that is logged (at most one a second
//! per plugin), and a fault that is not logged costs nothing.

use gimli::{EndianArcSlice, LittleEndian};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use wasmparser::{Parser, Payload};

type Reader = EndianArcSlice<LittleEndian>;

/// One core module of the component that carries DWARF.
struct DebugModule {
    /// Where its code section's contents start in the component: DWARF
    /// addresses count from there, wasmtime's frame offsets from the
    /// component's first byte (not the core module's).
    code_start: u64,
    lines: Mutex<addr2line::Context<Reader>>,
}

/// The DWARF of a plugin's core modules.
pub(super) struct Symbols {
    modules: Vec<DebugModule>,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("modules", &self.modules.len())
            .finish()
    }
}

impl Symbols {
    /// Read the DWARF of the component at `path`; `None` when it has none
    /// (a build without debug line tables) or cannot be read.
    pub(super) fn load(path: &Path) -> Option<Symbols> {
        let bytes = std::fs::read(path).ok()?;
        let mut modules = Vec::new();
        for payload in Parser::new(0).parse_all(&bytes) {
            if let Ok(Payload::ModuleSection {
                unchecked_range, ..
            }) = payload
                && let Some(module) = bytes
                    .get(unchecked_range.clone())
                    .and_then(|module| debug_module(module, unchecked_range.start))
            {
                modules.push(module);
            }
        }
        (!modules.is_empty()).then_some(Symbols { modules })
    }

    /// `file:line:column` of the code at `offset` of a module, innermost
    /// inlined function first.
    fn locations(&self, offset: u64) -> Vec<String> {
        for module in &self.modules {
            let Some(address) = offset.checked_sub(module.code_start) else {
                continue;
            };
            let lines = module.lines.lock().unwrap_or_else(|e| e.into_inner());
            let Ok(mut frames) = lines.find_frames(address).skip_all_loads() else {
                continue;
            };
            let mut found = Vec::new();
            while let Ok(Some(frame)) = frames.next() {
                if let Some(location) = frame.location
                    && let Some(file) = location.file
                {
                    found.push(format!(
                        "{file}:{}:{}",
                        location.line.unwrap_or(0),
                        location.column.unwrap_or(0)
                    ));
                }
            }
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    }
}

/// The frames of `backtrace`, one per line, with the file and line the
/// plugin's DWARF gives for each (and for the functions inlined there) when
/// there is DWARF.
pub(super) fn describe(backtrace: &wasmtime::WasmBacktrace, symbols: Option<&Symbols>) -> String {
    let mut out = String::new();
    for (index, frame) in backtrace.frames().iter().enumerate() {
        let name = frame.func_name().unwrap_or("?");
        let _ = write!(out, "\n  {index:>3}: {:#}", rustc_demangle::demangle(name));
        let locations = match (symbols, frame.module_offset()) {
            (Some(symbols), Some(offset)) => symbols.locations(offset as u64),
            _ => Vec::new(),
        };
        for location in locations {
            let _ = write!(out, "\n         at {location}");
        }
    }
    out
}

/// The DWARF index of one core module, if it has debug sections; `start`
/// is where the module begins in its component.
fn debug_module(module: &[u8], start: usize) -> Option<DebugModule> {
    let mut sections: Vec<(String, Arc<[u8]>)> = Vec::new();
    let mut code_start = None;
    for payload in Parser::new(start as u64).parse_all(module) {
        match payload.ok()? {
            Payload::CodeSectionStart { range, .. } => code_start = Some(range.start as u64),
            Payload::CustomSection(section) if section.name().starts_with(".debug_") => {
                sections.push((section.name().to_owned(), section.data().into()));
            }
            _ => {}
        }
    }
    if sections.is_empty() {
        return None;
    }
    let dwarf = gimli::Dwarf::load(|id: gimli::SectionId| {
        let data = sections
            .iter()
            .find(|(name, _)| name == id.name())
            .map_or_else(|| Arc::from(&[][..]), |(_, data)| data.clone());
        Ok::<_, gimli::Error>(EndianArcSlice::new(data, LittleEndian))
    })
    .ok()?;
    let lines = addr2line::Context::from_dwarf(dwarf).ok()?;
    Some(DebugModule {
        code_start: code_start?,
        lines: Mutex::new(lines),
    })
}
