//! `sluice worker` and `sluice chat` as operators use them: flags, config files, exit codes, TLS.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Worker, sluice_bin};

#[expect(clippy::expect_used, reason = "test helper")]
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(sluice_bin())
        .args(args)
        .output()
        .expect("run sluice");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_64_with_a_precise_message() {
    let (code, _, err) = run(&["worker", "--slots", "0", "--check"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("slots: must be between 1 and 256, got 0"), "{err}");

    let (code, _, err) = run(&["worker", "--slots", "many"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--slots"), "{err}");

    let (code, _, err) = run(&["worker", "--device", "tpu", "--check"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("unknown device"), "{err}");

    let (code, _, err) = run(&["worker", "--no-such-flag"]);
    assert_eq!(code, Some(64), "{err}");
}

#[test]
fn config_files_are_checked_with_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("worker.yaml");
    std::fs::write(&bad, "slots: 2\nmax_waiting: 4\nlisten: nowhere\n").expect("write");
    let (code, _, err) = run(&["worker", "--config", bad.to_str().expect("utf8"), "--check"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains(&format!("{}:3: listen:", bad.display())), "{err}");

    std::fs::write(&bad, "slots: 2\ntls:\n  cert: a.pem\n  kee: b.pem\n").expect("write");
    let (code, _, err) = run(&["worker", "--config", bad.to_str().expect("utf8"), "--check"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(":4: tls.kee: unknown field `kee`, expected one of"),
        "{err}"
    );

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "slots: 2\nmax_waiting: 4\nlisten: 127.0.0.1:0\nmetrics_listen: \"off\"\n",
    )
    .expect("write");
    let (code, out, err) = run(&["worker", "--config", good.to_str().expect("utf8"), "--check"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("configuration is valid"));
}

#[test]
fn every_config_file_in_the_repository_is_valid() {
    for path in common::repository_configs("worker") {
        let (code, _, err) = run(&["worker", "--config", path.to_str().expect("utf8"), "--check"]);
        assert_eq!(code, Some(0), "{}: {err}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_an_answer_from_a_worker() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let addr = worker.grpc.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(sluice_bin())
            .args([
                "chat",
                "--worker",
                &addr,
                "--max-tokens",
                "32",
                "What is the capital of Japan?",
            ])
            .output()
            .expect("run sluice chat")
    })
    .await
    .expect("task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Tokyo"), "{stdout}");
    assert!(
        stderr.contains("[stop]") && stderr.contains("completion tokens"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).to_str().expect("utf8").to_owned();
    let worker = common::Worker::start_mutual_tls(dir.path());
    let url = format!("https://localhost:{}", worker.grpc.port());
    let chat = |with_identity: bool| {
        let mut args = vec![
            "chat".to_owned(),
            "--worker".into(),
            url.clone(),
            "--tls-ca".into(),
            p("ca.pem"),
        ];
        if with_identity {
            args.extend([
                "--tls-cert".into(),
                p("client.pem"),
                "--tls-key".into(),
                p("client.key"),
            ]);
        }
        args.extend([
            "--max-tokens".into(),
            "8".into(),
            "--timeout".into(),
            "120".into(),
            "Say hi.".into(),
        ]);
        args
    };
    let run_chat = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(sluice_bin()).args(&args).output().expect("run chat")
        })
    };
    // The worker may still be loading: retry on UNAVAILABLE.
    let until = std::time::Instant::now() + Duration::from_secs(120);
    let ok = loop {
        let out = run_chat(chat(true)).await.expect("task");
        if out.status.success() || std::time::Instant::now() > until {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let refused = run_chat(chat(false)).await.expect("task");
    assert!(
        !refused.status.success(),
        "a client without a certificate must be refused"
    );
}

/// `sluice models pull --ner` fetches the personal-data model's files, checked by SHA-256, converts the
/// model into f32 safetensors that say where they come from and under which licence, prints both paths,
/// and a second pull uses what is there.
#[test]
fn models_pull_ner_fetches_and_converts_the_personal_data_model() {
    let cache = tempfile::tempdir().expect("tempdir");
    let pull = || {
        let out = std::process::Command::new(common::sluice_bin())
            .args(["models", "pull", "--ner", "--cache-dir"])
            .arg(cache.path())
            .output()
            .expect("run sluice models pull --ner");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let printed = pull();
    let paths: Vec<&str> = printed.lines().collect();
    assert_eq!(paths.len(), 2, "{printed}");
    assert!(paths[0].ends_with("rampart-1.4.0.f32.safetensors"), "{printed}");
    assert!(paths[1].ends_with("rampart-1.4.0.tokenizer.json"), "{printed}");
    let weights = std::fs::read(paths[0]).expect("weights");
    // A safetensors file: the length of its JSON header, the header, then the data.
    let n = usize::try_from(u64::from_le_bytes(weights[..8].try_into().expect("8 bytes"))).expect("size");
    let header: serde_json::Value = serde_json::from_slice(&weights[8..8 + n]).expect("header");
    let meta = &header["__metadata__"];
    assert_eq!(
        meta["source_sha256"],
        "9f27d24949b0581701071ea5ef522d77ccd3f50c525cc91eac4d265b0fc2afe5"
    );
    assert!(
        meta["licence"]
            .as_str()
            .expect("licence")
            .contains("National Design Studio")
    );
    let tensors = header.as_object().expect("object").len() - 1;
    assert_eq!(tensors, 103);
    assert_eq!(header["classifier.weight"]["shape"], serde_json::json!([35, 384]));
    assert_eq!(header["classifier.weight"]["dtype"], "F32");
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(paths[1]).expect("tokenizer")).expect("json");
    assert_eq!(tokenizer["model"]["type"], "WordPiece");

    let modified = std::fs::metadata(paths[0])
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(pull(), printed);
    assert_eq!(
        std::fs::metadata(paths[0])
            .and_then(|m| m.modified())
            .expect("mtime"),
        modified,
        "converted again although it was there"
    );
}

/// `scripts/gpu-check` as far as a machine without a GPU allows: the GPU's forward pass (device tensors
/// end to end, the argmax on the device) on the CPU device, held to the CPU engine's greedy tokens, with
/// its figures printed; and `sluice device-check` refusing a CUDA device in a build without CUDA.
#[test]
fn the_gpu_check_runs_the_gpus_forward_pass_on_the_cpu_and_refuses_cuda_without_it() {
    common::ensure_demo_model();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/gpu-check");
    let out = Command::new(script)
        .arg(sluice_bin())
        .envs([
            ("GPU_CHECK_DEVICE", "cpu"),
            ("GPU_CHECK_FORWARD", "tensors"),
            ("GPU_CHECK_STREAMS", "1,2"),
            ("GPU_CHECK_TOKENS", "8"),
            ("GPU_CHECK_STEPS", "16"),
        ])
        .env_remove("LLAMA_BENCH")
        .output()
        .expect("run scripts/gpu-check");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    assert!(text.contains("(Tensors forward pass, F16 KV cache)"), "{text}");
    let agreement = text
        .lines()
        .find_map(|l| l.strip_prefix("greedy tokens: "))
        .expect("an agreement line");
    let numbers: Vec<usize> = agreement
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "{agreement}");
    // Up to 16 positions of each of three prompts (fewer where the CPU's answer ends sooner).
    assert!((33..=48).contains(&numbers[1]), "{agreement}");
    assert!(numbers[0] * 10 >= numbers[1] * 8, "{agreement}");
    assert!(
        text.contains("answer on cpu: \"The capital of Japan is Tokyo."),
        "{text}"
    );
    for line in [
        "prompt: ",
        "decode, 1 stream: ",
        "decode, 2 streams (all tokens over wall time): ",
    ] {
        let rate: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line:?} figure in {text}"));
        assert!(rate > 0.0, "{line}{rate}");
    }
    assert!(
        text.contains("PASS: cpu serves the model as the CPU engine does"),
        "{text}"
    );
    assert!(text.contains("== llama.cpp: not run"), "{text}");

    let (code, _, err) = run(&["device-check", "--device", "cuda:0"]);
    if !cfg!(feature = "cuda") {
        assert_eq!(code, Some(64), "{err}");
        assert!(
            err.contains("cuda:0 needs a build with the `cuda` feature"),
            "{err}"
        );
    }
    let (code, _, err) = run(&["device-check", "--device", "gpu"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("unknown device \"gpu\""), "{err}");
}
