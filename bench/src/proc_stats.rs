//! CPU time and resident memory of a process, from `/proc`.

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`,
/// 100 on every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds used so far by `pid` (`"self"` for this process).
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces; fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| -> Result<f64> {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .with_context(|| format!("field {index} of /proc/{pid}/stat"))
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: &str) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// The most memory `pid` ever held resident (its high-water mark), in bytes.
pub fn peak_rss_bytes(pid: &str) -> Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// A size field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(pid: &str, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .with_context(|| format!("{field} missing"))
}

/// CPU seconds of the server (when its pid is known) and of this process
/// between two points in time.
pub struct CpuMeter {
    server_pid: Option<u32>,
    server_start: f64,
    own_start: f64,
}

/// What a [`CpuMeter`] measured.
pub struct CpuUse {
    /// Server CPU seconds, when its pid was given.
    pub server: Option<f64>,
    /// Load generator CPU seconds.
    pub loadgen: f64,
}

impl CpuMeter {
    /// Start measuring.
    pub fn start(server_pid: Option<u32>) -> Result<Self> {
        let server_start = match server_pid {
            Some(pid) => cpu_seconds(&pid.to_string())?,
            None => 0.0,
        };
        Ok(CpuMeter {
            server_pid,
            server_start,
            own_start: cpu_seconds("self")?,
        })
    }

    /// CPU used since [`CpuMeter::start`].
    pub fn stop(&self) -> Result<CpuUse> {
        let server = match self.server_pid {
            Some(pid) => Some(cpu_seconds(&pid.to_string())? - self.server_start),
            None => None,
        };
        Ok(CpuUse {
            server,
            loadgen: cpu_seconds("self")? - self.own_start,
        })
    }
}
