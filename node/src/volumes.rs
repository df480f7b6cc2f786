//! The agent's host half: its volumes, backed by the `host` crate, and — for the `sim` backend —
//! block devices that are LDs of a disk array reached over the array's data API.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stillpoint_array::{Array, ArrayError, RemoteArray};
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
        HostError::Device {
            device: self.name(),
            operation: operation.to_string(),
            detail: format!("array {} at {}: {e}", self.array_name, self.endpoint),
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
            .array("size")
            .await?
            .ld_list()
            .await
            .map_err(|e| self.error("size", e))?;
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
        self.array("read")
            .await?
            .read(&self.host, self.ld, offset, len as u64)
            .await
            .map_err(|e| self.error("read", e))
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), HostError> {
        self.array("write")
            .await?
            .write(&self.host, self.ld, offset, data)
            .await
            .map_err(|e| self.error("write", e))
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

/// Rules joining `[host]` and `[[arrays]]`: every sim volume names an array this agent knows.
pub fn validate(config: &NodeConfig) -> Result<(), String> {
    let Some(host) = &config.host else {
        return Ok(());
    };
    host.validate("[host]").map_err(|e| e.to_string())?;
    if host.backend != BackendKind::Sim {
        return Ok(());
    }
    for (i, v) in host.volumes.iter().enumerate() {
        let field = format!("host.volumes[{i}].ld");
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

/// Starts the host half of the agent, when `[host]` is configured, on `journal` (the agent's
/// one journal, [`stillpoint_storage::Store::journal`], shared with the step executor). Sim
/// volumes are attached in the background, with a bounded retry, so an array that starts after
/// the agent is fine.
pub async fn start(
    config: &NodeConfig,
    journal: stillpoint_storage::journal::Journal,
) -> Result<Option<Arc<stillpoint_host::Agent>>, NodeError> {
    let Some(host) = config.host.clone() else {
        return Ok(None);
    };
    let engine = match host.backend {
        BackendKind::Linux => Engine::Linux,
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
    Ok(Some(agent))
}
