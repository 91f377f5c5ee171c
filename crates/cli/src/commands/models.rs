//! `sluice models`.

use anyhow::Context;
use sluice_models::{DEMO_MODEL, cache_dir, ensure, model_path, pull};

use super::Failure;
use crate::args::ModelsCommand;

pub async fn run(command: ModelsCommand) -> Result<(), Failure> {
    match command {
        ModelsCommand::Pull {
            cache_dir: dir,
            force,
        } => {
            let dir = dir.unwrap_or_else(cache_dir);
            let path = tokio::task::spawn_blocking(move || {
                if force {
                    pull(&dir, &DEMO_MODEL)
                } else {
                    ensure(&dir, &DEMO_MODEL)
                }
            })
            .await
            .context("fetch task failed")?
            .context("cannot fetch the demo model")?;
            println!("{}", path.display());
        }
        ModelsCommand::Path { cache_dir: dir } => {
            println!(
                "{}",
                model_path(&dir.unwrap_or_else(cache_dir), &DEMO_MODEL).display()
            );
        }
    }
    Ok(())
}
