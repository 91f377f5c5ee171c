//! One scheduler round: every running request's share of a single forward pass, and what each request
//! makes of its result (the next token, the text it adds, the end of the answer).

use std::time::Instant;

use super::{Active, Event, FinishReason, Finished, Round, Scheduler, Shared, Slot, Step, Timings, Usage};
use crate::error::RunError;
use crate::llama::{BatchItem, ForwardPath, Next};
use crate::sampler::Pick;

impl Scheduler {
    /// One round: every running request advances by one step (a prompt chunk or one token), all of them
    /// in a single forward pass. Returns each slot's outcome (`None` for an empty slot).
    pub(super) fn round(&mut self, round: &mut Round) -> Vec<Option<Step>> {
        let shared = self.shared.clone();
        let mut outcomes: Vec<Option<Step>> = self.slots.iter().map(|_| None).collect();
        for (slot, outcome) in self.slots.iter_mut().zip(outcomes.iter_mut()) {
            if let Some(active) = slot.active.as_mut() {
                *outcome = check_alive(active);
            }
        }

        // Plan each live request's share of the pass.
        let chunk = shared.config.prefill_chunk;
        let mut items = Vec::new();
        let mut owners = Vec::new();
        let mut picks = Vec::new();
        // The tensor path chooses tokens where the logits are; the host path always hands them over.
        let on_device = shared.model.forward_path() == ForwardPath::Tensors;
        let (mut prompt_tokens, mut decode_tokens) = (0usize, 0usize);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            let Slot { cache, active } = slot;
            let Some(active) = active.as_mut() else { continue };
            let prompt_len = active.job.prompt.len();
            let (tokens, logits) = if active.prefilled < prompt_len {
                let end = (active.prefilled + chunk).min(prompt_len);
                prompt_tokens += end - active.prefilled;
                (&active.job.prompt[active.prefilled..end], end == prompt_len)
            } else {
                match active.last.as_ref() {
                    Some(last) => {
                        decode_tokens += 1;
                        (std::slice::from_ref(last), true)
                    }
                    None => {
                        outcomes[i] = Some(Step::Done(Some(model_error("no token to continue from".into()))));
                        continue;
                    }
                }
            };
            items.push(BatchItem {
                tokens,
                cache,
                logits,
            });
            owners.push(i);
            picks.push(match on_device && logits {
                true => active.sampler.pick(active.job.ignore_eos),
                false => Pick::Logits,
            });
        }
        if items.is_empty() {
            return outcomes;
        }
        let planned: Vec<usize> = items.iter().map(|item| item.tokens.len()).collect();
        let started = Instant::now();
        let results = shared.model.forward_next(&mut items, &picks);
        drop(items);
        let seconds = started.elapsed().as_secs_f64();
        let total = (prompt_tokens + decode_tokens).max(1) as f64;
        round.prompt_tokens += prompt_tokens as u64;
        round.prompt_seconds += seconds * prompt_tokens as f64 / total;
        round.decode_tokens += decode_tokens as u64;
        round.decode_seconds += seconds * decode_tokens as f64 / total;

        let mut results = match results {
            Ok(results) => results.into_iter(),
            Err(e) => {
                tracing::error!(error = %e, "model execution failed");
                for i in owners {
                    outcomes[i] = Some(Step::Done(Some(model_error(e.clone()))));
                }
                return outcomes;
            }
        };
        for (i, n) in owners.into_iter().zip(planned) {
            let logits = results.next().flatten();
            let Some(active) = self.slots[i].active.as_mut() else {
                continue;
            };
            let prefill = active.prefilled < active.job.prompt.len();
            if prefill {
                active.prefilled += n;
                active.prefill_seconds += seconds * n as f64 / total;
            }
            outcomes[i] = Some(match logits {
                Some(next) => advance(&shared, active, next, round),
                None if prefill => Step::Continue,
                None => Step::Done(Some(model_error("the model returned no logits".into()))),
            });
        }
        outcomes
    }
}

/// Ends a request whose client went away or whose deadline passed.
fn check_alive(active: &Active) -> Option<Step> {
    if active.job.events.is_closed() {
        tracing::debug!(request_id = %active.job.request_id, "cancelled by the client");
        return Some(Step::Done(None));
    }
    if active.job.deadline.is_some_and(|d| d <= Instant::now()) {
        return Some(Step::Done(Some(Event::Failed(RunError::DeadlineExceeded {
            generated: active.generated,
        }))));
    }
    None
}

fn model_error(error: String) -> Event {
    Event::Failed(RunError::Model(error))
}

/// Takes the next token from the logits after a request's last position, and streams what it adds.
fn advance(shared: &Shared, active: &mut Active, next: Next, round: &mut Round) -> Step {
    let model = &shared.model;
    let prompt_len = active.job.prompt.len();
    let banned: &[u32] = if active.job.ignore_eos {
        model.end_of_generation()
    } else {
        &[]
    };
    let token = match next {
        Next::Token(token) => token,
        Next::Logits(logits) => active.sampler.sample(&logits, banned),
    };
    if active.first_token.is_none() {
        active.first_token = Some(Instant::now());
    }

    if model.is_end_of_generation(token) {
        let tail = active.text.finish();
        send_delta(active, tail);
        return finish(active, FinishReason::Stop, None);
    }
    active.generated += 1;
    active.unreported += 1;
    round.generated_tokens += 1;
    active.last = Some(token);
    let bytes = if model.tokenizer.is_special(token) {
        &[][..]
    } else {
        model.tokenizer.token_bytes(token)
    };
    let pushed = active.text.push(bytes);
    if let Some(stop) = pushed.stopped {
        send_delta(active, pushed.text);
        return finish(active, FinishReason::Stop, Some(stop));
    }
    send_delta(active, pushed.text);
    let context_full = prompt_len + active.generated as usize >= model.description.context_length;
    let max_reached = active.job.max_tokens > 0 && active.generated >= active.job.max_tokens;
    if context_full || max_reached {
        let tail = active.text.finish();
        send_delta(active, tail);
        return finish(active, FinishReason::Length, None);
    }
    Step::Continue
}

fn send_delta(active: &mut Active, text: String) {
    if text.is_empty() {
        return;
    }
    let tokens = std::mem::take(&mut active.unreported);
    let _ = active.job.events.send(Event::Delta { text, tokens });
}

fn finish(active: &mut Active, reason: FinishReason, stop_sequence: Option<String>) -> Step {
    let now = Instant::now();
    let arrived = active.job.arrived;
    let first = active.first_token.unwrap_or(now);
    let finished = Finished {
        reason,
        stop_sequence,
        usage: Usage {
            prompt_tokens: active.job.prompt.len() as u32,
            completion_tokens: active.generated,
        },
        timings: Timings {
            queue: active.admitted.duration_since(arrived).as_secs_f64(),
            prefill: active.prefill_seconds,
            decode: now.duration_since(first).as_secs_f64(),
            time_to_first_token: first.duration_since(arrived).as_secs_f64(),
            total: now.duration_since(arrived).as_secs_f64(),
        },
    };
    tracing::debug!(request_id = %active.job.request_id, ?finished, "finished");
    Step::Done(Some(Event::Finished(finished)))
}
