//! `sluice sim-cloud`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sluice_simcloud::{Sim, SimConfig, SimModel};

use super::Failure;

/// The routes and the test controls, shown by `--help`.
const CONTROLS_HELP: &str = "\
Routes (the same models, script, recordings and token counts on each):
  OpenAI     GET /v1/models, POST /v1/chat/completions, POST /v1/embeddings
             (key: Authorization: Bearer KEY)
  Anthropic  POST /v1/messages (key: x-api-key: KEY; anthropic-version header required)
  Azure      POST /openai/deployments/DEPLOYMENT/chat/completions?api-version=V,
             POST /openai/deployments/DEPLOYMENT/embeddings?api-version=V
             (key: api-key: KEY; the deployment is a served model id)

Test controls (unauthenticated; for demos and tests only, as GET /sim/requests shows the keys received):
  GET /sim/requests       the requests received on every route, with their path, oldest first; DELETE
                          clears them
  POST /sim/script        queue outcomes for the next requests, one step each, e.g.
                          {\"steps\": [{\"status\": 429, \"retry_after_seconds\": 1}, {\"hang\": true},
                          {\"stall_after_chunks\": 3}, {\"delay_ms\": 500}, {\"echo\": true}, {}]};
                          echo answers with the last message as received (in 3-byte tokens when
                          streamed, or as every required argument of a tool call); DELETE clears them
  GET /sim/in-flight      chat requests being answered";

/// Most tokens an answer may have; the simulator refuses longer limits in requests too.
const MAX_ANSWER_TOKENS: u32 = 65_536;

/// A stand-in for a cloud API (OpenAI, Anthropic Messages and Azure OpenAI wire formats), for demos, tests
/// and load tests.
#[derive(Debug, clap::Args)]
#[command(after_long_help = CONTROLS_HELP)]
pub struct SimCloudArgs {
    /// Listen address, IP:PORT (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// A model to serve, with its prices in USD per million input and output tokens, e.g.
    /// gpt-4o=2.50:10.00 (repeatable) [default: gpt-4o-mini=0.15:0.60].
    #[arg(long = "model", value_name = "ID=IN:OUT")]
    pub models: Vec<String>,
    /// An embedding model to serve (POST /v1/embeddings), with its price in USD per million input tokens
    /// and the length of its vectors, e.g. text-embedding-3-small=0.02:1536 (repeatable) [default: none].
    #[arg(long = "embedding-model", value_name = "ID=IN:DIMENSIONS")]
    pub embedding_models: Vec<String>,
    /// Milliseconds before the first byte of each answer (the time to first token) [default: 0].
    #[arg(long, value_name = "MS")]
    pub ttft_ms: Option<u64>,
    /// Pace streamed tokens at this rate; 0 sends them as fast as the client reads [default: 0].
    #[arg(long, value_name = "N")]
    pub tokens_per_second: Option<f64>,
    /// Fraction of chat requests (any API) answered with HTTP 500 (code sim_error), 0 to 1 [default: 0].
    #[arg(long, value_name = "P")]
    pub error_rate: Option<f64>,
    /// Answer length in tokens (words) when a request sets no max_completion_tokens or max_tokens (on
    /// /v1/messages, max_tokens only cuts it), 1 to 65536 [default: 16].
    #[arg(long, value_name = "N")]
    pub answer_tokens: Option<u32>,
    /// Require this key: `Authorization: Bearer KEY` on the OpenAI routes, `x-api-key: KEY` on
    /// /v1/messages, `api-key: KEY` on Azure's /openai/deployments routes [default: no key].
    #[arg(long, value_name = "KEY", env = "SLUICE_SIM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seed of the --error-rate draws: the same seed fails the same requests in the same order [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Most requests kept for GET /sim/requests, the oldest dropped first; 0 records none
    /// [default: 1000].
    #[arg(long, value_name = "N")]
    pub record_limit: Option<usize>,
    /// Answer every unscripted chat request with what it received: the last message's text (streamed in
    /// 3-byte tokens), or, when it asks for a tool, that text as every required argument.
    #[arg(long)]
    pub echo: bool,
}

pub async fn run(
    args: SimCloudArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Failure> {
    let listen: SocketAddr = args.listen.parse().map_err(|_| {
        Failure::Usage(format!(
            "--listen: {:?} is not an IP:PORT address, e.g. 127.0.0.1:8090",
            args.listen
        ))
    })?;
    let config = config(args).map_err(Failure::Usage)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().context("cannot read the bound address")?;
    tracing::info!(addr = %bound, "sim-cloud listening");
    sluice_simcloud::serve(listener, Sim::new(config), shutdown)
        .await
        .context("sim-cloud failed")?;
    Ok(())
}

/// Checks the flags and fills in the simulator's defaults.
fn config(args: SimCloudArgs) -> Result<SimConfig, String> {
    let defaults = SimConfig::default();
    let models = if args.models.is_empty() {
        defaults.models
    } else {
        let mut models: Vec<SimModel> = Vec::with_capacity(args.models.len());
        for spec in &args.models {
            let model = parse_model(spec).map_err(|e| format!("--model {spec:?}: {e}"))?;
            if models.iter().any(|m| m.id == model.id) {
                return Err(format!("--model {spec:?}: {:?} is already listed", model.id));
            }
            models.push(model);
        }
        models
    };
    let mut models = models;
    for spec in &args.embedding_models {
        let model = parse_model(spec)
            .and_then(|m| {
                let dimensions = spec
                    .rsplit_once(':')
                    .and_then(|(_, d)| d.trim().parse::<u32>().ok())
                    .filter(|d| (1..=65_536).contains(d))
                    .ok_or("the vector length must be an integer from 1 to 65536")?;
                Ok(SimModel::embedding(m.id, m.input_usd_per_mtok, dimensions))
            })
            .map_err(|e| format!("--embedding-model {spec:?}: {e}"))?;
        if models.iter().any(|m| m.id == model.id) {
            return Err(format!(
                "--embedding-model {spec:?}: {:?} is already listed",
                model.id
            ));
        }
        models.push(model);
    }
    let tokens_per_second = args.tokens_per_second.unwrap_or(defaults.tokens_per_second);
    if !(tokens_per_second == 0.0 || (tokens_per_second.is_finite() && tokens_per_second >= 0.001)) {
        return Err(format!(
            "--tokens-per-second: must be 0 (no pacing) or at least 0.001, got {tokens_per_second}"
        ));
    }
    let error_rate = args.error_rate.unwrap_or(defaults.error_rate);
    if !(0.0..=1.0).contains(&error_rate) {
        return Err(format!("--error-rate: must be between 0 and 1, got {error_rate}"));
    }
    let answer_tokens = args.answer_tokens.unwrap_or(defaults.answer_tokens);
    if !(1..=MAX_ANSWER_TOKENS).contains(&answer_tokens) {
        return Err(format!(
            "--answer-tokens: must be between 1 and {MAX_ANSWER_TOKENS}, got {answer_tokens}"
        ));
    }
    if args
        .api_key
        .as_deref()
        .is_some_and(|key| key.is_empty() || key.contains(char::is_whitespace))
    {
        return Err("--api-key: must be non-empty, without spaces".to_owned());
    }
    Ok(SimConfig {
        models,
        ttft: args.ttft_ms.map_or(defaults.ttft, Duration::from_millis),
        tokens_per_second,
        error_rate,
        answer_tokens,
        api_key: args.api_key,
        seed: args.seed.unwrap_or(defaults.seed),
        record_limit: args.record_limit.unwrap_or(defaults.record_limit),
        echo: args.echo,
    })
}

/// Parses `ID=IN:OUT`, e.g. `gpt-4o=2.50:10.00`.
fn parse_model(spec: &str) -> Result<SimModel, String> {
    const FORM: &str = "expected ID=IN:OUT (prices in USD per million tokens), e.g. gpt-4o=2.50:10.00";
    let (id, prices) = spec.split_once('=').ok_or(FORM)?;
    let (input, output) = prices.split_once(':').ok_or(FORM)?;
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        return Err(format!(
            "model id {id:?} must be 1 to 128 characters of letters, digits and - _ . : /"
        ));
    }
    let price = |which: &str, text: &str| {
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite() && *p >= 0.0)
            .ok_or_else(|| format!("{which} price {text:?} is not a number of at least 0"))
    };
    Ok(SimModel::new(
        id,
        price("input", input)?,
        price("output", output)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> SimCloudArgs {
        use clap::{Args, FromArgMatches};
        let command = SimCloudArgs::augment_args(clap::Command::new("sim-cloud"));
        let matches = command
            .try_get_matches_from(std::iter::once("sim-cloud").chain(flags.iter().copied()))
            .unwrap();
        SimCloudArgs::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn defaults_match_the_simulator() {
        let config = config(args(&[])).unwrap();
        let defaults = SimConfig::default();
        assert_eq!(config.models, vec![SimModel::new("gpt-4o-mini", 0.15, 0.60)]);
        assert_eq!(config.ttft, Duration::ZERO);
        assert_eq!(config.tokens_per_second, 0.0);
        assert_eq!(config.error_rate, 0.0);
        assert_eq!(config.answer_tokens, defaults.answer_tokens);
        assert_eq!(config.seed, defaults.seed);
        assert_eq!(config.record_limit, 1000);
        assert_eq!(args(&[]).listen, "127.0.0.1:8090");
    }

    #[test]
    fn flags_set_the_config() {
        let config = config(args(&[
            "--model=gpt-4o=2.50:10",
            "--model",
            "meta/llama-3:8b=0:0.2",
            "--ttft-ms=250",
            "--tokens-per-second=40",
            "--error-rate=0.1",
            "--answer-tokens=32",
            "--api-key=sk-sim",
            "--seed=9",
            "--record-limit=0",
        ]))
        .unwrap();
        assert_eq!(
            config.models,
            vec![
                SimModel::new("gpt-4o", 2.5, 10.0),
                SimModel::new("meta/llama-3:8b", 0.0, 0.2)
            ]
        );
        assert_eq!(config.ttft, Duration::from_millis(250));
        assert_eq!(config.tokens_per_second, 40.0);
        assert_eq!(config.error_rate, 0.1);
        assert_eq!(config.answer_tokens, 32);
        assert_eq!(config.api_key.as_deref(), Some("sk-sim"));
        assert_eq!(config.seed, 9);
        assert_eq!(config.record_limit, 0);
    }

    #[test]
    fn bad_flags_are_refused() {
        for (flags, message) in [
            (&["--model=gpt-4o"][..], "--model \"gpt-4o\": expected ID=IN:OUT"),
            (&["--model=gpt-4o=1"], "expected ID=IN:OUT"),
            (&["--model==1:2"], "model id \"\" must be"),
            (&["--model=a b=1:2"], "model id \"a b\" must be"),
            (&["--model=m=-1:2"], "input price \"-1\" is not a number"),
            (&["--model=m=1:NaN"], "output price \"NaN\" is not a number"),
            (&["--model=m=1:2", "--model=m=3:4"], "\"m\" is already listed"),
            (&["--tokens-per-second=-1"], "--tokens-per-second: must be 0"),
            (&["--tokens-per-second=inf"], "--tokens-per-second: must be 0"),
            (&["--error-rate=1.5"], "--error-rate: must be between 0 and 1"),
            (&["--error-rate=NaN"], "--error-rate: must be between 0 and 1"),
            (
                &["--answer-tokens=0"],
                "--answer-tokens: must be between 1 and 65536",
            ),
            (&["--api-key="], "--api-key: must be non-empty"),
        ] {
            let error = config(args(flags)).unwrap_err();
            assert!(error.contains(message), "{flags:?}: {error}");
        }
    }

    #[tokio::test]
    async fn a_bad_listen_address_is_a_usage_error() {
        let outcome = run(args(&["--listen=localhost:8090"]), async {}).await;
        match outcome {
            Err(Failure::Usage(message)) => assert!(message.starts_with("--listen: "), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn serves_until_shutdown() {
        let outcome = run(args(&["--listen=127.0.0.1:0"]), async {}).await;
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}
