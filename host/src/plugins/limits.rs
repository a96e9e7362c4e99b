//! The resource limiter of every plugin instance: a linear-memory cap that
//! fails the call with a recognisable error, and caps on tables and
//! instances.

use thiserror::Error;
use wasmtime::ResourceLimiter;

/// Most table elements one table may have (function tables of large Rust
/// programs hold a few thousand).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Most instances, tables and memories one store may hold.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 8;

/// A memory growth beyond the plugin's cap; the trap that ends the call.
#[derive(Debug, Error)]
#[error("memory cap exceeded: growing to {desired} bytes, cap {cap} bytes")]
pub(super) struct MemoryCapExceeded {
    /// The size the guest asked for.
    pub desired: usize,
    /// The cap.
    pub cap: usize,
}

/// A table growth beyond [`MAX_TABLE_ELEMENTS`].
#[derive(Debug, Error)]
#[error("table cap exceeded: growing to {desired} elements, cap {MAX_TABLE_ELEMENTS}")]
pub(super) struct TableCapExceeded {
    desired: usize,
}

/// Limits of one instance.
#[derive(Debug)]
pub struct InstanceLimits {
    /// Linear memory cap in bytes.
    memory_cap: usize,
}

impl InstanceLimits {
    /// Limits with a memory cap.
    pub fn new(memory_cap: usize) -> Self {
        InstanceLimits { memory_cap }
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            return Err(MemoryCapExceeded {
                desired,
                cap: self.memory_cap,
            }
            .into());
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(TableCapExceeded { desired }.into());
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_cap_is_an_error_naming_it() {
        let mut limits = InstanceLimits::new(1 << 20);
        assert!(limits.memory_growing(0, 1 << 16, None).unwrap());
        let error = limits.memory_growing(1 << 16, 2 << 20, None).unwrap_err();
        assert!(error.downcast_ref::<MemoryCapExceeded>().is_some());
    }

    #[test]
    fn the_module_maximum_still_applies() {
        let mut limits = InstanceLimits::new(1 << 30);
        assert!(!limits.memory_growing(0, 2 << 20, Some(1 << 20)).unwrap());
    }
}
