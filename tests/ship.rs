//! The server binary as shipped (`make dist`, the Docker image):
//! `scripts/ship-binary` drops its debug info but keeps its function names,
//! and puts the line tables beside it where backtraces find them.

mod support;

use std::path::Path;
use std::process::Command;

/// The shipped binary runs, is a fraction of the built one, names functions
/// on its own, and names files and lines when `wasmcluster.debug` is beside
/// it (through its `.gnu_debuglink`, as Rust's backtraces and binutils do).
#[test]
fn the_shipped_binary_names_functions_and_its_debug_file_adds_lines() {
    let built = Path::new(env!("CARGO_BIN_EXE_wasmcluster"));
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(support::repo_root().join("scripts/ship-binary"))
        .arg(built)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let shipped = dir.path().join("wasmcluster");

    let version = Command::new(&shipped).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("wasmcluster "));
    let size = |path: &Path| std::fs::metadata(path).unwrap().len();
    assert!(
        size(&shipped) < size(built) / 3,
        "{} of {} bytes",
        size(&shipped),
        size(built)
    );

    let address = function_address(&shipped, "wasmcluster::strip::strip_file");
    let (function, line) = addr2line(&shipped, &address);
    assert_eq!(function, "wasmcluster::strip::strip_file");
    assert!(line.contains("host/src/strip/mod.rs:"), "{line}");

    std::fs::remove_file(dir.path().join("wasmcluster.debug")).unwrap();
    let (function, line) = addr2line(&shipped, &address);
    assert_eq!(function, "wasmcluster::strip::strip_file");
    assert_eq!(line, "??:?");
}

/// The address of the function whose demangled name is `name`, from the
/// binary's own symbol table.
fn function_address(binary: &Path, name: &str) -> String {
    let symbols = Command::new("nm")
        .args(["--demangle", "--defined-only"])
        .arg(binary)
        .output()
        .unwrap();
    let symbols = String::from_utf8(symbols.stdout).unwrap();
    let line = symbols
        .lines()
        .find(|line| line.ends_with(&format!(" {name}")))
        .unwrap_or_else(|| panic!("{name} is not in the symbol table"));
    format!("0x{}", line.split(' ').next().unwrap())
}

/// `addr2line`'s function and `file:line` for `address`.
fn addr2line(binary: &Path, address: &str) -> (String, String) {
    let output = Command::new("addr2line")
        .args(["--functions", "--demangle", "--exe"])
        .arg(binary)
        .arg(address)
        .output()
        .unwrap();
    let output = String::from_utf8(output.stdout).unwrap();
    let mut lines = output.lines().map(str::to_owned);
    (lines.next().unwrap(), lines.next().unwrap())
}
