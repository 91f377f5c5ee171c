//! The fleet as a policy sees it: a snapshot ([`FleetView`]) of every backend's models, prices,
//! clearance, readiness, load and observed latency, taken by the gateway before each decision. Values
//! only: no handles to live backends, so a decision can be computed, replayed or explained offline.

use sluice_sensitivity::Level;

/// Where a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// On the organisation's own workers.
    Local,
    /// On a cloud API.
    Cloud,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Cloud => "cloud",
        }
    }
}

/// List prices in USD per million input and output tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

/// What a model does: answer chat completions, or turn text into vectors (`/v1/embeddings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    Chat,
    Embedding,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embedding => "embedding",
        }
    }
}

/// A model a backend serves, as `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    pub id: String,
    pub kind: ModelKind,
    /// List prices in USD per million tokens (cloud models; local models at their busy-time cost).
    pub prices: Option<Prices>,
}

/// A backend's load, summed over its ready members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests this gateway has sent and not yet seen end.
    pub in_flight: u64,
    /// From the workers' own load reports (0 for clouds).
    pub running: u32,
    pub waiting: u32,
    /// Requests the members run at once; 0 when unknown (clouds).
    pub slots: u32,
}

/// One backend as a policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    pub name: String,
    pub route: Route,
    pub clearance: Level,
    pub models: Vec<ModelCard>,
    /// At least one member can take a request now.
    pub ready: bool,
    pub load: Load,
    /// Observed time to first token (mean of the members' moving averages), when measured.
    pub ttft_seconds: Option<f64>,
    /// Observed generation speed after the first token, when measured.
    pub tokens_per_second: Option<f64>,
}

impl BackendView {
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.id == model)
    }

    pub fn prices(&self, model: &str) -> Option<Prices> {
        self.models.iter().find(|m| m.id == model)?.prices
    }
}

/// A snapshot of the fleet, indexed like the gateway's backends (the local pool first, then the clouds
/// in configuration order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetView {
    pub backends: Vec<BackendView>,
    /// The requesting tenant's cloud budget cannot cover this request (the gateway's limits store said
    /// so): a decision that would reach a cloud takes the rule's `over_budget` action instead.
    pub over_budget: bool,
}

impl FleetView {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name == name)
    }
}
