//! The fault schedule: which fault strikes next and for how long, and the heal that removes
//! every fault at once.

use super::{Ev, Sim};

impl Sim {
    pub(super) fn fault(&mut self) {
        const KINDS: [(&str, u64); 9] = [
            ("leader change", 20),
            ("agent restart", 12),
            ("copy fault", 10),
            ("RDR link down", 6),
            ("holder refuses unmount", 10),
            ("stop hook fails", 8),
            ("slow host", 8),
            ("commit lag", 8),
            ("network storm", 10),
        ];
        let total: u64 = KINDS.iter().map(|(_, w)| w).sum();
        let mut r = self.rng.below(total);
        let kind = KINDS
            .iter()
            .find(|(_, w)| {
                if r < *w {
                    true
                } else {
                    r -= w;
                    false
                }
            })
            .map(|(k, _)| *k)
            .unwrap_or("leader change");
        let now = self.now;
        match kind {
            "leader change" => self.leader_change(),
            "agent restart" => {
                let a = self.rng.below(self.agents.len() as u64) as usize;
                if self.agents[a].up {
                    self.count_fault(kind);
                    self.crash_agent(a);
                    let down_ms = self.rng.range(200, 8_000);
                    let name = self.agents[a].name.clone();
                    self.note(|| format!("FAULT agent {name} killed (back in {down_ms} ms)"));
                    self.schedule(now + down_ms, Ev::AgentUp { agent: a });
                }
            }
            "copy fault" => {
                let p = self.rng.pick(&self.site.pairs).name.clone();
                if self.world.copy_fault(&p, now) {
                    self.count_fault(kind);
                    self.note(|| format!("FAULT copy fault on {p}"));
                }
            }
            "RDR link down" => {
                if self.world.link_up && self.site.pairs.iter().any(|p| p.rdr) {
                    self.count_fault(kind);
                    self.world.set_link(false, now, 0);
                    let up_ms = self.rng.range(1_000, 15_000);
                    self.note(|| format!("FAULT RDR link down for {up_ms} ms"));
                    self.schedule(now + up_ms, Ev::LinkUp);
                }
            }
            "holder refuses unmount" => {
                let p = self.rng.pick(&self.site.pairs).clone();
                let v = if self.rng.chance(500) { p.mv } else { p.rv };
                let ms = self.rng.range(1_000, 20_000);
                self.count_fault(kind);
                self.note(|| format!("FAULT a process holds {v} for {ms} ms"));
                self.world.busy_until.insert(v, now + ms);
            }
            "stop hook fails" => {
                let mut nodes = self.site.business.clone();
                nodes.push(self.site.backup.clone());
                let n = self.rng.pick(&nodes).clone();
                let ms = self.rng.range(1_000, 15_000);
                self.count_fault(kind);
                self.note(|| format!("FAULT stop hooks on {n} fail for {ms} ms"));
                self.world.hook_fails_until.insert(n, now + ms);
            }
            "slow host" => {
                let a = self.rng.below(self.agents.len() as u64) as usize;
                let ms = self.rng.range(2_000, 20_000);
                self.count_fault(kind);
                self.agents[a].slow_until_ms = now + ms;
                let name = self.agents[a].name.clone();
                self.note(|| format!("FAULT {name} executes slowly for {ms} ms"));
            }
            "commit lag" => {
                let ms = self.rng.range(1_000, 10_000);
                self.count_fault(kind);
                self.commit_lag_until_ms = now + ms;
                self.note(|| format!("FAULT the log commits slowly for {ms} ms"));
            }
            _ => {
                let ms = self.rng.range(500, 8_000);
                self.count_fault("network storm");
                self.storm_until_ms = now + ms;
                self.note(|| format!("FAULT network storm (loss, delay, reordering) for {ms} ms"));
            }
        }
        let next = self.rng.range(300, 4_000);
        self.schedule(now + next, Ev::Fault);
    }

    pub(super) fn heal(&mut self) {
        self.healing = true;
        self.heal_at_ms = self.now;
        self.note(|| "HEAL: every fault removed".to_string());
        self.storm_until_ms = 0;
        self.commit_lag_until_ms = 0;
        self.world.busy_until.clear();
        self.world.hook_fails_until.clear();
        for a in 0..self.agents.len() {
            self.agents[a].slow_until_ms = 0;
            self.agent_up(a);
        }
        if !self.world.link_up {
            let ms = self.rng.range(500, 5_000);
            self.world.set_link(true, self.now, ms);
        }
    }
}
