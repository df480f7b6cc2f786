//! `stillpoint-chaos`: the chaos harness's command line (see the library's essay).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use stillpoint_chaos::run;
use stillpoint_chaos::sim::{self, RunConfig, Summary};

/// Exit codes: 0 no violation, 1 a violation was found, 2 not available / bad usage.
const EXIT_VIOLATION: u8 = 1;
const EXIT_NOT_BUILT: u8 = 2;

#[derive(Parser)]
#[command(
    name = "stillpoint-chaos",
    about = "Seeded fault schedules against stillpoint, judged by S1–S7"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The deterministic layer: simulated site, real job engine, many seeds a second.
    Sim(SimArgs),
    /// The process-level harness: seeded faults against real `stillpoint` processes.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Replay exactly this seed.
    #[arg(long, conflicts_with_all = ["schedules", "start"])]
    seed: Option<u64>,
    /// How many schedules to run (seeds from --start).
    #[arg(long, default_value_t = 1)]
    schedules: u64,
    /// First seed of the range (default: drawn from the clock, and printed).
    #[arg(long)]
    start: Option<u64>,
    /// Stop starting new schedules after this long (e.g. 30m); the summary says how many ran.
    #[arg(long, value_parser = parse_duration)]
    time_budget: Option<Duration>,
    /// Length of each schedule's fault phase.
    #[arg(long, value_parser = parse_duration, default_value = "40s")]
    fault_time: Duration,
    /// Bound on each schedule's heal phase.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    heal_time: Duration,
    /// The `stillpoint` binary (default: next to this program).
    #[arg(long)]
    stillpoint: Option<std::path::PathBuf>,
    /// Where schedules' dirs go (default: a new dir under the system's temporary dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Keep every schedule's dir, not only failing ones.
    #[arg(long)]
    keep: bool,
    /// Run the site on loopback without network partitions or slow links even where they can
    /// be made (a seed then draws the schedule it drew before either existed).
    #[arg(long)]
    no_partitions: bool,
    /// Draw only these kinds of fault, comma-separated (e.g. `slow-copy,rv-ld-failure`); the
    /// names are those of the summary table. Default: every kind.
    #[arg(long, value_delimiter = ',', value_parser = parse_fault_kind)]
    faults: Vec<run::schedule::FaultKind>,
    /// Real file systems: every business host runs the linux backend with this file system
    /// on its MVs (quiesced by freeze), an application appending synced records to each, and
    /// each consistent copy is checked with e2fsck and its records read back (as root; needs
    /// /dev/fuse, loop devices and e2fsprogs). Default: the sim backend and its workload.
    #[arg(long, value_parser = ["ext4"])]
    fs: Option<String>,
}

fn parse_fault_kind(s: &str) -> Result<run::schedule::FaultKind, String> {
    run::schedule::FaultKind::from_name(s.trim()).ok_or_else(|| {
        format!(
            "{s:?} is no fault kind; one of: {}",
            run::schedule::FaultKind::ALL
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[derive(clap::Args)]
struct SimArgs {
    /// How many seeds to run (from --start).
    #[arg(long, default_value_t = 1000, conflicts_with = "seed")]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// With --seed: print the run's timeline.
    #[arg(long, requires = "seed")]
    trace: bool,
    /// Stop starting new seeds after this long (e.g. 30s, 5m); the summary says how many ran.
    #[arg(long, value_parser = parse_duration)]
    time_budget: Option<Duration>,
    /// Worker threads (each runs its own seeds; results do not depend on it).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Most pairs a drawn site has (1–8).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=8))]
    pairs_max: u32,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by s, m or h (e.g. 30s)"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run_command(args),
        Command::Sim(args) => sim_command(args),
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the output, not the run's verdict.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn verdict(violations: u64) -> ExitCode {
    if violations > 0 {
        ExitCode::from(EXIT_VIOLATION)
    } else {
        ExitCode::SUCCESS
    }
}

fn sim_command(args: SimArgs) -> ExitCode {
    let mut cfg = RunConfig::default();
    cfg.site.pairs_max = args.pairs_max;
    if let Some(seed) = args.seed {
        cfg.trace = args.trace;
        say(&format!("seed {seed}\n"));
        let report = sim::run(seed, &cfg);
        let mut text = String::new();
        for line in &report.timeline {
            text.push_str(line);
            text.push('\n');
        }
        let mut summary = Summary::default();
        summary.add(&report);
        text.push_str(&summary.table());
        for v in &report.violations {
            text.push_str(&format!(
                "VIOLATION {} at {} ms: {}\n",
                v.prop.name(),
                v.at_ms,
                v.what
            ));
        }
        say(&text);
        return verdict(report.violations.len() as u64);
    }
    let end = args.start.saturating_add(args.seeds);
    say(&format!(
        "seeds {}..{} ({} schedules)\n",
        args.start, end, args.seeds
    ));
    let started = Instant::now();
    let deadline = args.time_budget.map(|b| started + b);
    let threads = args.threads.clamp(1, 64) as u64;
    let mut panicked = 0;
    let summary = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let cfg = cfg.clone();
                scope.spawn(move || {
                    let mut s = Summary::default();
                    let mut seed = args.start + w;
                    while seed < end {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        s.add(&sim::run(seed, &cfg));
                        seed += threads;
                    }
                    s
                })
            })
            .collect();
        let mut total = Summary::default();
        for h in handles {
            match h.join() {
                Ok(s) => total.merge(s),
                Err(_) => {
                    eprintln!(
                        "a worker thread panicked (a bug in the simulator); its seeds count as failed"
                    );
                    panicked += 1;
                }
            }
        }
        total
    });
    let secs = started.elapsed().as_secs_f64();
    let mut text = format!(
        "ran {} schedules in {:.1} s: {:.0} schedules/s on {} threads\n",
        summary.schedules,
        secs,
        summary.schedules as f64 / secs.max(1e-9),
        threads
    );
    text.push_str(&summary.table());
    if let Some((seed, _)) = summary.failing.first() {
        // The first failing seed's timeline, replayed (a seed reproduces its run exactly).
        let traced = RunConfig {
            trace: true,
            ..cfg.clone()
        };
        text.push_str(&format!(
            "\ntimeline of seed {seed} (replay: stillpoint-chaos sim --seed {seed} --trace):\n"
        ));
        for line in sim::run(*seed, &traced).timeline {
            text.push_str(&line);
            text.push('\n');
        }
    }
    say(&text);
    verdict(summary.violations_total() + panicked)
}

fn run_command(args: RunArgs) -> ExitCode {
    let bin = match run::find_stillpoint(args.stillpoint.clone()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("stillpoint-chaos run: {e}");
            return ExitCode::from(EXIT_NOT_BUILT);
        }
    };
    let base = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("stillpoint-chaos-{}", std::process::id()))
    });
    let mut cfg = run::RunConfig::new(bin, base.clone());
    cfg.keep = args.keep;
    cfg.fault_ms = args.fault_time.as_millis() as u64;
    cfg.heal_ms_max = args.heal_time.as_millis() as u64;
    cfg.only = args.faults.clone();
    if let Some(fs) = &args.fs {
        if let Some(why) = run::fs_copy::unavailable() {
            eprintln!("stillpoint-chaos run --fs {fs}: {why}");
            return ExitCode::from(EXIT_NOT_BUILT);
        }
        cfg.mv_fs = Some(fs.clone());
    }
    let partitions = if args.no_partitions {
        "network partitions: off (--no-partitions); every process on loopback".to_string()
    } else {
        match stillpoint_chaos::net::unavailable() {
            None => {
                cfg.partitions = true;
                "network partitions: on (each process in its own network namespace)".to_string()
            }
            Some(why) => format!(
                "network partitions: LEFT OUT: {why}; every process on loopback, and a seed draws its schedule without them"
            ),
        }
    };
    let (first, count) = match args.seed {
        Some(seed) => (seed, 1),
        None => (
            args.start.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64 % 1_000_000_000)
                    .unwrap_or(0)
            }),
            args.schedules.max(1),
        ),
    };
    if count == 1 {
        say(&format!("seed {first}\n"));
    } else {
        say(&format!(
            "seeds {first}..{} ({count} schedules; replay one with `run --seed N`)\n",
            first + count
        ));
    }
    say(&format!("{partitions}\n"));
    say(&match &cfg.mv_fs {
        Some(fs) => format!(
            "hosts: linux, {fs} on every MV (freeze), an application appending synced records on each\n"
        ),
        None => "hosts: sim backend and its workload\n".to_string(),
    });
    let started = Instant::now();
    let mut summary = run::report::Summary::default();
    let mut failing = Vec::new();
    for seed in first..first.saturating_add(count) {
        if args.time_budget.is_some_and(|b| started.elapsed() >= b) {
            say("time budget spent: no more schedules\n");
            break;
        }
        let report = run::run(seed, &cfg);
        say(&format!("{}\n  plan: {}\n", report.line(), report.plan));
        for e in &report.s3_excused {
            say(&format!("  S3 counted, not judged: {e}\n"));
        }
        summary.add(&report);
        if report.failed() {
            failing.push(report);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mut text = format!(
        "ran {} schedules in {:.1} s: {:.2} schedules/min\n",
        summary.schedules,
        secs,
        summary.schedules as f64 * 60.0 / secs.max(1e-9)
    );
    text.push_str(&summary.table());
    for r in &failing {
        text.push_str(&format!(
            "\nseed {} FAILED (replay: stillpoint-chaos run --seed {}){}\n",
            r.seed,
            r.seed,
            r.kept
                .as_ref()
                .map(|d| format!("; data dirs and logs kept in {}", d.display()))
                .unwrap_or_default()
        ));
        for v in &r.violations {
            text.push_str(&format!(
                "VIOLATION {} at {}: {}\n",
                v.prop, v.at_ms, v.what
            ));
        }
        for e in &r.errors {
            text.push_str(&format!("HARNESS ERROR: {e}\n"));
        }
        text.push_str("timeline (seconds from the start of the fault phase):\n");
        for line in &r.timeline {
            text.push_str(line);
            text.push('\n');
        }
    }
    if failing.is_empty() && !args.keep && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    say(&text);
    verdict(summary.violations_total())
}
