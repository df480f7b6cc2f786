//! `stillpoint cluster status`: what an operator reads to know the cluster is healthy.

use serde::Serialize;
use stillpoint_proto::cluster::StatusReply;

use crate::output::{OutputFormat, json, table};

/// The JSON form of the status (stable field names for scripts).
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub cluster_id: String,
    pub answered_by: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub consistent: bool,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub address: String,
    pub roles: Vec<String>,
    pub voter: bool,
    pub leader: bool,
    pub state: String,
    pub reachable: bool,
    pub last_applied_index: Option<u64>,
    pub matched_index: Option<u64>,
    pub version: String,
}

impl From<&StatusReply> for StatusView {
    fn from(s: &StatusReply) -> Self {
        StatusView {
            cluster_id: s.cluster_id.clone(),
            answered_by: s.answered_by,
            leader_id: s.leader_id,
            term: s.current_term,
            last_log_index: s.last_log_index,
            last_applied_index: s.last_applied_index,
            consistent: s.consistent,
            members: s
                .members
                .iter()
                .map(|m| {
                    let ident = m.identity.clone().unwrap_or_default();
                    MemberView {
                        id: ident.node_id,
                        name: ident.name,
                        address: ident.address,
                        roles: ident.roles,
                        voter: m.voter,
                        leader: s.leader_id == Some(ident.node_id),
                        state: m.state.clone(),
                        reachable: m.reachable,
                        last_applied_index: m.last_applied_index,
                        matched_index: m.matched_index,
                        version: ident.version,
                    }
                })
                .collect(),
        }
    }
}

/// Renders the status for people or scripts.
pub fn render(reply: &StatusReply, format: OutputFormat) -> String {
    let view = StatusView::from(reply);
    if format == OutputFormat::Json {
        return json(&view);
    }
    let dash = || "-".to_string();
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(dash);
    let mut out = format!(
        "cluster {}  leader {}  term {}  last log {}  applied {}{}\n\n",
        if view.cluster_id.is_empty() {
            "(not initialized)"
        } else {
            &view.cluster_id
        },
        opt(view.leader_id),
        view.term,
        opt(view.last_log_index),
        opt(view.last_applied_index),
        if view.consistent {
            "  (confirmed by a quorum)"
        } else {
            ""
        }
    );
    let rows: Vec<Vec<String>> = view
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                if m.name.is_empty() {
                    "(unregistered)".into()
                } else {
                    m.name.clone()
                },
                m.address.clone(),
                if m.roles.is_empty() {
                    dash()
                } else {
                    m.roles.join(",")
                },
                if m.voter { "voter" } else { "learner" }.into(),
                if m.leader {
                    format!("{} *", m.state)
                } else {
                    m.state.clone()
                },
                if m.reachable { "yes" } else { "NO" }.into(),
                opt(m.last_applied_index),
                if m.version.is_empty() {
                    dash()
                } else {
                    m.version.clone()
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ID",
            "NAME",
            "ADDRESS",
            "ROLES",
            "VOTE",
            "STATE",
            "REACHABLE",
            "APPLIED",
            "VERSION",
        ],
        &rows,
    ));
    out
}
