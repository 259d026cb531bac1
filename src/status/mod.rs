//! Node lifecycle: the states a machine goes through from power-on to a joined Kubernetes
//! node. The store persists them; the servers (DHCP, TFTP, HTTP) report the transitions.

pub mod feed;
pub mod metrics;
pub mod page;

use serde::{Deserialize, Serialize};

/// Lifecycle states in the order a healthy install passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    Planned,
    Discovered,
    Pxe,
    Booting,
    ConfigFetched,
    Installing,
    Installed,
    Joined,
    Failed,
}

impl NodeState {
    pub const ALL: [NodeState; 9] = [
        NodeState::Planned,
        NodeState::Discovered,
        NodeState::Pxe,
        NodeState::Booting,
        NodeState::ConfigFetched,
        NodeState::Installing,
        NodeState::Installed,
        NodeState::Joined,
        NodeState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Planned => "planned",
            NodeState::Discovered => "discovered",
            NodeState::Pxe => "pxe",
            NodeState::Booting => "booting",
            NodeState::ConfigFetched => "config-fetched",
            NodeState::Installing => "installing",
            NodeState::Installed => "installed",
            NodeState::Joined => "joined",
            NodeState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NodeState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown node state `{s}`"))
    }
}
