//! `ExecuteMany`: several orders sent at once (the steps a leader sends this agent in one
//! round — every MV of a group on this business node, every pair of a group on this array's
//! control path), begun in one journal transaction and one flush, then each run and answered
//! exactly as `Execute` would, as soon as it has its answer.
//!
//! Only orders that can be begun together are: distinct tokens, distinct resources, no token
//! already claimed by another request of this process. Any other order of the batch goes
//! through `Execute`'s own path beside them, so a batch never answers differently from the
//! same orders sent one by one; it only saves their requests and their journal writes.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, Stream};
use stillpoint_coordinator::job::Finding;
use stillpoint_coordinator::job::wire::{StepOrder, step_resource};
use stillpoint_storage::journal::StepToBegin;
use tonic::Status;

use super::{Claim, EndTx, Executor, begins_unflushed, journal_status, now_ms};

/// Most orders one `ExecuteMany` may carry.
pub const BATCH_ORDERS_MAX: usize = 64;

/// One order's answer: its index in the batch and what `Execute` would have returned.
pub type Answer = (usize, Result<Finding, Status>);

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

/// An order of the batch that is begun with the others.
struct Joined {
    index: usize,
    order: StepOrder,
    resource: Option<String>,
    claim: Claim,
    tx: EndTx,
}

impl Executor {
    /// `ExecuteMany`: see the module essay. `orders` are the batch's orders, each already
    /// decoded or the status its decoding ended with. Returns the answers as they come.
    pub async fn execute_many(
        self: &Arc<Self>,
        orders: Vec<Result<StepOrder, Status>>,
    ) -> Result<impl Stream<Item = Answer> + Send + 'static, Status> {
        if orders.len() > BATCH_ORDERS_MAX {
            return Err(Status::invalid_argument(format!(
                "a batch carries at most {BATCH_ORDERS_MAX} orders, this one {}: send the rest in another",
                orders.len()
            )));
        }
        let mut answers: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut joined: Vec<Joined> = Vec::new();
        let (mut tokens, mut resources) = (HashSet::new(), BTreeSet::new());
        for (index, order) in orders.into_iter().enumerate() {
            let order = match order.and_then(|o| self.admit(&o).map(|()| o)) {
                Ok(o) => o,
                Err(status) => {
                    answers.push(Box::pin(async move { (index, Err(status)) }));
                    continue;
                }
            };
            let token = order.dispatch.token;
            let resource = step_resource(&order.dispatch.call);
            let alone = !tokens.insert(token)
                || resource
                    .as_ref()
                    .is_some_and(|r| !resources.insert(r.clone()));
            let claimed = if alone { None } else { self.claim(token).ok() };
            match claimed {
                Some((claim, tx)) => joined.push(Joined {
                    index,
                    order,
                    resource,
                    claim,
                    tx,
                }),
                None => {
                    let exec = self.clone();
                    answers.push(Box::pin(async move { (index, exec.execute(order).await) }));
                }
            }
        }
        if !joined.is_empty() {
            self.begin_joined(joined, &mut answers).await;
        }
        Ok(answers)
    }

    /// Begins `joined` in one journal write (resource locks taken in name order first, as a
    /// single `Execute` takes its one) and queues each order's run and answer in `answers`.
    async fn begin_joined(
        self: &Arc<Self>,
        mut joined: Vec<Joined>,
        answers: &mut FuturesUnordered<Pending>,
    ) {
        joined.sort_by(|a, b| a.resource.cmp(&b.resource));
        let mut tails = Vec::with_capacity(joined.len());
        for j in &joined {
            tails.push(match self.resource_lock(&j.order.dispatch.call) {
                Some(m) => Some(m.lock_owned().await),
                None => None,
            });
        }
        let durable = joined
            .iter()
            .any(|j| !begins_unflushed(&j.order.dispatch.call));
        let steps: Vec<(super::FencingToken, Option<String>)> = joined
            .iter()
            .map(|j| (j.order.dispatch.token, j.resource.clone()))
            .collect();
        let begun = self
            .journal_op("beginning the steps in the journal", move |j| {
                let steps: Vec<StepToBegin<'_>> = steps
                    .iter()
                    .map(|(token, resource)| StepToBegin {
                        token: *token,
                        resource: resource.as_deref(),
                    })
                    .collect();
                j.begin_steps(&steps, now_ms(), durable)
            })
            .await;
        let begun = match begun {
            Ok(each) => each,
            Err(status) => {
                // Nothing was begun (or, timed out, it is unknown whether it was): every order
                // of the write ends as a single one would have.
                for j in joined {
                    let status = Status::new(status.code(), status.message());
                    let index = j.index;
                    answers.push(Box::pin(async move { (index, Err(status)) }));
                }
                return;
            }
        };
        for ((j, found), tail) in joined.into_iter().zip(begun).zip(tails) {
            let index = j.index;
            match found {
                Ok(found) => {
                    let exec = self.clone();
                    answers.push(Box::pin(async move {
                        (
                            index,
                            exec.proceed(j.order, found, j.claim, j.tx, tail).await,
                        )
                    }));
                }
                Err(e) => {
                    let status = journal_status("beginning the step in the journal", e);
                    answers.push(Box::pin(async move { (index, Err(status)) }));
                }
            }
        }
    }
}
