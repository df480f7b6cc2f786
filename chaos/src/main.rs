//! `stillpoint-chaos`: the chaos harness's command line (see the library's essay).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
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
    /// The process-level harness (real `stillpoint` processes): not built yet.
    Run {
        /// Accepted so scripts can be written against it; ignored until the harness exists.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
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
        Command::Run { .. } => {
            eprintln!(
                "stillpoint-chaos run: not built yet: needs the process-level harness (issue 12 items 1-5); \
                 the deterministic layer is `stillpoint-chaos sim`"
            );
            ExitCode::from(EXIT_NOT_BUILT)
        }
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
