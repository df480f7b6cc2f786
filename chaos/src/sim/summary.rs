//! The summary of many runs, and the timeline of one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Report;
use super::engine::Sim;
use super::executor::ExecKind;
use super::world::{Prop, tok};

/// Totals over many runs.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub schedules: u64,
    pub events: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub jobs: BTreeMap<&'static str, u64>,
    pub violations: BTreeMap<Prop, u64>,
    /// Seeds that found a violation (the first few), with the first violation of each.
    pub failing: Vec<(u64, String)>,
}

/// How many failing seeds a summary lists.
const FAILING_LISTED_MAX: usize = 20;

impl Summary {
    pub fn add(&mut self, r: &Report) {
        self.schedules += 1;
        self.events += r.events;
        for (k, n) in &r.faults {
            *self.faults.entry(k).or_default() += n;
        }
        for (k, n) in &r.jobs {
            *self.jobs.entry(k).or_default() += n;
        }
        for v in &r.violations {
            *self.violations.entry(v.prop).or_default() += 1;
        }
        if let Some(v) = r.violations.first()
            && self.failing.len() < FAILING_LISTED_MAX
        {
            self.failing
                .push((r.seed, format!("{}: {}", v.prop.name(), v.what)));
        }
    }

    pub fn merge(&mut self, o: Summary) {
        self.schedules += o.schedules;
        self.events += o.events;
        for (k, n) in o.faults {
            *self.faults.entry(k).or_default() += n;
        }
        for (k, n) in o.jobs {
            *self.jobs.entry(k).or_default() += n;
        }
        for (k, n) in o.violations {
            *self.violations.entry(k).or_default() += n;
        }
        for f in o.failing {
            if self.failing.len() < FAILING_LISTED_MAX {
                self.failing.push(f);
            }
        }
        self.failing.sort_by_key(|(s, _)| *s);
    }

    pub fn violations_total(&self) -> u64 {
        self.violations.values().sum()
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "schedules            {:>12}", self.schedules);
        let _ = writeln!(s, "events               {:>12}", self.events);
        let _ = writeln!(s, "faults by kind:");
        for (k, n) in &self.faults {
            let _ = writeln!(s, "  {k:<26} {n:>12}");
        }
        let _ = writeln!(s, "jobs by outcome:");
        for (k, n) in &self.jobs {
            let _ = writeln!(s, "  {k:<26} {n:>12}");
        }
        let _ = writeln!(s, "violations by property:");
        for p in Prop::ALL {
            let _ = writeln!(
                s,
                "  {:<26} {:>12}",
                p.name(),
                self.violations.get(&p).copied().unwrap_or(0)
            );
        }
        if !self.failing.is_empty() {
            let _ = writeln!(s, "failing seeds (replay with `sim --seed N --trace`):");
            for (seed, what) in &self.failing {
                let _ = writeln!(s, "  {seed}: {what}");
            }
        }
        s
    }
}

/// The run's timeline: the simulator's notes, the array's log, the hosts' quiesces and every
/// effect, in the order they happened.
pub(super) fn timeline(sim: &Sim) -> Vec<String> {
    let at = |ms: u64| format!("{:>10.3}s ", ms as f64 / 1000.0);
    let mut lines: Vec<(u64, String)> = sim.notes.clone();
    for r in &sim.world.array_log {
        let by = r
            .token
            .map(|t| format!(" ({})", tok(&t)))
            .unwrap_or_default();
        lines.push((
            r.seq,
            format!("{} array: {} {:?}{by}", at(r.at_ms), r.pair, r.op),
        ));
    }
    for e in &sim.world.effects {
        let by = e
            .token
            .map(|t| tok(&t))
            .unwrap_or_else(|| "the world".into());
        let what = if e.changed { "" } else { " (no change)" };
        lines.push((
            e.seq,
            format!(
                "{} effect: {} on {} by {by}{what}",
                at(e.at_ms),
                e.call,
                e.resource
            ),
        ));
    }
    for iv in &sim.world.intervals {
        lines.push((
            iv.start_seq,
            format!(
                "{} host: {} quiesced (id {}, limit {} ms) by {}",
                at(iv.start_ms),
                iv.volume,
                iv.id,
                iv.limit_ms,
                tok(&iv.owner)
            ),
        ));
    }
    for a in &sim.agents {
        for l in &a.log {
            let what = match l.kind {
                ExecKind::Begin => "begins",
                ExecKind::Probe => "is asked about (fenced)",
            };
            lines.push((
                l.seq,
                format!(
                    "{} executor {}: {what} {}",
                    at(l.at_ms),
                    a.name,
                    tok(&l.token)
                ),
            ));
        }
    }
    lines.sort_by_key(|(seq, _)| *seq);
    let mut out: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    for v in &sim.world.violations {
        out.push(format!(
            "{} VIOLATION {}: {}",
            at(v.at_ms),
            v.prop.name(),
            v.what
        ));
    }
    out
}
