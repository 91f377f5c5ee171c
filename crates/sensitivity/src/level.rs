//! Sensitivity levels: `public < internal < confidential < restricted`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How sensitive some text is, or how sensitive the data a backend may receive can be (its clearance).
///
/// Ordered: `Public < Internal < Confidential < Restricted`, so the level of a request is the `max` of its
/// findings' levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Level {
    #[default]
    Public,
    Internal,
    Confidential,
    Restricted,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 4] = [Self::Public, Self::Internal, Self::Confidential, Self::Restricted];

    /// The stable lower-case name (`"restricted"`), as written in configuration and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Internal => "internal",
            Self::Confidential => "confidential",
            Self::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sensitivity level (public, internal, confidential, restricted)")]
pub struct UnknownLevel(pub String);

impl FromStr for Level {
    type Err = UnknownLevel;

    /// Parses a level name, ignoring ASCII case and surrounding white space.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

impl TryFrom<String> for Level {
    type Error = UnknownLevel;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Level> for &'static str {
    fn from(level: Level) -> Self {
        level.as_str()
    }
}
