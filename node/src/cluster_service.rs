//! The client API every agent serves: identity, bootstrap, membership, status, proposals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{InitializeError, RaftError};
use stillpoint_coordinator::{Command, Member, NodeId, views};
use stillpoint_proto::cluster::cluster_server::Cluster;
use stillpoint_proto::cluster::*;
use tonic::{Request, Response, Status};

use crate::agent::AgentContext;
use crate::client::Client;
use crate::error::NodeError;

/// How long `cluster status` waits for each member to answer before calling it unreachable.
const MEMBER_PROBE_TIMEOUT_MS: u64 = 1_500;
/// How long adding a member may take: the learner's catch-up, then its promotion.
const ADD_MEMBER_TIMEOUT_MS: u64 = crate::deadlines::ADD_MEMBER_MS;
/// How long promoting or removing a member may take to commit.
const MEMBERSHIP_CHANGE_TIMEOUT_MS: u64 = crate::deadlines::MEMBERSHIP_CHANGE_MS;

/// First and longest pause before proposing a membership change again while an earlier one
/// is being committed (see [`ClusterService::membership_change`]).
const MEMBERSHIP_BUSY_PAUSE_MS_MIN: u64 = 20;
const MEMBERSHIP_BUSY_PAUSE_MS_MAX: u64 = 500;

/// What a membership change fails with.
type ChangeError = RaftError<NodeId, openraft::error::ClientWriteError<NodeId, Member>>;

pub struct ClusterService {
    ctx: Arc<AgentContext>,
}

impl ClusterService {
    pub fn new(ctx: Arc<AgentContext>) -> Self {
        ClusterService { ctx }
    }

    fn identity_message(&self) -> NodeIdentity {
        let c = &self.ctx.config;
        let metrics = self.ctx.metrics();
        NodeIdentity {
            node_id: c.node_id,
            name: c.name.clone(),
            address: c.advertised_address(),
            cluster_id: self.ctx.identity.cluster_id().unwrap_or_default(),
            roles: c.roles.iter().map(|r| r.to_string()).collect(),
            version: crate::agent::VERSION.to_string(),
            incarnation: self.ctx.identity.incarnation,
            initialized: metrics
                .membership_config
                .membership()
                .nodes()
                .next()
                .is_some(),
        }
    }

    fn local_status(&self) -> LocalStatusReply {
        let m = self.ctx.metrics();
        LocalStatusReply {
            identity: Some(self.identity_message()),
            current_term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            leader_id: m.current_leader,
            state: format!("{:?}", m.state),
        }
    }

    /// Confirms with a quorum that this agent still leads (linearizable read barrier).
    async fn ensure_linearizable(&self) -> Result<(), NodeError> {
        crate::raft_health::confirm_read(&self.ctx.raft).await
    }

    fn require_leader(&self) -> Result<(), NodeError> {
        if self.ctx.is_leader() {
            Ok(())
        } else {
            Err(self.ctx.not_leader())
        }
    }

    fn membership_reply(&self, log_index: u64) -> MembershipReply {
        let m = self.ctx.metrics();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        MembershipReply {
            log_index,
            voters: voters.iter().copied().collect(),
            learners: membership
                .learner_ids()
                .filter(|id| !voters.contains(id))
                .collect(),
        }
    }

    async fn init(&self, req: InitRequest) -> Result<InitReply, NodeError> {
        if req.member_addresses.is_empty() {
            return Err(NodeError::Invalid(
                "cluster init needs the address of every first member".into(),
            ));
        }
        let own_address = self.ctx.config.advertised_address();
        let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
        let mut identities = Vec::new();
        for address in &req.member_addresses {
            crate::config::check_address(address).map_err(NodeError::Invalid)?;
            let ident = if *address == own_address {
                self.identity_message()
            } else {
                let mut probe = Client::new(address.clone());
                probe.request_timeout = Duration::from_secs(5);
                probe.identity().await?
            };
            // Each member as it describes itself (its advertised address, its incarnation), so
            // inits typed differently on different agents still build the same membership.
            if let Some(prev) = members.insert(
                ident.node_id,
                Member::new(&ident.address, ident.incarnation),
            ) {
                return Err(NodeError::Invalid(format!(
                    "node id {} answers at both {} and {address}: every agent needs its own node_id",
                    ident.node_id, prev.addr
                )));
            }
            identities.push(ident);
        }
        if !members.contains_key(&self.ctx.node_id()) {
            return Err(NodeError::Invalid(format!(
                "this agent's own address {own_address} is not among the members {:?}",
                req.member_addresses
            )));
        }
        let cluster_id = if req.cluster_id.is_empty() {
            stillpoint_coordinator::cluster_id_for(&members)
        } else {
            req.cluster_id.clone()
        };
        let decision = decide_init(
            &cluster_id,
            self.ctx.identity.cluster_id().as_deref(),
            self.identity_message().initialized,
            &identities,
        )?;
        let mut already = decision == InitDecision::AlreadyDone;
        if !already {
            self.ctx.identity.adopt(&cluster_id).await?;
            match self.ctx.raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(%cluster_id, members = identities.len(), "cluster initialized")
                }
                // Another member's init reached this agent first: the same cluster, by the
                // cluster id check above and the identical membership every init builds.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => already = true,
                Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                    return Err(NodeError::Invalid(e.to_string()));
                }
                Err(RaftError::Fatal(f)) => return Err(NodeError::Raft(f.to_string())),
            }
        }
        for ident in &mut identities {
            ident.cluster_id = cluster_id.clone();
            ident.initialized = true;
        }
        Ok(InitReply {
            cluster_id,
            members: identities,
            already_initialized: already,
        })
    }

    async fn add_member(&self, req: AddMemberRequest) -> Result<MembershipReply, NodeError> {
        self.require_leader()?;
        crate::config::check_address(&req.address).map_err(NodeError::Invalid)?;
        let mut probe = Client::new(req.address.clone());
        probe.request_timeout = Duration::from_secs(5);
        let ident = probe.identity().await?;
        let mine = self.ctx.identity.cluster_id().unwrap_or_default();
        if !ident.cluster_id.is_empty() && ident.cluster_id != mine {
            return Err(NodeError::Refused(format!(
                "the agent at {} (node {}) belongs to cluster {}, not this cluster {mine}",
                req.address, ident.node_id, ident.cluster_id
            )));
        }
        let membership = self
            .ctx
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        // The membership records the address the agent advertises: it is what peers dial and
        // what its registry record must say.
        if ident.address != req.address {
            return Err(NodeError::Invalid(format!(
                "the agent at {} (node {}) advertises itself as {}; add it by that address, or fix its `advertise` setting",
                req.address, ident.node_id, ident.address
            )));
        }
        let removed = self.ctx.state.read(|s| {
            s.nodes
                .get(&ident.node_id)
                .is_some_and(|r| r.deregistered_at_ms.is_some())
        });
        if removed {
            return Err(NodeError::Refused(format!(
                "node id {} was removed from this cluster and node ids are never reused; give the agent at {} a new node_id (and start it with --new)",
                ident.node_id, req.address
            )));
        }
        if let Some(existing) = membership.get_node(&ident.node_id) {
            if existing.addr != req.address {
                return Err(NodeError::Invalid(format!(
                    "node id {} is already a member at {}; remove it first or give the new agent another node_id",
                    ident.node_id, existing.addr
                )));
            }
            if existing.incarnation != ident.incarnation {
                return Err(NodeError::Refused(format!(
                    "node {} is a member with data dir incarnation {:016x}, but the agent at {} has incarnation {:016x}: it lost or replaced its data dir; remove node {} and add this server again under a new node_id",
                    ident.node_id,
                    existing.incarnation,
                    req.address,
                    ident.incarnation,
                    ident.node_id
                )));
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ADD_MEMBER_TIMEOUT_MS);
        let member = Member::new(&req.address, ident.incarnation);
        let added = self
            .membership_change(
                deadline,
                || {
                    self.ctx
                        .raft
                        .add_learner(ident.node_id, member.clone(), true)
                },
                || {
                    NodeError::outcome_unknown(format!(
                        "node {} was not added and caught up as a learner within {ADD_MEMBER_TIMEOUT_MS} ms (the membership change adding it may yet commit)",
                        ident.node_id
                    ))
                },
            )
            .await?;
        let mut index = added.log_id.index;
        if req.promote {
            index = self.promote_until(ident.node_id, deadline).await?;
        }
        Ok(self.membership_reply(index))
    }

    async fn promote(&self, node_id: NodeId) -> Result<u64, NodeError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(MEMBERSHIP_CHANGE_TIMEOUT_MS);
        self.promote_until(node_id, deadline).await
    }

    /// Commits `change` by `deadline`, or says the outcome is unknown.
    async fn change_membership_until(
        &self,
        change: ChangeMembers<NodeId, Member>,
        deadline: tokio::time::Instant,
    ) -> Result<u64, NodeError> {
        let what = format!("{change:?}");
        let started = tokio::time::Instant::now();
        let changed = self
            .membership_change(
                deadline,
                || self.ctx.raft.change_membership(change.clone(), false),
                || {
                    NodeError::outcome_unknown(format!(
                        "the membership change {what} did not commit within {} ms (no quorum?)",
                        started.elapsed().as_millis()
                    ))
                },
            )
            .await?;
        Ok(changed.log_id.index)
    }

    /// Runs one membership change (`change` proposes it) by `deadline`, proposing it again
    /// while the cluster is still committing an earlier one: a leader just elected has not
    /// committed the membership it inherited until its first entry commits, and two
    /// operators' changes may overlap; neither is a reason to fail. When the deadline passes
    /// (the change proposed and not committed, or still waiting for the earlier one) the
    /// error is `late()`'s.
    async fn membership_change<T, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        change: F,
        late: impl FnOnce() -> NodeError,
    ) -> Result<T, NodeError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ChangeError>>,
    {
        use openraft::error::{ChangeMembershipError, ClientWriteError};
        let mut pause = Duration::from_millis(MEMBERSHIP_BUSY_PAUSE_MS_MIN);
        loop {
            match tokio::time::timeout_at(deadline, change()).await {
                Err(_) => return Err(late()),
                Ok(Ok(done)) => return Ok(done),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(busy),
                )))) => {
                    tracing::debug!(%busy, "an earlier membership change is being committed; proposing again");
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(late());
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(MEMBERSHIP_BUSY_PAUSE_MS_MAX));
                }
                Ok(Err(e)) => return Err(self.ctx.client_write_error(e)),
            }
        }
    }

    async fn promote_until(
        &self,
        node_id: NodeId,
        deadline: tokio::time::Instant,
    ) -> Result<u64, NodeError> {
        self.require_leader()?;
        let membership = self
            .ctx
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if membership.get_node(&node_id).is_none() {
            return Err(NodeError::Invalid(format!(
                "node {node_id} is not a member; add it first"
            )));
        }
        self.change_membership_until(ChangeMembers::AddVoterIds([node_id].into()), deadline)
            .await
    }

    async fn remove(&self, node_id: NodeId) -> Result<MembershipReply, NodeError> {
        self.require_leader()?;
        let membership = self
            .ctx
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&node_id) {
            if voters.len() == 1 {
                return Err(NodeError::Invalid(format!(
                    "node {node_id} is the last voter; a cluster needs one"
                )));
            }
            ChangeMembers::RemoveVoters([node_id].into())
        } else if membership.get_node(&node_id).is_some() {
            ChangeMembers::RemoveNodes([node_id].into())
        } else {
            return Err(NodeError::Invalid(format!(
                "node {node_id} is not a member"
            )));
        };
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(MEMBERSHIP_CHANGE_TIMEOUT_MS);
        let mut index = self.change_membership_until(change, deadline).await?;
        // The registry keeps the record for the audit trail, marked as gone. A leader that just
        // removed itself cannot propose any more; the new leader's registry then still lists the
        // node as registered, which `cluster status` shows as not a member.
        if self.ctx.is_leader() {
            let at_ms = crate::agent::now_ms();
            if let Ok((_, i)) = self
                .ctx
                .propose_local(Command::DeregisterNode { node_id, at_ms })
                .await
            {
                index = i;
            }
        }
        Ok(self.membership_reply(index))
    }

    async fn status(&self, req: StatusRequest) -> Result<StatusReply, NodeError> {
        if req.consistent {
            self.ensure_linearizable().await?;
        }
        let m = self.ctx.metrics();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let registry = self.ctx.state.read(|s| s.nodes.clone());
        let nodes: Vec<(NodeId, Member)> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let probes = nodes.iter().map(|(id, node)| {
            let id = *id;
            let address = node.addr.clone();
            let own = id == self.ctx.node_id();
            let local = own.then(|| self.local_status());
            async move {
                if let Some(local) = local {
                    return Some(local);
                }
                let mut client = Client::new(address);
                client.request_timeout = Duration::from_millis(MEMBER_PROBE_TIMEOUT_MS);
                client
                    .on_endpoint("local status", |mut c| async move {
                        c.local_status(Empty {}).await
                    })
                    .await
                    .ok()
            }
        });
        let answers = futures::future::join_all(probes).await;
        let replication = m.replication.clone().unwrap_or_default();
        let mut members = Vec::new();
        for ((id, node), answer) in nodes.into_iter().zip(answers) {
            let record = registry.get(&id);
            let identity = NodeIdentity {
                node_id: id,
                name: record.map(|r| r.name.clone()).unwrap_or_default(),
                address: node.addr.clone(),
                cluster_id: self.ctx.identity.cluster_id().unwrap_or_default(),
                roles: record
                    .map(|r| r.roles.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default(),
                version: record.map(|r| r.version.clone()).unwrap_or_default(),
                initialized: true,
                incarnation: node.incarnation,
            };
            members.push(MemberStatus {
                identity: Some(identity),
                voter: voters.contains(&id),
                matched_index: replication.get(&id).cloned().flatten().map(|l| l.index),
                reachable: answer.is_some(),
                last_applied_index: answer.as_ref().and_then(|a| a.last_applied_index),
                current_term: answer.as_ref().map(|a| a.current_term),
                state: answer
                    .map(|a| a.state)
                    .unwrap_or_else(|| "Unreachable".into()),
            });
        }
        Ok(StatusReply {
            cluster_id: self.ctx.identity.cluster_id().unwrap_or_default(),
            answered_by: self.ctx.node_id(),
            leader_id: m.current_leader,
            current_term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            members,
            consistent: req.consistent,
            state: format!("{:?}", m.state),
        })
    }

    async fn propose(&self, req: ProposeRequest) -> Result<ProposeReply, NodeError> {
        let command: Command = serde_json::from_slice(&req.command)
            .map_err(|e| NodeError::Invalid(format!("not a stillpoint command: {e}")))?;
        if !command.proposable_by_clients() {
            return Err(NodeError::Refused(
                "this command is proposed only by the cluster itself (a node is deregistered by `stillpoint cluster remove`), not through Propose".into(),
            ));
        }
        let (response, log_index) = self.ctx.propose_local(command).await?;
        let response = serde_json::to_vec(&response)
            .map_err(|e| NodeError::Raft(format!("cannot encode response: {e}")))?;
        Ok(ProposeReply {
            response,
            log_index,
        })
    }

    /// The LDs (query `array:NAME`) or the pairs (`pairs:NAME`) of `array`, read live through
    /// this agent's control path to it: what `apply` checks pairs and volumes against, and
    /// where `job watch` reads copy progress.
    async fn live_array(&self, array: &str, pairs: bool) -> Result<Vec<u8>, NodeError> {
        use stillpoint_array::Array;
        let me = &self.ctx.config.name;
        let spec = self
            .ctx
            .config
            .arrays
            .iter()
            .find(|a| a.name == array)
            .ok_or_else(|| {
                NodeError::NotFound(format!(
                    "agent {me} has no control path to array {array} (not in its [[arrays]])"
                ))
            })?;
        let remote = stillpoint_array::RemoteArray::lazy(&spec.endpoint)?;
        let timed_out = || NodeError::Timeout {
            what: format!("reading array {array} at {}", spec.endpoint),
            ms: stillpoint_array::CALL_TIMEOUT.as_millis() as u64,
        };
        let bound = stillpoint_array::CALL_TIMEOUT;
        let json = if pairs {
            let list = tokio::time::timeout(bound, remote.pair_list())
                .await
                .map_err(|_| timed_out())??;
            serde_json::to_vec(&list)
        } else {
            let lds = tokio::time::timeout(bound, remote.ld_list())
                .await
                .map_err(|_| timed_out())??;
            serde_json::to_vec(&lds)
        };
        json.map_err(|e| NodeError::Raft(format!("cannot encode the array's answer: {e}")))
    }

    async fn query(&self, req: QueryRequest) -> Result<QueryReply, NodeError> {
        if let Some(array) = req.what.strip_prefix("array:") {
            return Ok(QueryReply {
                json: self.live_array(array, false).await?,
                applied_index: None,
            });
        }
        if let Some(array) = req.what.strip_prefix("pairs:") {
            return Ok(QueryReply {
                json: self.live_array(array, true).await?,
                applied_index: None,
            });
        }
        if req.consistent {
            self.ensure_linearizable().await?;
        }
        let (json, applied) = match req.what.as_str() {
            "registry" => self.ctx.state.read(|s| serde_json::to_vec(&s.nodes)),
            "inventory" => self.ctx.state.read(|s| serde_json::to_vec(&s.inventory)),
            "state" => self.ctx.state.read(serde_json::to_vec),
            "jobs" => self
                .ctx
                .state
                .read(|s| serde_json::to_vec(&views::job_summaries(&s.jobs))),
            "copies" => self
                .ctx
                .state
                .read(|s| serde_json::to_vec(&views::catalogue(&s.jobs, None))),
            other => match other.split_once(':') {
                Some(("copies", group)) => self.ctx.state.read(|s| {
                    serde_json::to_vec(&views::catalogue(&s.jobs, Some(group)))
                }),
                Some(("job", id)) => {
                    let id: u64 = id.parse().map_err(|_| {
                        NodeError::Invalid(format!("query {other:?}: {id:?} is not a job id"))
                    })?;
                    self.ctx
                        .state
                        .read(|s| s.jobs.jobs.get(&id).map(serde_json::to_vec))
                        .ok_or_else(|| {
                            NodeError::NotFound(format!(
                                "no job {id}: it was never submitted, or it ended and was forgotten (the history keeps settings.jobs_retained_max ended jobs); see `stillpoint job list`"
                            ))
                        })?
                }
                _ => {
                    return Err(NodeError::Invalid(format!(
                        "unknown query {other:?}: expected \"registry\", \"inventory\", \"jobs\", \"job:ID\", \"copies\", \"copies:GROUP\", \"array:NAME\", \"pairs:NAME\" or \"state\""
                    )));
                }
            },
        }
        .map(|j| (j, self.ctx.state.last_applied().map(|l| l.index)))
        .map_err(|e| NodeError::Raft(format!("cannot encode state: {e}")))?;
        Ok(QueryReply {
            json,
            applied_index: applied,
        })
    }
}

/// What an init request should do, given what every first member says about itself.
#[derive(Debug, PartialEq, Eq)]
pub enum InitDecision {
    /// Initialise this agent with the membership (also when another member already did).
    Initialize,
    /// This agent is already initialised in exactly this cluster: nothing to do.
    AlreadyDone,
}

/// Decides an init (pure). `cluster_id` is the id the requested membership yields; an agent
/// already in another cluster, this one's included, is refused.
pub fn decide_init(
    cluster_id: &str,
    own_cluster_id: Option<&str>,
    own_initialized: bool,
    members: &[NodeIdentity],
) -> Result<InitDecision, NodeError> {
    for ident in members {
        if !ident.cluster_id.is_empty() && ident.cluster_id != cluster_id {
            return Err(NodeError::Refused(format!(
                "the agent at {} (node {}) already belongs to cluster {}, not to the cluster {cluster_id} these members make; use `stillpoint cluster add` to grow a cluster",
                ident.address, ident.node_id, ident.cluster_id
            )));
        }
    }
    match (own_initialized, own_cluster_id) {
        (true, Some(mine)) if mine == cluster_id => Ok(InitDecision::AlreadyDone),
        (true, mine) => Err(NodeError::Refused(format!(
            "this agent is already in cluster {}; use `stillpoint cluster add` to grow it",
            mine.unwrap_or("(unknown)")
        ))),
        (false, _) => Ok(InitDecision::Initialize),
    }
}

fn answer<T>(result: Result<T, NodeError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| e.to_status())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn identity(&self, _: Request<Empty>) -> Result<Response<NodeIdentity>, Status> {
        Ok(Response::new(self.identity_message()))
    }

    async fn local_status(&self, _: Request<Empty>) -> Result<Response<LocalStatusReply>, Status> {
        Ok(Response::new(self.local_status()))
    }

    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitReply>, Status> {
        answer(self.init(request.into_inner()).await)
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        answer(self.add_member(request.into_inner()).await)
    }

    async fn promote_member(
        &self,
        request: Request<MemberRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let result = self
            .promote(request.into_inner().node_id)
            .await
            .map(|i| self.membership_reply(i));
        answer(result)
    }

    async fn remove_member(
        &self,
        request: Request<MemberRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        answer(self.remove(request.into_inner().node_id).await)
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        answer(self.status(request.into_inner()).await)
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        answer(self.propose(request.into_inner()).await)
    }

    async fn query(&self, request: Request<QueryRequest>) -> Result<Response<QueryReply>, Status> {
        answer(self.query(request.into_inner()).await)
    }
}
