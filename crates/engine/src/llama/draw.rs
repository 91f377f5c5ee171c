//! Choosing the next token where the logits are: the argmax for greedy requests, and temperature, top-k and
//! top-p sampling for the others, as candle operations on the model's device, so that on a GPU only token
//! ids cross to the host. Sampling keeps the host sampler's meaning ([`crate::sampler::Sampler::sample`]):
//! the request's seeded generator supplies one uniform number per step, and the device turns it into a
//! token by inverting the cumulative distribution of the kept tokens.
//!
//! Everything is done in rows of at most [`CHUNK`] values, because CUDA's sort in candle sorts a row
//! within one thread block: the cumulative sum of the whole vocabulary is a sum per chunk, then one chunk's
//! own sum; the largest candidates (for top-k and top-p) are kept by sorting chunks and keeping each one's
//! best until one chunk holds them all. A nucleus that reaches past the
//! [`DEVICE_CANDIDATES`](crate::sampler::DEVICE_CANDIDATES) largest tokens is reported instead of drawn, and
//! the host samples that step from the logits.

use candle_core::{D, DType, IndexOp as _, Result, Tensor};

use crate::sampler::{DEVICE_CANDIDATES, Draw, Pick};

/// Columns per row of the chunked operations (candle's CUDA sort works on rows of up to 1024 values).
const CHUNK: usize = 1024;

/// The token chosen on the device for each row of `logits` (`(rows, vocab)`, f32) whose pick is not
/// [`Pick::Logits`]; `None` for the rows the host must sample from their logits (asked for, or a nucleus
/// too wide for the device's candidates). A pick that bans never gets a token of `banned`. One copy to
/// the host for all rows.
pub(super) fn choose(logits: &Tensor, picks: &[Pick], banned: &[u32]) -> Result<Vec<Option<u32>>> {
    let dev = logits.device();
    let one = Tensor::ones(1, DType::F32, dev)?;
    let bans = |pick: &Pick| match pick {
        Pick::Greedy { banned } => *banned,
        Pick::Draw(draw) => draw.banned,
        Pick::Logits => false,
    };
    // The logits with the banned tokens' at -inf, for the rows that ban them.
    let vocab = logits.dim(1)?;
    let banned: Vec<u32> = banned.iter().copied().filter(|t| (*t as usize) < vocab).collect();
    let barred = match !banned.is_empty() && picks.iter().any(bans) {
        true => {
            let bias = Tensor::zeros(vocab, DType::F32, dev)?.index_add(
                &Tensor::new(banned.as_slice(), dev)?,
                &Tensor::full(f32::NEG_INFINITY, banned.len(), dev)?,
                0,
            )?;
            logits.broadcast_add(&bias)?
        }
        false => logits.clone(),
    };
    let argmax = |wanted: bool, of: &Tensor| -> Result<Option<Tensor>> {
        match picks
            .iter()
            .any(|p| matches!(p, Pick::Greedy { banned } if *banned == wanted))
        {
            true => Ok(Some(of.argmax_keepdim(D::Minus1)?.to_dtype(DType::F32)?)),
            false => Ok(None),
        }
    };
    let (plain, barred_argmax) = (argmax(false, logits)?, argmax(true, &barred)?);
    // Per chosen row: the token, and 1 where the choice stands (0: sample on the host).
    let mut parts = Vec::new();
    for (r, pick) in picks.iter().enumerate() {
        let (rows, ids) = match bans(pick) {
            true => (&barred, &barred_argmax),
            false => (logits, &plain),
        };
        match (pick, ids) {
            (Pick::Greedy { .. }, Some(ids)) => parts.push(Tensor::cat(&[ids.i(r)?, one.clone()], 0)?),
            (Pick::Draw(draw), _) => parts.push(sample(&rows.i(r)?, draw)?),
            _ => {}
        }
    }
    if parts.is_empty() {
        return Ok(vec![None; picks.len()]);
    }
    let values = Tensor::cat(&parts, 0)?.to_vec1::<f32>()?;
    let mut values = values.chunks_exact(2);
    Ok(picks
        .iter()
        .map(|pick| match pick {
            Pick::Logits => None,
            _ => values.next().and_then(|v| (v[1] > 0.5).then_some(v[0] as u32)),
        })
        .collect())
}

/// One row's draw: `(token, 1)`, or `(_, 0)` where the nucleus reaches past the candidates.
fn sample(logits: &Tensor, draw: &Draw) -> Result<Tensor> {
    let dev = logits.device();
    let vocab = logits.dim(0)?;
    let scaled = (logits * f64::from(draw.inv_temperature))?;
    let max = scaled.max_keepdim(0)?;
    // Unnormalised probabilities, the largest 1; tokens with -inf logits weigh 0 and are never drawn.
    let weights = scaled.broadcast_sub(&max)?.exp()?;
    let one = Tensor::ones(1, DType::F32, dev)?;
    if draw.top_k == 0 && draw.top_p >= 1.0 {
        return Tensor::cat(&[inverse_cdf(&weights, draw.uniform)?, one], 0);
    }

    let (values, ids) = largest(&weights, DEVICE_CANDIDATES.min(vocab))?;
    let n = match draw.top_k {
        0 => values.dim(0)?,
        k => (k as usize).min(values.dim(0)?),
    };
    let cum = values.narrow(0, 0, n)?.cumsum(0)?;
    // Top-p shares are of the top-k tokens when there is a top-k (as on the host), else of every token.
    let total = match draw.top_k {
        0 => weights.sum_keepdim(0)?,
        _ => cum.narrow(0, n - 1, 1)?,
    };
    let (last, exact) = match draw.top_p < 1.0 {
        true => {
            // The nucleus ends at the first candidate whose cumulative share reaches top_p.
            let short = below(&cum, &(total * f64::from(draw.top_p))?)?;
            let exact = match draw.top_k {
                0 => short.lt(n as f64)?.to_dtype(DType::F32)?,
                _ => one,
            };
            (short.minimum((n - 1) as f64)?, exact)
        }
        false => (Tensor::full((n - 1) as f32, 1, dev)?, one),
    };
    let kept = cum.index_select(&last.to_dtype(DType::U32)?, 0)?;
    let target = (kept * f64::from(draw.uniform))?;
    let at = below(&cum, &target)?.minimum(&last)?;
    let token = ids.index_select(&at.to_dtype(DType::U32)?, 0)?;
    Tensor::cat(&[token, exact], 0)
}

/// How many values of the ascending `cum` lie below `target` (`(1,)`): the index of the first that reaches
/// it. As f32 `(1,)`.
fn below(cum: &Tensor, target: &Tensor) -> Result<Tensor> {
    cum.broadcast_lt(target)?.to_dtype(DType::F32)?.sum_keepdim(0)
}

/// The token where the cumulative weight in vocabulary order first reaches `uniform` times the total:
/// a draw from the whole distribution. As f32 `(1,)`.
fn inverse_cdf(weights: &Tensor, uniform: f32) -> Result<Tensor> {
    let vocab = weights.dim(0)?;
    let rows = vocab.div_ceil(CHUNK);
    let chunks = padded(weights, rows * CHUNK, 0.0)?.reshape((rows, CHUNK))?;
    let sums = chunks.sum(1)?;
    let ends = sums.cumsum(0)?;
    let target = (ends.narrow(0, rows - 1, 1)? * f64::from(uniform))?;
    let row = below(&ends, &target)?.minimum((rows - 1) as f64)?;
    let row_id = row.to_dtype(DType::U32)?;
    let start = (ends.index_select(&row_id, 0)? - sums.index_select(&row_id, 0)?)?;
    let cum = chunks
        .index_select(&row_id, 0)?
        .squeeze(0)?
        .cumsum(0)?
        .broadcast_add(&start)?;
    let column = below(&cum, &target)?.minimum((CHUNK - 1) as f64)?;
    ((row * CHUNK as f64)? + column)?.minimum((vocab - 1) as f64)
}

/// The `m` largest of `values` (`(n,)`, non-negative), in descending order, with their indices (as f32).
/// `m` is at most a quarter of a chunk, so each round of sorting chunks shrinks the field fourfold.
fn largest(values: &Tensor, m: usize) -> Result<(Tensor, Tensor)> {
    let dev = values.device();
    let mut values = values.clone();
    let mut ids = Tensor::arange(0u32, values.dim(0)? as u32, dev)?.to_dtype(DType::F32)?;
    loop {
        let n = values.dim(0)?;
        if n <= CHUNK {
            let order = values
                .unsqueeze(0)?
                .contiguous()?
                .arg_sort_last_dim(false)?
                .squeeze(0)?
                .narrow(0, 0, m.min(n))?
                .contiguous()?;
            return Ok((values.index_select(&order, 0)?, ids.index_select(&order, 0)?));
        }
        let rows = n.div_ceil(CHUNK);
        // Padding weighs 0: never drawn, even where it is kept.
        let chunks = padded(&values, rows * CHUNK, 0.0)?.reshape((rows, CHUNK))?;
        let order = chunks.arg_sort_last_dim(false)?.narrow(1, 0, m)?.contiguous()?;
        values = chunks.gather(&order, 1)?.flatten_all()?;
        ids = padded(&ids, rows * CHUNK, 0.0)?
            .reshape((rows, CHUNK))?
            .gather(&order, 1)?
            .flatten_all()?;
    }
}

/// `values` (`(n,)`, f32) lengthened to `len` with `fill`.
fn padded(values: &Tensor, len: usize, fill: f32) -> Result<Tensor> {
    let n = values.dim(0)?;
    match n < len {
        true => Tensor::cat(&[values, &Tensor::full(fill, len - n, values.device())?], 0),
        false => Ok(values.clone()),
    }
}

#[cfg(test)]
mod tests;
