//! The subcommands.

mod chat;
mod models;
mod worker;

use crate::args::Command;

/// How a command failed: bad usage or configuration (exit 64), or at run time (exit 1).
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Worker(args) => worker::run(args).await,
        Command::Models(cmd) => models::run(cmd).await,
        Command::Chat(args) => chat::run(args).await,
    }
}
