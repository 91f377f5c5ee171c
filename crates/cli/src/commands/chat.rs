//! `sluice chat`: stream one answer from a worker.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, anyhow};
use sluice_proto::v1;
use sluice_proto::v1::worker_client::WorkerClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::Failure;
use crate::args::ChatArgs;

pub async fn run(args: ChatArgs) -> Result<(), Failure> {
    let url = if args.worker.contains("://") {
        args.worker.clone()
    } else {
        format!("http://{}", args.worker)
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| Failure::Usage(format!("--worker {:?} is not an address: {e}", args.worker)))?
        .connect_timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.tls_ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            let cert = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let mut client = WorkerClient::new(channel);

    let model = match args.model {
        Some(m) => m,
        None => {
            let info = client
                .get_info(v1::GetInfoRequest {})
                .await
                .context("GetInfo")?
                .into_inner();
            info.models
                .first()
                .map(|m| m.id.clone())
                .ok_or_else(|| anyhow!("the worker serves no model"))?
        }
    };
    let mut messages = Vec::new();
    if let Some(system) = args.system {
        messages.push(v1::ChatMessage {
            role: "system".into(),
            content: system,
        });
    }
    messages.push(v1::ChatMessage {
        role: "user".into(),
        content: args.prompt,
    });
    let mut request = tonic::Request::new(v1::GenerateRequest {
        request_id: String::new(),
        model,
        messages,
        sampling: Some(v1::SamplingParams {
            temperature: args.temperature,
            top_p: 1.0,
            top_k: 0,
            seed: args.seed,
        }),
        stopping: Some(v1::StoppingParams {
            max_tokens: args.max_tokens,
            stop: args.stop,
            ignore_eos: false,
        }),
    });
    request.set_timeout(Duration::from_secs(args.timeout));
    let mut stream = client.generate(request).await.map_err(status_error)?.into_inner();
    let mut stdout = std::io::stdout();
    while let Some(event) = stream.message().await.map_err(status_error)? {
        match event.event {
            Some(v1::generate_event::Event::Delta(d)) => {
                let _ = stdout.write_all(d.text.as_bytes());
                let _ = stdout.flush();
            }
            Some(v1::generate_event::Event::Finished(f)) => {
                let _ = writeln!(stdout);
                let reason = v1::FinishReason::try_from(f.finish_reason)
                    .map_or("unknown", |r| r.as_str_name())
                    .trim_start_matches("FINISH_REASON_")
                    .to_lowercase();
                let usage = f.usage.unwrap_or_default();
                let t = f.timings.unwrap_or_default();
                let rate = if t.decode_seconds > 0.0 && usage.completion_tokens > 1 {
                    f64::from(usage.completion_tokens - 1) / t.decode_seconds
                } else {
                    0.0
                };
                eprintln!(
                    "[{reason}] {} prompt + {} completion tokens; first token after {:.2}s; {:.1} tokens/s",
                    usage.prompt_tokens, usage.completion_tokens, t.time_to_first_token_seconds, rate
                );
            }
            Some(v1::generate_event::Event::Started(_)) | None => {}
        }
    }
    Ok(())
}

fn status_error(status: tonic::Status) -> Failure {
    Failure::Runtime(anyhow!(
        "worker answered {:?}: {}",
        status.code(),
        status.message()
    ))
}
