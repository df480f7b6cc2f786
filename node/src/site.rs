//! The site file (`site.toml`): reading it into the coordinator's [`Inventory`], pointing the
//! cluster's verdicts back at its lines, and the `apply` and `inventory show` commands.
//!
//! ```toml
//! [settings]
//! jobs_retained_max = 10000           # ended jobs kept in the replicated history
//!
//! [[arrays]]
//! name = "A1"
//! control_nodes = ["mgmt1"]            # agents with a control path to it ([[arrays]] of node.toml)
//!
//! [[pairs]]
//! name = "p0"
//! mv = "A1:0"                          # ARRAY:LD
//! rv = "A1:1"
//! kind = "ddr"                         # ddr | rdr
//! copy_control = "sync"                # sync | semi_sync | background
//!
//! [[volumes]]
//! node = "db1"                         # the node's name
//! name = "data"                        # the volume's name in that node's [host]
//! ld = "A1:0"
//!
//! [[groups]]
//! name = "payroll"
//! [[groups.members]]
//! pair = "p0"
//! mv = "db1:data"                      # NODE:VOLUME
//! rv = "backup1:rv"
//! quiesce = "unmount"                  # unmount | freeze | hooks_only | postgresql
//! quiesce_ms_max = 30000
//! # with quiesce = "postgresql" (online backup mode; see the README's quiesce section):
//! # [groups.members.postgresql]
//! # host = "/var/run/postgresql"        # host name, address or socket directory (default)
//! # port = 5432                         # default
//! # user = "postgres"                   # default
//! # database = "postgres"               # default
//! # password = "..."                    # optional
//! # data_dir = "pgdata"                 # the data directory, relative to the RV's mount point
//! # wal_archive_dir = "/backup/wal"     # the WAL archive as the backup node reads it
//! [groups.backup_command]
//! node = "backup1"
//! command = ["tar", "cf", "/dev/st0", "/mnt/rv"]
//! timeout_ms = 3600000
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use stillpoint_coordinator::inventory::{
    ArraySpec, BackupCommand, Change, CopyControl, GroupSpec, Inventory, InventoryError, LdRef,
    MemberSpec, PairSpec, QuiesceMethod, ReplicationKind, Settings, VolumeRef, VolumeSpec,
};
use stillpoint_coordinator::postgres::PostgresQuiesce;
use stillpoint_coordinator::{ClusterState, Command, Response};

use crate::client::Client;
use crate::error::NodeError;
use crate::output::{OutputFormat, json, table};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    #[serde(default)]
    settings: Option<SettingsFile>,
    #[serde(default)]
    arrays: Vec<ArraySpec>,
    #[serde(default)]
    pairs: Vec<PairFile>,
    #[serde(default)]
    volumes: Vec<VolumeFile>,
    #[serde(default)]
    groups: Vec<GroupFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    jobs_retained_max: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PairFile {
    name: String,
    mv: String,
    rv: String,
    kind: ReplicationKind,
    #[serde(default = "default_copy_control")]
    copy_control: CopyControl,
}

fn default_copy_control() -> CopyControl {
    CopyControl::Sync
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeFile {
    node: String,
    name: String,
    ld: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    name: String,
    members: Vec<MemberFile>,
    backup_command: Option<BackupCommand>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberFile {
    pair: String,
    mv: String,
    rv: String,
    quiesce: MethodName,
    quiesce_ms_max: u64,
    #[serde(default)]
    postgresql: Option<PostgresFile>,
}

/// A member's `quiesce` as written; `postgresql` takes its settings from the member's
/// `[groups.members.postgresql]` table.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum MethodName {
    Unmount,
    Freeze,
    HooksOnly,
    Postgresql,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresFile {
    #[serde(default = "default_pg_host")]
    host: String,
    #[serde(default = "default_pg_port")]
    port: u16,
    #[serde(default = "default_pg_name")]
    user: String,
    #[serde(default = "default_pg_name")]
    database: String,
    password: Option<String>,
    data_dir: String,
    wal_archive_dir: String,
}

fn default_pg_host() -> String {
    "/var/run/postgresql".into()
}

fn default_pg_port() -> u16 {
    5432
}

fn default_pg_name() -> String {
    "postgres".into()
}

/// The member's method with its settings, or every problem as `(path suffix, rule)`.
fn method_of(m: &MemberFile) -> Result<QuiesceMethod, Vec<(String, String)>> {
    match (m.quiesce, &m.postgresql) {
        (MethodName::Unmount, None) => Ok(QuiesceMethod::Unmount),
        (MethodName::Freeze, None) => Ok(QuiesceMethod::Freeze),
        (MethodName::HooksOnly, None) => Ok(QuiesceMethod::HooksOnly),
        (MethodName::Postgresql, Some(p)) => {
            let settings = PostgresQuiesce {
                host: p.host.clone(),
                port: p.port,
                user: p.user.clone(),
                database: p.database.clone(),
                password: p.password.clone(),
                data_dir: p.data_dir.clone(),
                wal_archive_dir: p.wal_archive_dir.clone(),
            };
            let problems = settings.problems();
            if problems.is_empty() {
                Ok(QuiesceMethod::Postgresql(Box::new(settings)))
            } else {
                Err(problems
                    .into_iter()
                    .map(|(field, rule)| (format!("postgresql.{field}"), rule))
                    .collect())
            }
        }
        (MethodName::Postgresql, None) => Err(vec![(
            "postgresql".into(),
            "quiesce = \"postgresql\" needs a [groups.members.postgresql] table with at least data_dir and wal_archive_dir".into(),
        )]),
        (_, Some(_)) => Err(vec![(
            "postgresql".into(),
            "a postgresql table is only read with quiesce = \"postgresql\"".into(),
        )]),
    }
}

/// A problem with the site file, as `file:line: what` (line when it can be found).
fn at(file: &Path, text: &str, path: &str, rule: &str) -> String {
    match locate(text, path) {
        Some(line) => format!("{}:{line}: {path}: {rule}", file.display()),
        None => format!("{}: {path}: {rule}", file.display()),
    }
}

fn ld_ref(value: &str) -> Result<LdRef, String> {
    let (array, ld) = value
        .split_once(':')
        .ok_or_else(|| format!("{value:?} is not ARRAY:LD"))?;
    let ld = ld
        .parse()
        .map_err(|_| format!("{value:?}: LD {ld:?} is not a number"))?;
    if array.is_empty() {
        return Err(format!("{value:?} names no array"));
    }
    Ok(LdRef {
        array: array.to_string(),
        ld,
    })
}

fn volume_ref(value: &str) -> Result<VolumeRef, String> {
    match value.split_once(':') {
        Some((node, volume)) if !node.is_empty() && !volume.is_empty() => Ok(VolumeRef {
            node: node.into(),
            volume: volume.into(),
        }),
        _ => Err(format!("{value:?} is not NODE:VOLUME")),
    }
}

/// Reads a site file into an inventory. Errors name the file, the line and what is wrong;
/// every malformed reference is reported, not just the first.
pub fn parse(text: &str, file: &Path) -> Result<Inventory, NodeError> {
    let bad = |message: String| NodeError::Config {
        path: file.to_path_buf(),
        message,
    };
    let site: SiteFile = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        bad(match line {
            Some(line) => format!("line {line}: {}", e.message()),
            None => e.message().to_string(),
        })
    })?;
    let mut problems = Vec::new();
    let mut inv = Inventory {
        settings: Settings {
            jobs_retained_max: site
                .settings
                .and_then(|s| s.jobs_retained_max)
                .unwrap_or(Settings::default().jobs_retained_max),
        },
        ..Inventory::default()
    };
    let mut dup = |kind: &str, name: &str, fresh: bool| {
        if !fresh {
            problems.push(at(
                file,
                text,
                &format!("{kind}.{name}"),
                &format!("{kind} {name:?} is defined twice"),
            ));
        }
    };
    for a in site.arrays {
        let name = a.name.clone();
        dup(
            "arrays",
            &name,
            inv.arrays.insert(name.clone(), a).is_none(),
        );
    }
    let mut refs = Vec::new();
    for p in site.pairs {
        let (mv, rv) = (ld_ref(&p.mv), ld_ref(&p.rv));
        match (mv, rv) {
            (Ok(mv), Ok(rv)) => {
                let spec = PairSpec {
                    name: p.name.clone(),
                    mv,
                    rv,
                    kind: p.kind,
                    copy_control: p.copy_control,
                };
                dup(
                    "pairs",
                    &p.name,
                    inv.pairs.insert(p.name.clone(), spec).is_none(),
                );
            }
            (mv, rv) => {
                for (field, r) in [("mv", mv), ("rv", rv)] {
                    if let Err(e) = r {
                        refs.push((format!("pairs.{}.{field}", p.name), e));
                    }
                }
            }
        }
    }
    for v in site.volumes {
        let key = format!("{}:{}", v.node, v.name);
        match ld_ref(&v.ld) {
            Ok(ld) => {
                let spec = VolumeSpec {
                    node: v.node,
                    volume: v.name,
                    ld,
                };
                dup(
                    "volumes",
                    &key,
                    inv.volumes.insert(key.clone(), spec).is_none(),
                );
            }
            Err(e) => refs.push((format!("volumes.{key}.ld"), e)),
        }
    }
    for g in site.groups {
        let mut members = Vec::new();
        for (i, m) in g.members.into_iter().enumerate() {
            let method = method_of(&m).map_err(|problems| {
                for (field, rule) in problems {
                    refs.push((format!("groups.{}.members[{i}].{field}", g.name), rule));
                }
            });
            match (volume_ref(&m.mv), volume_ref(&m.rv), method) {
                (Ok(mv), Ok(rv), Ok(quiesce)) => members.push(MemberSpec {
                    pair: m.pair,
                    mv,
                    rv,
                    quiesce,
                    quiesce_ms_max: m.quiesce_ms_max,
                }),
                (mv, rv, _) => {
                    for (field, r) in [("mv", mv), ("rv", rv)] {
                        if let Err(e) = r {
                            refs.push((format!("groups.{}.members[{i}].{field}", g.name), e));
                        }
                    }
                }
            }
        }
        let spec = GroupSpec {
            name: g.name.clone(),
            members,
            backup_command: g.backup_command,
        };
        dup(
            "groups",
            &g.name,
            inv.groups.insert(g.name.clone(), spec).is_none(),
        );
    }
    problems.extend(refs.iter().map(|(path, e)| at(file, text, path, e)));
    if problems.is_empty() {
        Ok(inv)
    } else {
        Err(bad(problems.join("\n")))
    }
}

/// The 1-based line of the site file that `path` (as the coordinator names values:
/// `pairs.p0.rv`, `volumes.db1:data.ld`, `groups.g.members[1].mv`) refers to: the field's own
/// line when it is written, else the line of the entry's `name`.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let key_of = |line: &str| -> Option<(String, String)> {
        let (k, v) = line.split_once('=')?;
        Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
    };
    // The blocks `[[kind]]` opens: up to the next `[[kind]]` or a table not inside it.
    let blocks = |kind: &str| -> Vec<(usize, usize)> {
        let header = format!("[[{kind}]]");
        let inside =
            |t: &str| t.starts_with(&format!("[[{kind}.")) || t.starts_with(&format!("[{kind}."));
        let starts: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].trim() == header)
            .collect();
        starts
            .iter()
            .map(|&s| {
                let end = (s + 1..lines.len())
                    .find(|&i| {
                        let t = lines[i].trim();
                        t == header || (t.starts_with('[') && !inside(t))
                    })
                    .unwrap_or(lines.len());
                (s, end)
            })
            .collect()
    };
    let find_key = |(s, e): (usize, usize), key: &str| -> Option<usize> {
        (s..e).find(|&i| key_of(lines[i]).is_some_and(|(k, _)| k == key))
    };
    let has = |(s, e): (usize, usize), key: &str, value: &str| {
        (s..e).any(|i| key_of(lines[i]).is_some_and(|(k, v)| k == key && v == value))
    };
    let (kind, rest) = path.split_once('.')?;
    // Entry names hold no '.' (volume keys hold a ':'), so the next '.' ends the entry.
    let (entry, field) = rest.split_once('.').unwrap_or((rest, ""));
    let block = match kind {
        "volumes" => {
            let (node, name) = entry.split_once(':')?;
            blocks("volumes")
                .into_iter()
                .find(|b| has(*b, "node", node) && has(*b, "name", name))?
        }
        "arrays" | "pairs" | "groups" => {
            blocks(kind).into_iter().find(|b| has(*b, "name", entry))?
        }
        "settings" => {
            let s = lines.iter().position(|l| l.trim() == "[settings]")?;
            return find_key((s, lines.len()), entry)
                .map(|i| i + 1)
                .or(Some(s + 1));
        }
        _ => return None,
    };
    let name_line = find_key(block, "name").unwrap_or(block.0);
    if let Some(member) = field.strip_prefix("members[") {
        let (index, field) = member.split_once(']')?;
        let index: usize = index.parse().ok()?;
        let field = field.trim_start_matches('.');
        let members: Vec<usize> = (block.0..block.1)
            .filter(|&i| lines[i].trim() == "[[groups.members]]")
            .collect();
        let start = *members.get(index)?;
        let end = members.get(index + 1).copied().unwrap_or(block.1);
        let end = (start + 1..end)
            .find(|&i| lines[i].trim().starts_with('['))
            .unwrap_or(end);
        return Some(find_key((start, end), field).unwrap_or(start) + 1);
    }
    if let Some(sub) = field.strip_prefix("backup_command.") {
        let s = (block.0..block.1).find(|&i| lines[i].trim() == "[groups.backup_command]")?;
        return Some(find_key((s, block.1), sub).unwrap_or(s) + 1);
    }
    Some(find_key(block, field).unwrap_or(name_line) + 1)
}

fn describe_invalid(file: &Path, text: &str, errors: &[InventoryError]) -> String {
    errors
        .iter()
        .map(|e| at(file, text, &e.path, &e.rule))
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_changes(changes: &[Change], output: OutputFormat, dry_run: bool) {
    if output == OutputFormat::Json {
        println!("{}", json(&changes));
        return;
    }
    if changes.is_empty() {
        println!("nothing to change: the inventory is already in force");
        return;
    }
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| vec![c.verb.clone(), c.what.clone()])
        .collect();
    print!("{}", table(&["CHANGE", "WHAT"], &rows));
    if dry_run {
        println!("(dry run: nothing applied)");
    }
}

/// Who is asking, as the client says (`$USER`): recorded with what they did. Not authenticated
/// until the cluster has TLS and roles.
pub fn operator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

/// One view of the replicated state (`registry`, `inventory`), read with a quorum's
/// confirmation. Never the whole state: it carries the job history.
async fn query<T: serde::de::DeserializeOwned>(
    client: &Client,
    what: &str,
) -> Result<T, NodeError> {
    let reply = client
        .on_leader("query", |mut c| async move {
            c.query(stillpoint_proto::cluster::QueryRequest {
                what: what.into(),
                consistent: true,
            })
            .await
        })
        .await?;
    serde_json::from_slice(&reply.json)
        .map_err(|e| NodeError::Invalid(format!("agent sent an undecodable {what}: {e}")))
}

/// The registry and inventory, which is all validating an inventory needs.
pub(crate) async fn read_site(client: &Client) -> Result<ClusterState, NodeError> {
    Ok(ClusterState {
        nodes: query(client, "registry").await?,
        inventory: query(client, "inventory").await?,
        ..ClusterState::default()
    })
}

/// `stillpoint apply -f FILE [--dry-run] [--prune]`.
pub async fn run_apply(
    client: &Client,
    output: OutputFormat,
    file: &PathBuf,
    dry_run: bool,
    prune: bool,
) -> Result<(), NodeError> {
    let changes = apply_file(client, file, dry_run, prune).await?;
    print_changes(&changes, output, dry_run);
    Ok(())
}

/// Checks the site file against the cluster's state and the live arrays and, unless
/// `dry_run`, applies it; the changes it makes (or would make).
pub async fn apply_file(
    client: &Client,
    file: &PathBuf,
    dry_run: bool,
    prune: bool,
) -> Result<Vec<Change>, NodeError> {
    let text = std::fs::read_to_string(file).map_err(|e| NodeError::Config {
        path: file.clone(),
        message: format!("cannot read: {e}"),
    })?;
    let inventory = parse(&text, file)?;
    let state = read_site(client).await?;
    let (merged, changes) = state.inventory.merged(&inventory, prune);
    let mut errors = merged.validate(&state);
    if errors.is_empty() {
        let (live, unchecked) = crate::site_live::read_live_arrays(&state, &merged).await;
        for line in unchecked {
            eprintln!("warning: {line}; the array checks the pairs when `group prepare` sets them");
        }
        errors = crate::site_live::pairing_errors(&merged, &live);
    }
    if !errors.is_empty() {
        return Err(NodeError::Invalid(describe_invalid(file, &text, &errors)));
    }
    if dry_run {
        return Ok(changes);
    }
    let command = Command::ApplyInventory {
        inventory,
        prune,
        by: operator(),
        at_ms: crate::agent::now_ms(),
    };
    match client.propose(&command).await?.0 {
        Response::InventoryApplied { changes } => Ok(changes),
        Response::InventoryInvalid { errors } => {
            Err(NodeError::Invalid(describe_invalid(file, &text, &errors)))
        }
        Response::Refused { rule } => Err(NodeError::Refused(rule)),
        other => Err(NodeError::Invalid(format!(
            "unexpected answer to apply: {other:?}"
        ))),
    }
}

/// `stillpoint inventory show`.
pub async fn run_show(client: &Client, output: OutputFormat) -> Result<(), NodeError> {
    let inv: Inventory = query(client, "inventory").await?;
    if output == OutputFormat::Json {
        println!("{}", json(&inv));
        return Ok(());
    }
    let arrays: Vec<Vec<String>> = inv
        .arrays
        .values()
        .map(|a| {
            let nodes: Vec<&str> = a.control_nodes.iter().map(String::as_str).collect();
            vec![a.name.clone(), nodes.join(",")]
        })
        .collect();
    print!("{}", table(&["ARRAY", "CONTROL NODES"], &arrays));
    let pairs: Vec<Vec<String>> = inv
        .pairs
        .values()
        .map(|p| {
            vec![
                p.name.clone(),
                p.mv.to_string(),
                p.rv.to_string(),
                format!("{:?}", p.kind).to_lowercase(),
                format!("{:?}", p.copy_control).to_lowercase(),
            ]
        })
        .collect();
    println!();
    print!("{}", table(&["PAIR", "MV", "RV", "KIND", "COPY"], &pairs));
    let volumes: Vec<Vec<String>> = inv
        .volumes
        .values()
        .map(|v| vec![v.node.clone(), v.volume.clone(), v.ld.to_string()])
        .collect();
    println!();
    print!("{}", table(&["NODE", "VOLUME", "LD"], &volumes));
    let members: Vec<Vec<String>> = inv
        .groups
        .values()
        .flat_map(|g| {
            g.members.iter().map(|m| {
                vec![
                    g.name.clone(),
                    m.pair.clone(),
                    m.mv.to_string(),
                    m.rv.to_string(),
                    format!("{:?}", m.quiesce).to_lowercase(),
                    m.quiesce_ms_max.to_string(),
                ]
            })
        })
        .collect();
    println!();
    print!(
        "{}",
        table(
            &["GROUP", "PAIR", "MV", "RV", "QUIESCE", "QUIESCE MS MAX"],
            &members
        )
    );
    println!(
        "settings: jobs_retained_max = {}",
        inv.settings.jobs_retained_max
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = r#"
[settings]
jobs_retained_max = 500

[[arrays]]
name = "A1"
control_nodes = ["mgmt1"]

[[pairs]]
name = "p0"
mv = "A1:0"
rv = "A1:1"
kind = "ddr"

[[volumes]]
node = "db1"
name = "data"
ld = "A1:0"

[[volumes]]
node = "backup1"
name = "rv"
ld = "A1:1"

[[groups]]
name = "payroll"
[[groups.members]]
pair = "p0"
mv = "db1:data"
rv = "backup1:rv"
quiesce = "freeze"
quiesce_ms_max = 10000
[groups.backup_command]
node = "backup1"
command = ["tar", "cf", "/dev/null", "/mnt/rv"]
timeout_ms = 60000
"#;

    fn file() -> PathBuf {
        PathBuf::from("/etc/stillpoint/site.toml")
    }

    #[test]
    fn a_site_file_reads_into_the_inventory() {
        let inv = parse(SITE, &file()).unwrap();
        assert_eq!(inv.settings.jobs_retained_max, 500);
        assert_eq!(inv.pairs["p0"].rv.to_string(), "A1:1");
        assert_eq!(inv.volumes["backup1:rv"].ld.ld, 1);
        assert_eq!(inv.groups["payroll"].members[0].mv.to_string(), "db1:data");
        assert_eq!(
            inv.groups["payroll"]
                .backup_command
                .as_ref()
                .unwrap()
                .timeout_ms,
            60_000
        );
    }

    #[test]
    fn an_unknown_field_and_a_malformed_reference_name_their_lines() {
        let e = parse(
            &SITE.replace("kind = \"ddr\"", "kind = \"ddr\"\ncolour = 1"),
            &file(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/etc/stillpoint/site.toml") && e.contains("line 14"),
            "{e}"
        );
        assert!(e.contains("colour"), "{e}");
        let e = parse(
            &SITE.replace("rv = \"backup1:rv\"", "rv = \"backup1\""),
            &file(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "site.toml:30: groups.payroll.members[0].rv: \"backup1\" is not NODE:VOLUME"
            ),
            "{e}"
        );
    }

    #[test]
    fn rule_paths_point_at_the_lines_that_break_them() {
        assert_eq!(locate(SITE, "pairs.p0.rv"), Some(12));
        assert_eq!(
            locate(SITE, "pairs.p0.copy_control"),
            Some(10),
            "absent: the name's line"
        );
        assert_eq!(locate(SITE, "volumes.backup1:rv.ld"), Some(23));
        assert_eq!(locate(SITE, "arrays.A1.control_nodes"), Some(7));
        assert_eq!(
            locate(SITE, "groups.payroll.members[0].quiesce_ms_max"),
            Some(32)
        );
        assert_eq!(locate(SITE, "groups.payroll.backup_command.node"), Some(34));
        assert_eq!(locate(SITE, "settings.jobs_retained_max"), Some(3));
        assert_eq!(locate(SITE, "pairs.p9.rv"), None);
    }

    #[test]
    fn a_postgresql_member_reads_its_settings_and_bad_ones_name_member_and_field() {
        let pg = SITE.replace(
            "quiesce = \"freeze\"\nquiesce_ms_max = 10000\n",
            "quiesce = \"postgresql\"\nquiesce_ms_max = 10000\n[groups.members.postgresql]\nport = 5433\ndata_dir = \"pgdata\"\nwal_archive_dir = \"/backup/wal\"\n",
        );
        let inv = parse(&pg, &file()).unwrap();
        match &inv.groups["payroll"].members[0].quiesce {
            QuiesceMethod::Postgresql(s) => {
                assert_eq!((s.host.as_str(), s.port), ("/var/run/postgresql", 5433));
                assert_eq!(
                    (s.user.as_str(), s.database.as_str()),
                    ("postgres", "postgres")
                );
                assert_eq!(s.data_dir, "pgdata");
                assert_eq!(s.wal_archive_dir, "/backup/wal");
                assert_eq!(s.password, None);
            }
            other => panic!("{other:?}"),
        }
        let e = parse(&pg.replace("/backup/wal", "backup/wal"), &file())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("groups.payroll.members[0].postgresql.wal_archive_dir")
                && e.contains("absolute path"),
            "{e}"
        );
        let e = parse(&SITE.replace("\"freeze\"", "\"postgresql\""), &file())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("groups.payroll.members[0].postgresql") && e.contains("data_dir"),
            "{e}"
        );
    }
}
