//! The client: submissions of backups and prepares (retried while no leader answers) and an
//! operator's cancel.

use stillpoint_coordinator::job::{JobEvent, JobKind, plan_backup, plan_prepare};

use super::{Entry, Ev, Sim, limits};

impl Sim {
    pub(super) fn submit(&mut self, client: u32, tries: u32) {
        if !self.leading {
            if tries < 40 {
                self.schedule(
                    self.now + 500,
                    Ev::Submit {
                        client,
                        tries: tries + 1,
                    },
                );
            }
            return;
        }
        let group = self.rng.pick(&self.site.groups).clone();
        let prepare = self.rng.chance(150);
        let (kind, steps) = if prepare {
            (
                JobKind::Prepare {
                    group: group.name.clone(),
                },
                plan_prepare(&group, &limits()),
            )
        } else {
            (
                JobKind::Backup {
                    group: group.name.clone(),
                },
                plan_backup(&group, &limits()),
            )
        };
        let no_queue = self.rng.chance(250);
        let idx = self.log.len();
        self.note(|| {
            format!(
                "client {client}: submits {kind:?}{}",
                if no_queue { " (no queue)" } else { "" }
            )
        });
        self.append(Entry::Submit {
            kind,
            steps,
            no_queue,
            at_ms: self.now,
            client,
        });
        self.pending_submits.insert(idx, (client, tries));
    }

    pub(super) fn cancel(&mut self) {
        if !self.leading || self.accepted.is_empty() {
            return;
        }
        let job = *self.rng.pick(&self.accepted);
        self.count_fault("cancel (operator)");
        self.note(|| format!("client: cancel job {job}"));
        self.append(Entry::Event {
            job,
            event: JobEvent::CancelRequested {
                by: "operator".into(),
            },
            at_ms: self.now,
            term: 0,
        });
    }
}
