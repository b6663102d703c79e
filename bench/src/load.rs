//! The generator's own load over the measured phase, and the verdict whether
//! it was saturated.
//!
//! A generator that is short of CPU delivers its own limit as the server's:
//! latency grows while frames wait in its socket buffers, deliveries per
//! second stall at what it can parse. So every client-holding process (and
//! the main one, which publishes) measures itself from the start of the
//! measured phase to its end: the CPU time of all its threads, and for its
//! reactor thread the time on a CPU and the time it was runnable but waiting
//! for one (`/proc/thread-self/schedstat`). A process whose reactor thread was
//! on a CPU or waiting for one for most of the phase could not keep up,
//! whether from its own work or because the machine was busy; generator
//! processes that together used most of the cores they may run on leave
//! nothing spare. Either makes the run [`GeneratorLoad::saturated`].

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Share of the available cores above which the generator, all processes
/// together, counts as saturated.
pub const SATURATED_CORES_SHARE: f64 = 0.9;

/// Share of the phase above which one process's reactor thread, on a CPU or
/// waiting for one, counts as saturated.
pub const SATURATED_BUSY_SHARE: f64 = 0.9;

/// Cores this process may run on: `available_parallelism` honours the CPU
/// affinity mask and cgroup CPU quotas (a container limited to 2 CPUs on a
/// 64-core host gets 2).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU counters of this process at one moment. Take it on the reactor
/// thread: that thread's counters are the ones read for "busy".
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    process_cpu_ns: u64,
    thread: ThreadSched,
}

/// `/proc/.../schedstat` of one thread: time on a CPU, time runnable but
/// waiting for a CPU (run queue delay), nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadSched {
    pub on_cpu_ns: u64,
    pub waiting_ns: u64,
}

impl ThreadSched {
    /// Parses a schedstat line: `on_cpu_ns run_delay_ns timeslices`.
    pub fn parse(line: &str) -> Option<Self> {
        let mut f = line.split_whitespace();
        Some(ThreadSched {
            on_cpu_ns: f.next()?.parse().ok()?,
            waiting_ns: f.next()?.parse().ok()?,
        })
    }

    fn of_current_thread() -> Self {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| Self::parse(&s))
            .unwrap_or_default()
    }
}

/// CPU time of every thread of this process, nanoseconds (getrusage, which
/// Linux keeps to the nanosecond for the calling process).
fn process_cpu_ns() -> u64 {
    (crate::procfs::self_cpu_s() * 1e9) as u64
}

impl CpuMark {
    pub fn now() -> Self {
        CpuMark {
            at: Instant::now(),
            process_cpu_ns: process_cpu_ns(),
            thread: ThreadSched::of_current_thread(),
        }
    }

    /// This process's load from the mark until now (call on the same thread).
    pub fn since(&self, process: String) -> ProcLoad {
        let now = CpuMark::now();
        let s = |ns: u64| ns as f64 / 1e9;
        ProcLoad {
            process,
            pid: std::process::id(),
            wall_s: now.at.duration_since(self.at).as_secs_f64(),
            cpu_s: s(now.process_cpu_ns.saturating_sub(self.process_cpu_ns)),
            reactor_cpu_s: s(now.thread.on_cpu_ns.saturating_sub(self.thread.on_cpu_ns)),
            reactor_waiting_s: s(now.thread.waiting_ns.saturating_sub(self.thread.waiting_ns)),
        }
    }
}

/// One generator process over the measured phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcLoad {
    /// `main` (the publisher) or `worker <i>`.
    pub process: String,
    pub pid: u32,
    pub wall_s: f64,
    /// CPU time of all its threads.
    pub cpu_s: f64,
    /// Its reactor thread on a CPU.
    pub reactor_cpu_s: f64,
    /// Its reactor thread runnable but waiting for a CPU.
    pub reactor_waiting_s: f64,
}

impl ProcLoad {
    /// Share of the phase its reactor thread was on a CPU or waiting for one.
    pub fn busy(&self) -> f64 {
        if self.wall_s > 0.0 {
            (self.reactor_cpu_s + self.reactor_waiting_s) / self.wall_s
        } else {
            0.0
        }
    }

    /// CPU time of all its threads / wall time (1.0 = one core).
    pub fn cores(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.cpu_s / self.wall_s
        } else {
            0.0
        }
    }
}

/// Why a run counts as saturated.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Saturation {
    /// The generator's processes together kept most of its cores busy.
    Cores {
        used_cores: f64,
        available_cores: usize,
    },
    /// One process's reactor thread was on a CPU or waiting for one for most
    /// of the phase.
    Process {
        process: String,
        busy_share: f64,
        waiting_share: f64,
    },
}

impl fmt::Display for Saturation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Saturation::Cores {
                used_cores,
                available_cores,
            } => write!(
                f,
                "generator processes used {used_cores:.2} of {available_cores} available cores \
                 (over {:.0}%)",
                SATURATED_CORES_SHARE * 100.0
            ),
            Saturation::Process {
                process,
                busy_share,
                waiting_share,
            } => write!(
                f,
                "{process} was on a CPU {:.0}% and waiting for one {:.0}% of the phase \
                 (over {:.0}% together: it could not keep up)",
                (busy_share - waiting_share) * 100.0,
                waiting_share * 100.0,
                SATURATED_BUSY_SHARE * 100.0
            ),
        }
    }
}

/// The generator's load over the measured phase, all processes.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratorLoad {
    /// Cores the generator may run on ([`available_cores`]).
    pub available_cores: usize,
    /// The main process's measured phase, seconds.
    pub phase_s: f64,
    /// CPU time of every generator process during the phase.
    pub cpu_s: f64,
    /// `cpu_s / phase_s` (1.0 = one core).
    pub used_cores: f64,
    pub processes: Vec<ProcLoad>,
    pub saturated: bool,
    pub saturation: Vec<Saturation>,
}

impl GeneratorLoad {
    /// Judges the processes' loads over a phase of `phase_s` seconds.
    pub fn assess(available_cores: usize, phase_s: f64, processes: Vec<ProcLoad>) -> Self {
        let cpu_s: f64 = processes.iter().map(|p| p.cpu_s).sum();
        let used_cores = if phase_s > 0.0 { cpu_s / phase_s } else { 0.0 };
        let mut saturation = Vec::new();
        if used_cores > SATURATED_CORES_SHARE * available_cores as f64 {
            saturation.push(Saturation::Cores {
                used_cores,
                available_cores,
            });
        }
        for p in &processes {
            if p.busy() > SATURATED_BUSY_SHARE {
                saturation.push(Saturation::Process {
                    process: p.process.clone(),
                    busy_share: p.busy(),
                    waiting_share: if p.wall_s > 0.0 {
                        p.reactor_waiting_s / p.wall_s
                    } else {
                        0.0
                    },
                });
            }
        }
        GeneratorLoad {
            available_cores,
            phase_s,
            cpu_s,
            used_cores,
            processes,
            saturated: !saturation.is_empty(),
            saturation,
        }
    }

    /// The banner printed above and below the report of a saturated run.
    pub fn banner(&self) -> Option<String> {
        self.saturated.then(|| {
            format!(
                "!!! GENERATOR SATURATED: these figures show herald-bench's limit, not the \
                 server's: {} !!!",
                self.saturation
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(name: &str, wall: f64, cpu: f64, run: f64, wait: f64) -> ProcLoad {
        ProcLoad {
            process: name.into(),
            pid: 1,
            wall_s: wall,
            cpu_s: cpu,
            reactor_cpu_s: run,
            reactor_waiting_s: wait,
        }
    }

    #[test]
    fn schedstat_lines() {
        assert_eq!(
            ThreadSched::parse("208873861 459358001 241\n"),
            Some(ThreadSched {
                on_cpu_ns: 208_873_861,
                waiting_ns: 459_358_001
            })
        );
        assert_eq!(ThreadSched::parse("12"), None);
    }

    #[test]
    fn verdicts() {
        // Light: two workers at 20% and the publisher at 5% of 2 cores.
        let light = GeneratorLoad::assess(
            2,
            1.0,
            vec![
                proc("main", 1.0, 0.05, 0.05, 0.0),
                proc("worker 0", 1.0, 0.2, 0.2, 0.05),
                proc("worker 1", 1.0, 0.2, 0.2, 0.0),
            ],
        );
        assert!(!light.saturated, "{:?}", light.saturation);
        assert!((light.used_cores - 0.45).abs() < 1e-9);

        // One worker on its core all the time: saturated, whatever the total.
        let one = GeneratorLoad::assess(
            4,
            2.0,
            vec![
                proc("main", 2.0, 0.1, 0.1, 0.0),
                proc("worker 0", 2.0, 1.9, 1.9, 0.05),
            ],
        );
        assert!(one.saturated);
        assert!(
            matches!(&one.saturation[..], [Saturation::Process { process, .. }] if process == "worker 0")
        );

        // Starved: on a CPU only 40% of the time but waiting for one 55%.
        let starved = GeneratorLoad::assess(2, 1.0, vec![proc("worker 0", 1.0, 0.4, 0.4, 0.55)]);
        assert!(starved.saturated);

        // Every core used, no single process pegged.
        let all = GeneratorLoad::assess(
            2,
            1.0,
            vec![
                proc("main", 1.0, 0.3, 0.3, 0.0),
                proc("worker 0", 1.0, 0.8, 0.8, 0.0),
                proc("worker 1", 1.0, 0.8, 0.8, 0.0),
            ],
        );
        assert!(all.saturated);
        assert!(matches!(all.saturation[..], [Saturation::Cores { .. }]));
        assert!(all.banner().unwrap().contains("GENERATOR SATURATED"));
        assert_eq!(light.banner(), None);
    }

    #[test]
    fn marks_measure_this_thread() {
        let m = CpuMark::now();
        let t = Instant::now();
        let mut x = 0u64;
        // Bounded: 50 ms of spinning.
        while t.elapsed().as_millis() < 50 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let l = m.since("main".into());
        assert!(l.wall_s >= 0.05);
        // Spinning: on a CPU or waiting for one nearly all the time.
        assert!(l.busy() > 0.8, "{l:?}");
        assert!(l.cpu_s > 0.0 && l.reactor_cpu_s > 0.0, "{l:?}");
    }
}
