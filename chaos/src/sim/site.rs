//! The simulated site, drawn from the seed: business nodes, one backup node, one or two arrays
//! with DDR and RDR pairs, and consistency groups (which may overlap, so jobs conflict).

use stillpoint_coordinator::inventory::{
    BackupCommand, Group, GroupMember, LdRef, QuiesceMethod, VolumeRef,
};

use super::rng::Rng;

/// The shape of the sites a run may draw. Each run draws its own within these bounds.
#[derive(Clone, Debug)]
pub struct SiteConfig {
    /// Pairs per site, at least 1.
    pub pairs_max: u32,
    /// Business nodes per site, at least 1.
    pub business_max: u32,
    /// Arrays per site (1 or 2); with 2, some pairs are RDR (MV and RV on different arrays).
    pub arrays_max: u32,
    /// Consistency groups per site, at least 1.
    pub groups_max: u32,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            pairs_max: 8,
            business_max: 4,
            arrays_max: 2,
            groups_max: 3,
        }
    }
}

/// One pair as the simulated world knows it (not as any job says).
#[derive(Clone, Debug)]
pub struct PairSite {
    pub name: String,
    pub mv_array: String,
    pub rv_array: String,
    /// Remote: the RDR link between the two arrays carries its copies.
    pub rdr: bool,
    pub mv: VolumeRef,
    pub rv: VolumeRef,
    pub quiesce_ms_max: u64,
}

/// The site of one run.
#[derive(Clone, Debug)]
pub struct Site {
    pub business: Vec<String>,
    pub backup: String,
    pub arrays: Vec<String>,
    pub pairs: Vec<PairSite>,
    pub groups: Vec<Group>,
}

/// The agent that executes steps of array `array` (always the same one, as the driver does).
pub fn array_agent(array: &str) -> String {
    format!("ctl-{array}")
}

impl Site {
    pub fn draw(cfg: &SiteConfig, rng: &mut Rng) -> Site {
        let n_pairs = rng.range(1, cfg.pairs_max.max(1) as u64) as u32;
        let n_business = rng.range(1, cfg.business_max.max(1) as u64) as u32;
        let n_arrays = rng.range(1, cfg.arrays_max.clamp(1, 2) as u64) as u32;
        let business: Vec<String> = (1..=n_business).map(|i| format!("db{i}")).collect();
        let arrays: Vec<String> = (1..=n_arrays).map(|i| format!("A{i}")).collect();
        let backup = "backup1".to_string();
        let pairs: Vec<PairSite> = (0..n_pairs)
            .map(|i| {
                let mv_array = rng.pick(&arrays).clone();
                let rdr = n_arrays == 2 && rng.chance(400);
                let rv_array = if rdr {
                    arrays
                        .iter()
                        .find(|a| **a != mv_array)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    mv_array.clone()
                };
                PairSite {
                    name: format!("p{i}"),
                    mv_array,
                    rv_array,
                    rdr,
                    mv: VolumeRef {
                        node: rng.pick(&business).clone(),
                        volume: format!("mv{i}"),
                    },
                    rv: VolumeRef {
                        node: backup.clone(),
                        volume: format!("rv{i}"),
                    },
                    quiesce_ms_max: rng.range(3_000, 20_000),
                }
            })
            .collect();
        let n_groups = rng.range(1, cfg.groups_max.max(1) as u64);
        let groups = (0..n_groups)
            .map(|g| {
                // A random non-empty subset; groups may share pairs (conflicting jobs).
                let mut members: Vec<&PairSite> =
                    pairs.iter().filter(|_| rng.chance(500)).collect();
                if members.is_empty() {
                    members.push(rng.pick(&pairs));
                }
                Group {
                    name: format!("g{g}"),
                    members: members
                        .into_iter()
                        .map(|p| GroupMember {
                            pair: p.name.clone(),
                            mv_ld: LdRef {
                                array: p.mv_array.clone(),
                                ld: 0,
                            },
                            rv_ld: LdRef {
                                array: p.rv_array.clone(),
                                ld: 1,
                            },
                            mv: p.mv.clone(),
                            rv: p.rv.clone(),
                            quiesce: QuiesceMethod::Unmount,
                            quiesce_ms_max: p.quiesce_ms_max,
                        })
                        .collect(),
                    backup_command: rng.chance(700).then(|| BackupCommand {
                        node: backup.clone(),
                        command: vec!["tar".into(), "cf".into(), "/dev/st0".into()],
                        timeout_ms: 20_000,
                    }),
                }
            })
            .collect();
        Site {
            business,
            backup,
            arrays,
            pairs,
            groups,
        }
    }

    pub fn pair(&self, name: &str) -> Option<&PairSite> {
        self.pairs.iter().find(|p| p.name == name)
    }

    pub fn pair_of_rv(&self, rv: &VolumeRef) -> Option<&PairSite> {
        self.pairs.iter().find(|p| &p.rv == rv)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Every agent that executes steps: business nodes, the backup node, array controllers.
    pub fn agents(&self) -> Vec<String> {
        let mut all = self.business.clone();
        all.push(self.backup.clone());
        all.extend(self.arrays.iter().map(|a| array_agent(a)));
        all
    }
}
