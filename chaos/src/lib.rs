//! stillpoint-chaos: does stillpoint keep its promises (S1–S7, BRIEF §4) while things fail?
//!
//! Two layers, in the manner of TigerBeetle's simulator and Jepsen. Both are seeded: the seed
//! is printed first, and the same seed replays the same schedule.
//!
//! ## The deterministic layer ([`sim`])
//! The job engine's decisions are pure functions of the coordinator (`plan_backup`,
//! `plan_prepare`, `decide`, `resolve`, `Job::record`, `Job::takeover_events`,
//! `JobTable::submit`/`record`). [`sim`] runs them, unchanged, against a simulated site: hosts
//! with mounts and quiesces whose deadlines fire on a virtual clock, arrays whose pair copies
//! take virtual time and can fault, step executors with journals and fences, a network that
//! delays, drops and reorders, and a replicated log whose leaders change at any moment and keep
//! only a prefix of what was not committed. The leader's driver is modelled on
//! `node/src/driver` rule for rule (see `sim/driver.rs`). One seeded PRNG, one event queue, no
//! clock, no threads, no I/O: thousands of schedules a second.
//!
//! The checkers never ask a job what it thinks. They read what the simulated world recorded:
//! the array's log of transitions, each host's quiesce intervals and mounts, every effect a
//! step had and the token it came under, and each executor's log of begins and probes. From
//! the jobs they take only what a user sees: which were accepted, and how each ended.
//! `FAULTS.md` lists every fault, when it strikes, and what the system promises then.
//!
//! ## What it found, and what it assumes
//! Building it found nine defects in the job engine, each fixed in `coordinator` with a
//! regression test that names the seed (see `coordinator/src/job/tests.rs`): a job that ended
//! with an order still out; a cancel that left an MV quiesced; a job ending before asking about
//! steps its predecessor may have sent (S5); a job failing in its last round with a publish
//! step still unknown; a separate sent beside its round's replicate (S1/S2); a deposed
//! leader's lost round taken for the current one (S1); a replicate onto an RV a lost round had
//! mounted (S2); attempts counted across rounds (jobs failing on steps that had worked); and a
//! deposed leader's release, sent before the separates, taken as the release after them (S3,
//! found only by the 1,000,000-seed run). It also showed that
//! fencing a token does not stop a step already under way: the simulated executor runs one
//! step at a time per pair or volume, in the order it began them, and the real executor must
//! do the same (`FAULTS.md`, "contracts").
//!
//! ## The process-level layer ([`run`])
//! Real processes of the `stillpoint` binary: the software array (its audit log on), mgmt1,
//! one or three business nodes with the sim workload writing to every MV, and backup1 — 3 or
//! 5 voters — each in its own data dir; on half the seeds a second array `A2` (the remote
//! site's, linked from A1) holding the RV of an RDR pair. A seed draws the site's shape, the faults (SIGKILL and
//! SIGSTOP/SIGCONT of the leader most often, of followers, of several agents at once up to all
//! of them, of the array process, of a business node while it holds a quiesce; and network
//! partitions: the leader isolated, a follower isolated, two agents cut from each other, a
//! minority/majority split, one-way loss at the leader, the array cut from one agent; a slow
//! link: a token bucket on what one process sends or receives, so its messages are late and,
//! past the bucket's latency bound, dropped; a lossy link: a share of one process's packets
//! dropped at random whatever the load; a delayed link: every packet of one process held
//! 20–400 ms, with a jitter that lets packets overtake each other; array
//! faults the software array serves: a slow copy pace, a failed RV LD, at any moment or while
//! its pair copies, the RDR link from A1 to A2 down for 1–15 s; and the backup node's RV stop hook failing or hanging, an ordinary command
//! hook in its config whose outcome a flag file decides ([`run::inject`])) and when
//! backups are submitted (some with `no_queue`, all on one group so they conflict). A fault
//! phase, then a heal phase with a stated bound. The binary is found next to
//! `stillpoint-chaos` (`cargo build --release -p stillpoint-node --bin stillpoint --features
//! fault-injection` puts it there) or given with `--stillpoint`. That feature makes it a test
//! build whose wall clock the harness can step ([`run::clock`]); a production build runs every
//! fault but that one.
//!
//! ### Partitions: network namespaces, not a proxy ([`net`])
//! Where the harness runs as root with `ip netns`, every process runs in its own network
//! namespace (`nsenter --net`: its mount namespace stays the machine's), with its own address on a bridge the harness also sits on;
//! only iproute2 and util-linux are needed. A cut from A to B is a permanent neighbour entry in A's namespace
//! for B's address pointing at a hardware address no port owns: A's packets to B are lost on
//! the wire. That is what a real partition does — connects and RPCs time out — whereas a
//! `blackhole`, `prohibit` or `unreachable` route fails a process's own sends at once
//! (EINVAL, EACCES, EHOSTUNREACH in under a millisecond, measured here), a kindness real
//! networks do not offer. A cut is one direction, so one-way loss comes free. The alternative,
//! a TCP proxy per peer pair, needs per-peer addresses in every agent's configuration (raft
//! members have one address each) and would still deliver what its buffers held; namespaces
//! change nothing in how stillpoint names its peers. A slow link is a `tbf` qdisc on one end of
//! a process's veth (this kernel has no `netem`): a congested link, late under load and lossy
//! past its bound, never a fixed delay on an idle link. A lossy link is an nftables rule on
//! the `egress` or `ingress` hook of a process's device, dropping packets at random. A delayed
//! link is iptables' NFQUEUE target in the process's namespace handing its packets to a
//! thread of the harness, which holds each for its drawn time (`net`'s essay says what each
//! models and what not). Everything made (namespaces, veths, the
//! bridge) is removed when the run's [`net::SiteNet`] is dropped, on a panic too; what a run
//! killed outright left is removed by the next one (names carry the owner's pid). Without
//! root or `ip netns` the partition faults are left out, the run says so, and a seed draws
//! the schedule it drew before partitions existed.
//!
//! Its checkers read records stillpoint does not write about itself: the array's audit log
//! (pair state changes with the fencing token each operation came with, refused operations,
//! RV I/O attempts with the RV's access, sampled MV writes), the harness's looks at the backup
//! node's mounts, the workload's verifier run on the array's LD files, and which jobs the
//! client saw accepted and how they ended. S5 and S6 are judged per pair from the tokens in
//! the audit log ([`run::fencing`]): no job acts on a pair again after another job did, and
//! no operation is accepted under a token lower than one accepted before. On volumes (the host
//! steps: free, quiesce, release, mount) they are judged from the agents' own step journals,
//! read once the agents have stopped ([`run::volumes`]): the product's record, not an
//! independent one. A job that ended done
//! must have left every pair of its group `separated` by the array's record (no copy broken
//! by a copy fault is published), and a pair the heal leaves in `fault` must be explained by
//! an RV LD failure the harness struck and be taken out by the backup it then submits. With
//! A2, its audit log (the host I/O on its RVs) is merged with A1's for S1 (A1 logs every pair
//! operation and MV write, which the other checkers read) and the verifier reads an RDR
//! pair's RV from A2's LD file. `FAULTS.md` lists all that is NOT CHECKED or NOT BUILT. A failing schedule keeps its dir and prints a timeline of faults,
//! observations and every job step.
//!
//! `tests/partition.rs` drives the case partitions exist for, in one deterministic scenario:
//! the leader cut off (alive, still reaching the array) while it drives a replicate; the
//! majority's leader finishes the job; the old leader's next pair operation, sent through
//! itself as a control node under its old term, is refused by the array's fence.
//!
//! ## Caveats
//! - The model is of the engine's rules, not of the agents' code: the executor's fencing and
//!   the host's deadline are modelled after their contracts (`storage::journal`, the host's
//!   quiesce guard). A bug in the real executor is for the process-level layer to find.
//! - The process-level layer runs a few schedules a minute, not thousands a second; its
//!   replay repeats the schedule (kinds, instants, holds), not the processes' timing.
//! - Only the backup and prepare procedures exist in the coordinator, so only they are run.
//! - The copy's content is not modelled: S3 is judged from the instants (the array's separate
//!   inside one quiesce of every MV of the group), not from data.

pub mod net;
pub mod run;
pub mod sim;
