//! What `sluice up` prints once the fleet is up: where to send requests, with which key, what is local and
//! what is in the cloud, which policy, limits and drills are on, and calls to try.

use sluice_gateway::BoundAddrs;

use super::{
    CLOUD_EMBEDDING_MODEL, CLOUD_MODEL, Cloud, UP_DAILY_BUDGET_USD, UP_REQUESTS_PER_MINUTE,
    UP_TOKENS_PER_MINUTE,
};

/// What the banner says is on and ready.
pub(super) struct Readiness {
    /// The local workers have loaded their models.
    pub(super) worker: bool,
    /// The personal-data model is on.
    pub(super) ner: bool,
    /// The demo key has limits.
    pub(super) limits: bool,
    /// The outage drill is on.
    pub(super) offline: bool,
}

pub(super) fn print_banner(
    bound: &BoundAddrs,
    key: &str,
    key_given: bool,
    workers: &[String],
    (local, embedding): (&str, Option<&str>),
    cloud: &Cloud,
    Readiness {
        worker: ready,
        ner,
        limits,
        offline,
    }: Readiness,
) {
    let base = format!("http://{}/v1", bound.public);
    let cloud_line = match cloud {
        Cloud::OpenAi { base_url } => {
            format!("{CLOUD_MODEL} on the OpenAI API ({base_url}), key from OPENAI_API_KEY")
        }
        Cloud::Simulator { addr } => format!(
            "{CLOUD_MODEL} on the built-in cloud SIMULATOR (http://{addr}/v1): no real cloud is called; \
             set OPENAI_API_KEY to use OpenAI"
        ),
    };
    let key_note = if key_given {
        ""
    } else {
        "  (new for this run; --api-key fixes one)"
    };
    let mut out = String::new();
    out.push_str("\nSluice is up.\n\n");
    out.push_str(&format!("  OpenAI base URL  {base}\n"));
    out.push_str(&format!("  API key          {key}{key_note}\n"));
    // Started here, the embedding model's worker is the last.
    let (chat_workers, embedding_worker) = match (embedding, workers.split_last()) {
        (Some(_), Some((last, rest))) => (rest, Some(last)),
        _ => (workers, None),
    };
    out.push_str(&format!(
        "  Local model      {local} on {} worker(s): {}\n",
        chat_workers.len(),
        chat_workers.join(", ")
    ));
    if !ready {
        out.push_str(
            "                   (not ready yet: requests for it answer 503 until its model is loaded)\n",
        );
    }
    out.push_str(&format!("  Cloud model      {cloud_line}\n"));
    out.push_str(&format!(
        "  Fallback         when the cloud is unavailable or rate-limited, requests for {CLOUD_MODEL} are served \
         by {local} (x-sluice-fallback, x-sluice-substituted-for); a request with x-sluice-fallback: none \
         is refused instead\n"
    ));
    if offline {
        out.push_str(
            "  OFFLINE          outage drill (--offline): every cloud is treated as unreachable and nothing is \
             sent to one; see which requests keep working\n",
        );
    }
    if let (Some(e), Some(w)) = (embedding, embedding_worker) {
        out.push_str(&format!(
            "  Embeddings       {e} on a local worker ({w}; POST /v1/embeddings), and {CLOUD_EMBEDDING_MODEL} in the \
             cloud for text with nothing confidential in it (confidential text asked of it is refused, never \
             embedded by another model: vectors of different models cannot be mixed)\n"
        ));
    }
    out.push_str(&format!(
        "  Virtual model    auto: {local} or {CLOUD_MODEL}, the cheapest expected to answer within 2 s\n"
    ));
    out.push_str(
        "  Policy           a request for gpt-4o-mini whose sensitive data is only names, e-mail addresses \
         and phone numbers goes to the cloud with them replaced by placeholders, put back in the answer \
         (x-sluice-route: redacted-cloud); other confidential and restricted data stay local, served by \
         the local model\n",
    );
    out.push_str(if ner {
        "  Personal data    names, addresses and IDs in prose found by the local personal-data model \
         (a name with a diagnosis, a birth date or an address stays local); --no-ner turns it off\n"
    } else {
        "  Personal data    OFF (--no-ner): names, addresses and health data written as prose are not \
         found, only data with a shape (cards, IBANs, keys, e-mail, phone numbers)\n"
    });
    out.push_str(&if limits {
        format!(
            "  Limits           {UP_REQUESTS_PER_MINUTE} requests and {UP_TOKENS_PER_MINUTE} tokens a minute \
             (x-ratelimit-* headers), a cloud budget of {UP_DAILY_BUDGET_USD:.2} USD a day; once it is spent, \
             cloud-bound requests are served by the local model (x-sluice-rule ends in :over_budget); \
             --no-limits turns them off\n"
        )
    } else {
        "  Limits           OFF (--no-limits)\n".to_owned()
    });
    if let Some(admin) = bound.admin {
        out.push_str(&format!(
            "  Metrics          http://{admin}/metrics   backends: http://{admin}/admin/backends   \
             decisions: http://{admin}/admin/decisions   tenants: http://{admin}/admin/tenants\n"
        ));
    }
    out.push_str(&format!(
        "\nTry it (response headers x-sluice-route, x-sluice-backend and x-sluice-rule say where each went):\n\n  \
         curl -si {base}/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"model\": \"{local}\", \"max_tokens\": 64, \"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of Japan?\"}}]}}'\n\n  \
         curl -si {base}/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"model\": \"{CLOUD_MODEL}\", \"stream\": true, \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n\n  \
         # the name, e-mail address and phone number are replaced before the cloud sees them, and put back \
         in the answer (x-sluice-route: redacted-cloud)\n  \
         curl -si {base}/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"model\": \"{CLOUD_MODEL}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Write a polite reminder to Maria Gonzalez (maria.g@northwind.example, +1 415 555 0132) that invoice 88213 is overdue.\"}}]}}'\n\n  \
         # a card number never leaves: served by the local model (x-sluice-substituted-for: {CLOUD_MODEL})\n  \
         curl -si {base}/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"model\": \"{CLOUD_MODEL}\", \"max_tokens\": 64, \"messages\": [{{\"role\": \"user\", \"content\": \"Charge 4111 1111 1111 1111\"}}]}}'\n\n  \
         # auto: the cheapest backend expected to meet the latency objective (x-sluice-model names it)\n  \
         curl -si {base}/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"model\": \"auto\", \"max_tokens\": 64, \"messages\": [{{\"role\": \"user\", \"content\": \"Name a primary colour.\"}}]}}'\n\n  \
         python3 -c \"from openai import OpenAI; c = OpenAI(base_url='{base}', api_key='{key}'); \
         print(c.chat.completions.create(model='{local}', max_tokens=64, messages=[{{'role': 'user', 'content': 'What color is the sky on a clear day?'}}]).choices[0].message.content)\"\n\n  \
         # the Anthropic Messages API (Anthropic SDKs: base_url without /v1, the same key)\n  \
         curl -si {base}/messages -H 'x-api-key: {key}' -H 'anthropic-version: 2023-06-01' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"model\": \"{local}\", \"max_tokens\": 64, \"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of Japan?\"}}]}}'\n"
    ));
    if let Some(e) = embedding {
        out.push_str(&format!(
            "\n  # embeddings: a patient's record is embedded locally (the answer's model names the model that \
             made the vectors)\n  \
             curl -s {base}/embeddings -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    \
             -d '{{\"model\": \"{e}\", \"input\": [\"Patient Anna Berg, born 12 May 1961, diagnosed with type 2 diabetes.\", \"Quarterly revenue grew 4%.\"]}}'\n"
        ));
    }
    out.push_str(
        "\nThe demo model runs on this machine's CPU: give max_tokens, or a rambling answer runs until the \
         request timeout.\n\
         Stop with Ctrl-C: requests in flight finish first.\n",
    );
    print!("{out}");
}
