//! The agent's host half: its volumes, backed by the `host` crate, and — for the `sim` backend —
//! block devices that are LDs of a disk array reached over the array's data API.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stillpoint_array::{Array, ArrayError, RemoteArray};
use stillpoint_host::limits::{LD_IO_RETRY_WINDOW_MS, LD_LOOKUP_RETRY_WINDOW_MS};
use stillpoint_host::{BackendKind, BlockDevice, Engine, HostError, SimBackend, Workload};
use tokio::sync::OnceCell;

use crate::config::{ArrayEndpoint, NodeConfig};
use crate::error::NodeError;

/// Attempts to attach one sim volume's LD before giving up (the array may start after us).
const ATTACH_ATTEMPTS_MAX: u32 = 30;
/// Pause between attach attempts.
const ATTACH_RETRY_MS: u64 = 1_000;

/// An LD of a (software or real) array, as a block device of this host.
pub struct ArrayLdDevice {
    array_name: String,
    endpoint: String,
    ld: u32,
    /// This host's name, which the array's access list must admit.
    host: String,
    array: OnceCell<RemoteArray>,
}

impl ArrayLdDevice {
    pub fn new(array: &ArrayEndpoint, ld: u32, host: &str) -> Self {
        ArrayLdDevice {
            array_name: array.name.clone(),
            endpoint: array.endpoint.clone(),
            ld,
            host: host.to_string(),
            array: OnceCell::new(),
        }
    }

    async fn array(&self, operation: &str) -> Result<&RemoteArray, HostError> {
        self.array
            .get_or_try_init(|| RemoteArray::connect(&self.endpoint))
            .await
            .map_err(|e| self.error(operation, e))
    }

    fn error(&self, operation: &str, e: ArrayError) -> HostError {
        match e {
            // The array refused by rule: tell the host's file system which kind (a write to a
            // read-only RV is EROFS above the loop device, everything else EIO).
            ArrayError::Refused { rule, detail } => HostError::Refused {
                volume: self.name(),
                rule: if operation == "write" && detail.contains("access ro") {
                    format!("{rule} (read-only)")
                } else {
                    rule.to_string()
                },
                reason: format!("array {}: {detail}", self.array_name),
            },
            e => HostError::Device {
                device: self.name(),
                operation: operation.to_string(),
                detail: format!("array {} at {}: {e}", self.array_name, self.endpoint),
            },
        }
    }

    /// Runs one data-API call with bounded retries: an array that did not answer
    /// (unreachable, outcome unknown — a write of the same bytes at the same place is safe to
    /// repeat), or that could not reach the remote array a write's copy-before-write needs
    /// (the RDR link down: the link may be back in a moment), is asked again after a doubling
    /// pause (capped) for up to `window_ms` ([`LD_IO_RETRY_WINDOW_MS`] for reads and writes,
    /// [`LD_LOOKUP_RETRY_WINDOW_MS`] for listing LDs, which attaching and rescans do); a refusal
    /// or bad input is returned at once. Each call carries the client's own timeout
    /// ([`stillpoint_array::CALL_TIMEOUT`]).
    async fn with_retries<T, F, Fut>(
        &self,
        operation: &str,
        window_ms: u64,
        call: F,
    ) -> Result<T, HostError>
    where
        F: Fn(RemoteArray) -> Fut,
        Fut: std::future::Future<Output = Result<T, ArrayError>>,
    {
        use stillpoint_host::limits::{LD_IO_RETRY_MS, LD_IO_RETRY_PAUSE_MS_MAX};
        let give_up_at = tokio::time::Instant::now() + Duration::from_millis(window_ms);
        let mut pause = Duration::from_millis(LD_IO_RETRY_MS);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let again = tokio::time::Instant::now() + pause < give_up_at;
            let result = match self.array(operation).await {
                Ok(a) => call(a.clone()).await,
                Err(e) if again => {
                    tracing::debug!(ld = %self.name(), error = %e, attempt, "array not reached; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(LD_IO_RETRY_PAUSE_MS_MAX));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(
                    e @ (ArrayError::Unreachable { .. }
                    | ArrayError::PeerUnreachable { .. }
                    | ArrayError::OutcomeUnknown { .. }
                    | ArrayError::Timeout { .. }),
                ) if again => {
                    tracing::debug!(ld = %self.name(), error = %e, attempt, "array call not answered; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(LD_IO_RETRY_PAUSE_MS_MAX));
                }
                Err(e) => return Err(self.error(operation, e)),
            }
        }
    }
}

#[async_trait]
impl BlockDevice for ArrayLdDevice {
    fn name(&self) -> String {
        format!("{}/{}", self.array_name, self.ld)
    }

    async fn capacity_bytes(&self) -> Result<u64, HostError> {
        let lds = self
            .with_retries("size", LD_LOOKUP_RETRY_WINDOW_MS, |a| async move {
                a.ld_list().await
            })
            .await?;
        lds.iter()
            .find(|l| l.number == self.ld)
            .map(|l| l.capacity_bytes)
            .ok_or_else(|| HostError::Device {
                device: self.name(),
                operation: "size".into(),
                detail: format!("array {} has no LD {}", self.array_name, self.ld),
            })
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, HostError> {
        let (host, ld) = (self.host.as_str(), self.ld);
        self.with_retries("read", LD_IO_RETRY_WINDOW_MS, |a| async move {
            a.read(host, ld, offset, len as u64).await
        })
        .await
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), HostError> {
        let (host, ld) = (self.host.as_str(), self.ld);
        self.with_retries("write", LD_IO_RETRY_WINDOW_MS, |a| async move {
            a.write(host, ld, offset, data).await
        })
        .await
    }
}

/// The LDs of the arrays this agent's linux volumes name that are visible to it (their access
/// list admits the node's name, or `*`), for [`stillpoint_host::LdAttachment`].
pub struct ArrayLdSource {
    /// (array endpoint, the array's client for listing).
    arrays: Vec<ArrayEndpoint>,
    host: String,
    /// One device per LD, kept so its gRPC channel stays warm across rescans.
    devices: std::sync::Mutex<std::collections::BTreeMap<String, Arc<ArrayLdDevice>>>,
}

impl ArrayLdSource {
    pub fn new(arrays: Vec<ArrayEndpoint>, host: &str) -> ArrayLdSource {
        ArrayLdSource {
            arrays,
            host: host.to_string(),
            devices: Default::default(),
        }
    }
}

#[async_trait]
impl stillpoint_host::LdSource for ArrayLdSource {
    async fn visible(&self) -> Result<Vec<stillpoint_host::VisibleLd>, HostError> {
        let mut out = Vec::new();
        for a in &self.arrays {
            let lister = ArrayLdDevice::new(a, u32::MAX, &self.host);
            let lds = lister
                .with_retries("list LDs", LD_LOOKUP_RETRY_WINDOW_MS, |r| async move {
                    r.ld_list().await
                })
                .await?;
            for l in lds {
                if !l.hosts.iter().any(|h| h == "*" || *h == self.host) {
                    continue;
                }
                let name = format!("{}/{}", a.name, l.number);
                let device = self
                    .devices
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(ArrayLdDevice::new(a, l.number, &self.host)))
                    .clone();
                out.push(stillpoint_host::VisibleLd {
                    ld: name,
                    capacity_bytes: l.capacity_bytes,
                    device,
                });
            }
        }
        Ok(out)
    }
}

/// Splits a volume's `ld = "ARRAY/NUMBER"`.
pub fn parse_ld(ld: &str) -> Result<(&str, u32), String> {
    let (array, number) = ld
        .split_once('/')
        .ok_or_else(|| format!("{ld:?} is not ARRAY/LD_NUMBER"))?;
    let number = number
        .parse()
        .map_err(|_| format!("{ld:?}: {number:?} is not an LD number"))?;
    Ok((array, number))
}

/// Rules joining `[host]` and `[[arrays]]`: every sim volume, and every linux volume that
/// names an `ld` and no `device`, names an array this agent knows.
pub fn validate(config: &NodeConfig) -> Result<(), String> {
    let Some(host) = &config.host else {
        return Ok(());
    };
    host.validate("[host]").map_err(|e| e.to_string())?;
    for (i, v) in host.volumes.iter().enumerate() {
        let field = format!("host.volumes[{i}].ld");
        if host.backend == BackendKind::Linux && (v.device.is_some() || v.ld.is_none()) {
            continue;
        }
        let ld =
            v.ld.as_deref()
                .ok_or_else(|| format!("{field}: a sim volume needs ld = \"ARRAY/LD_NUMBER\""))?;
        let (array, _) = parse_ld(ld).map_err(|e| format!("{field}: {e}"))?;
        if !config.arrays.iter().any(|a| a.name == array) {
            return Err(format!(
                "{field}: array {array:?} is not in [[arrays]] (known: {:?})",
                config.arrays.iter().map(|a| &a.name).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

/// The arrays whose LDs a linux host attaches: those its volumes name by `ld` without a
/// `device`.
pub(crate) fn attached_arrays(config: &NodeConfig) -> Vec<ArrayEndpoint> {
    let Some(host) = &config.host else {
        return vec![];
    };
    let mut names: Vec<&str> = host
        .volumes
        .iter()
        .filter(|v| v.device.is_none())
        .filter_map(|v| v.ld.as_deref().and_then(|ld| parse_ld(ld).ok()))
        .map(|(array, _)| array)
        .collect();
    names.sort_unstable();
    names.dedup();
    config
        .arrays
        .iter()
        .filter(|a| names.contains(&a.name.as_str()))
        .cloned()
        .collect()
}

/// The host half of an agent: its volumes, and the array LDs it attached (linux).
pub struct HostHalf {
    pub agent: Arc<stillpoint_host::Agent>,
    /// The LD path process this agent uses (linux hosts whose volumes name LDs): it outlives
    /// the agent.
    pub lds: Option<Arc<crate::hba::HbaLink>>,
}

/// Starts the host half of the agent, when `[host]` is configured, on `journal` (the agent's
/// one journal, [`stillpoint_storage::Store::journal`], shared with the step executor). Sim
/// volumes are attached in the background, with a bounded retry, so an array that starts after
/// the agent is fine. A linux host whose volumes name LDs uses the LD path process of its data
/// dir ([`crate::hba`]; started when none runs), which has attached the LDs visible to it
/// (FUSE files under `<data_dir>/lds` with loop devices over them); LDs of an array that did
/// not answer yet are attached by `volume rescan`.
pub async fn start(
    config: &NodeConfig,
    journal: stillpoint_storage::journal::Journal,
) -> Result<Option<HostHalf>, NodeError> {
    let Some(host) = config.host.clone() else {
        return Ok(None);
    };
    let mut lds = None;
    let engine = match host.backend {
        BackendKind::Linux => {
            let arrays = attached_arrays(config);
            if arrays.is_empty() {
                Engine::Linux
            } else {
                let link = crate::hba::HbaLink::start(config).await?;
                lds = Some(link.clone());
                Engine::LinuxLds(link)
            }
        }
        BackendKind::Sim => {
            let sim = SimBackend::for_config(&host);
            for v in &host.volumes {
                let Some((array, ld)) = v.ld.as_deref().and_then(|ld| parse_ld(ld).ok()) else {
                    continue;
                };
                let Some(endpoint) = config.arrays.iter().find(|a| a.name == array) else {
                    continue;
                };
                let device: Arc<dyn BlockDevice> =
                    Arc::new(ArrayLdDevice::new(endpoint, ld, &config.name));
                let (sim, ld_name) = (sim.clone(), v.ld.clone().unwrap_or_default());
                tokio::spawn(async move {
                    for attempt in 1..=ATTACH_ATTEMPTS_MAX {
                        match sim.attach(&ld_name, device.clone()).await {
                            Ok(()) => {
                                tracing::info!(ld = %ld_name, "sim volume attached");
                                return;
                            }
                            Err(e) if attempt == ATTACH_ATTEMPTS_MAX => {
                                tracing::error!(ld = %ld_name, error = %e, "cannot attach the sim volume; giving up");
                            }
                            Err(e) => {
                                tracing::debug!(ld = %ld_name, error = %e, attempt, "attach failed; retrying");
                                tokio::time::sleep(Duration::from_millis(ATTACH_RETRY_MS)).await;
                            }
                        }
                    }
                });
            }
            // The sim applications the volumes' hooks name (`app = "..."`) must exist before
            // the host agent starts, so crash recovery can restart them.
            Workload::register_for(&sim, &host);
            Engine::Sim(sim)
        }
    };
    let agent = stillpoint_host::Agent::start(host, journal, engine).await?;
    Ok(Some(HostHalf { agent, lds }))
}
