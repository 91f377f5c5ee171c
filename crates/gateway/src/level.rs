//! Sensitivity levels and backend clearances: `public < internal < confidential < restricted`.

use std::fmt;
use std::str::FromStr;

/// How sensitive a request is, or how sensitive the data a backend may receive can be (its clearance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Public,
    Internal,
    Confidential,
    Restricted,
}

impl Level {
    pub const ALL: [Level; 4] = [Self::Public, Self::Internal, Self::Confidential, Self::Restricted];

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

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_and_parse() {
        assert!(Level::Public < Level::Internal);
        assert!(Level::Confidential < Level::Restricted);
        assert_eq!("Restricted".parse::<Level>(), Ok(Level::Restricted));
        assert!("secret".parse::<Level>().is_err());
        for l in Level::ALL {
            assert_eq!(l.as_str().parse::<Level>(), Ok(l));
        }
    }
}
