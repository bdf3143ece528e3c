//! What this node says about itself in its health record: CPU and memory of the process, read from `/proc`
//! (Linux). On other systems, or when `/proc` cannot be read, the fields are 0 (unknown), never an error.

use std::time::Duration;

/// Reads process CPU time and memory.
#[derive(Debug, Default)]
pub(crate) struct HealthProbe {
    last: Option<(u64, u64)>, // (CPU ticks, wall ms)
}

/// `USER_HZ`: the unit of the CPU times in `/proc/self/stat`. 100 on every Linux architecture in use.
const TICKS_PER_SECOND: u64 = 100;

impl HealthProbe {
    /// CPU used since the previous call, in thousandths of a core (0 on the first call).
    pub(crate) fn cpu_millicores(&mut self, now_ms: u64) -> u32 {
        let Some(ticks) = cpu_ticks() else {
            return 0;
        };
        let used = match self.last {
            Some((t0, w0)) if now_ms > w0 => {
                let cpu_ms = ticks.saturating_sub(t0) * 1000 / TICKS_PER_SECOND;
                (cpu_ms * 1000 / (now_ms - w0)).min(u64::from(u32::MAX)) as u32
            }
            _ => 0,
        };
        self.last = Some((ticks, now_ms));
        used
    }

    /// Resident memory of the process, bytes.
    pub(crate) fn memory_bytes(&self) -> u64 {
        kb_field("/proc/self/status", "VmRSS:").map_or(0, |kb| kb * 1024)
    }

    /// Memory of the machine, bytes.
    pub(crate) fn memory_total_bytes(&self) -> u64 {
        kb_field("/proc/meminfo", "MemTotal:").map_or(0, |kb| kb * 1024)
    }
}

/// utime + stime of this process, in ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': field 3 is at index 0, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn kb_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

impl super::machine::ProcessProbe for HealthProbe {
    fn cpu_millicores(&mut self, now_ms: u64) -> u32 {
        HealthProbe::cpu_millicores(self, now_ms)
    }
    fn memory_bytes(&self) -> u64 {
        HealthProbe::memory_bytes(self)
    }
    fn memory_total_bytes(&self) -> u64 {
        HealthProbe::memory_total_bytes(self)
    }
}

/// How often a node publishes its health record.
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_on_linux() {
        let mut probe = HealthProbe::default();
        assert_eq!(
            probe.cpu_millicores(1_000),
            0,
            "the first call has no interval"
        );
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let _ = probe.cpu_millicores(3_000);
        if cfg!(target_os = "linux") {
            assert!(probe.memory_bytes() > 0);
            assert!(probe.memory_total_bytes() >= probe.memory_bytes());
            assert!(cpu_ticks().is_some());
        }
    }
}
