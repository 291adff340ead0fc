//! CPU time of `loadgen` itself and of the server processes (`--server-pid`) over the run
//! phase, from `/proc/<pid>/stat` (user + system time of every thread), so that a report shows
//! whether the client or the server ran out of CPU: on a machine shared by both, a client near
//! its CPUs' limit means the figures are the client's.

use std::time::Instant;

use serde_json::{json, Value};

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, 100 on every Linux
/// architecture's user-visible ABI).
const TICKS_PER_S: f64 = 100.0;

/// The user + system CPU ticks of process `pid` ("self" for this one), if it can be read.
fn ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3), ..., utime (field 14), stime (field 15).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU counters at one moment.
#[derive(Clone, Debug)]
pub struct CpuSample {
    at: Instant,
    own: Option<u64>,
    servers: Vec<(u32, Option<u64>)>,
}

impl CpuSample {
    /// Reads this process's and each server's CPU time now.
    #[must_use]
    pub fn now(server_pids: &[u32]) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            own: ticks("self"),
            servers: server_pids
                .iter()
                .map(|&p| (p, ticks(&p.to_string())))
                .collect(),
        }
    }
}

/// CPU used between two samples, in cores (CPU seconds per second).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuUse {
    /// Seconds between the samples.
    pub seconds: f64,
    /// `loadgen`'s own use.
    pub loadgen_cores: Option<f64>,
    /// The servers' use, all together (`None` without `--server-pid`, or when one could not
    /// be read: it exited).
    pub server_cores: Option<f64>,
    /// The online CPUs of this machine.
    pub cpus: usize,
}

impl CpuUse {
    /// The use between `start` and `end` (samples of the same server pids).
    #[must_use]
    pub fn between(start: &CpuSample, end: &CpuSample) -> CpuUse {
        let seconds = end.at.saturating_duration_since(start.at).as_secs_f64();
        let cores = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if seconds > 0.0 => {
                Some(b.saturating_sub(a) as f64 / TICKS_PER_S / seconds)
            }
            _ => None,
        };
        let server_cores = if start.servers.is_empty() {
            None
        } else {
            start
                .servers
                .iter()
                .zip(&end.servers)
                .map(|(a, b)| cores(a.1, b.1))
                .sum::<Option<f64>>()
        };
        CpuUse {
            seconds,
            loadgen_cores: cores(start.own, end.own),
            server_cores,
            cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        }
    }

    /// The line of the printed report.
    #[must_use]
    pub fn line(&self) -> String {
        let f = |c: Option<f64>| c.map_or("unknown".to_string(), |c| format!("{c:.2} cores"));
        let server = if self.server_cores.is_some() {
            f(self.server_cores)
        } else {
            "not measured (--server-pid)".to_string()
        };
        format!(
            "  CPU over the run phase ({:.1} s, {} CPUs here): loadgen {}, server {}",
            self.seconds,
            self.cpus,
            f(self.loadgen_cores),
            server
        )
    }

    /// The report's `cpu` object.
    #[must_use]
    pub fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "cpus": self.cpus,
            "loadgen_cores": self.loadgen_cores,
            "server_cores": self.server_cores,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_read_and_grows_with_work() {
        let start = CpuSample::now(&[std::process::id()]);
        // Burn some CPU (a bounded loop the optimiser cannot drop).
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed().as_millis() < 300 {
            for i in 0..10_000u64 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
            }
        }
        std::hint::black_box(x);
        let end = CpuSample::now(&[std::process::id()]);
        let used = CpuUse::between(&start, &end);
        let own = used.loadgen_cores.expect("own CPU time readable");
        assert!(own > 0.0, "{used:?}");
        assert!(used.server_cores.is_some(), "{used:?}");
        assert!(used.line().contains("loadgen"), "{}", used.line());
    }

    #[test]
    fn a_missing_server_reads_as_unknown() {
        // Pid 0 has no /proc entry.
        let start = CpuSample::now(&[0]);
        let end = CpuSample::now(&[0]);
        let used = CpuUse::between(&start, &end);
        assert_eq!(used.server_cores, None);
        assert!(used.json()["server_cores"].is_null());
    }
}
