//! Process sampling: the server's RSS (`/proc/PID/status` VmRSS) and CPU
//! time (`/proc/PID/task/*/schedstat`, nanoseconds; `/proc/PID/stat`
//! utime+stime in clock ticks as a fallback), the generator's own CPU time
//! (getrusage), the open-file limit, and the wall clock in Unix nanoseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in nanoseconds (CLOCK_REALTIME: comparable across processes).
#[inline]
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One sample of a server process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerSample {
    pub rss_bytes: Option<u64>,
    pub cpu_s: Option<f64>,
}

/// Samples `/proc/PID` of the server under test (no-op without a pid).
#[derive(Debug, Clone, Copy)]
pub struct ServerProbe {
    pub pid: Option<u32>,
}

impl ServerProbe {
    pub fn sample(&self) -> ServerSample {
        let Some(pid) = self.pid else {
            return ServerSample::default();
        };
        ServerSample {
            rss_bytes: std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| parse_vm_rss(&s)),
            cpu_s: schedstat_cpu_ns(pid).map(|ns| ns as f64 / 1e9).or_else(|| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| parse_stat_cpu_ticks(&s))
                    .map(|t| t as f64 / clock_ticks())
            }),
        }
    }

    /// Whether the process exists.
    pub fn alive(&self) -> bool {
        self.pid
            .is_none_or(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    }
}

/// `VmRSS:  1234 kB` -> bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after the
/// last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace(); // starts at field 3 (state)
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of every live thread of `pid`, nanoseconds: the first field of
/// each `/proc/PID/task/TID/schedstat` (clock ticks are 10 ms, too coarse
/// for short publish phases). `None` when unavailable.
fn schedstat_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    let mut any = false;
    // Bounded by the thread count.
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread may exit between listing and reading: skip it.
        if let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat_ns(&s))
        {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// First field of a schedstat line: time spent on the CPU, nanoseconds.
pub fn parse_schedstat_ns(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) of this process.
pub fn self_cpu_s() -> f64 {
    rusage_s(libc::RUSAGE_SELF)
}

fn rusage_s(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        rl.rlim_cur
    }
}

/// The hard RLIMIT_NOFILE.
pub fn nofile_hard_limit() -> u64 {
    // SAFETY: plain getrlimit on a local struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        rl.rlim_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\therald\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 1 0 12345 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_schedstat_ns("498609 0 1\n"), Some(498_609));
        assert_eq!(parse_schedstat_ns(""), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn samples_self() {
        let me = ServerProbe {
            pid: Some(std::process::id()),
        };
        let s = me.sample();
        assert!(s.rss_bytes.unwrap() > 0);
        assert!(s.cpu_s.unwrap() >= 0.0);
        assert!(me.alive());
        assert_eq!(ServerProbe { pid: None }.sample(), ServerSample::default());
    }
}
