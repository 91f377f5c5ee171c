use candle_core::{Device, Tensor};

use super::choose;
use crate::sampler::{DEVICE_CANDIDATES, Draw, Pick};

/// Distinct logits spread over `[-spread, spread]`, in a scrambled order.
fn logits(vocab: usize, spread: f32, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..vocab)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (state >> 40) as f32 / (1u64 << 24) as f32;
            (r * 2.0 - 1.0) * spread + i as f32 * 1e-6
        })
        .collect()
}

fn draw(inv_temperature: f32, top_k: u32, top_p: f32, uniform: f32) -> Pick {
    Pick::Draw(Draw {
        inv_temperature,
        top_k,
        top_p,
        uniform,
        banned: false,
    })
}

fn device_choice(logits: &[f32], pick: Pick) -> Option<u32> {
    let t = Tensor::from_slice(logits, (1, logits.len()), &Device::Cpu).expect("tensor");
    choose(&t, &[pick], &[]).expect("choose")[0]
}

/// The host's view: the kept tokens in the order the draw walks them, with their weights (f64).
fn kept(logits: &[f32], inv_t: f32, top_k: usize, top_p: f64, sorted: bool) -> Vec<(u32, f64)> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, l| m.max(*l)) as f64 * inv_t as f64;
    let mut all: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u32, (*l as f64 * inv_t as f64 - max).exp()))
        .collect();
    if sorted {
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
    if top_k > 0 {
        all.truncate(top_k);
    }
    let total: f64 = all.iter().map(|c| c.1).sum();
    if top_p < 1.0 {
        let mut cumulative = 0.0;
        let keep = all
            .iter()
            .position(|c| {
                cumulative += c.1 / total;
                cumulative >= top_p
            })
            .map_or(all.len(), |i| i + 1);
        all.truncate(keep);
    }
    all
}

/// Each kept token with a share of at least 1e-4 is what the device draws for the uniform number at the
/// middle of its share (away from the edges, where f32 and f64 sums may disagree).
fn assert_each_share_maps_to_its_token(logits: &[f32], inv_t: f32, top_k: u32, top_p: f32, sorted: bool) {
    let kept = kept(logits, inv_t, top_k as usize, top_p as f64, sorted);
    let total: f64 = kept.iter().map(|c| c.1).sum();
    let mut before = 0.0;
    let mut cases = Vec::new();
    for (token, weight) in &kept {
        if weight / total >= 1e-4 {
            cases.push((*token, ((before + weight / 2.0) / total) as f32));
        }
        before += weight;
    }
    assert!(cases.len() >= 5, "only {} tokens to check", cases.len());
    // At most about 200 of them, spread over the distribution.
    for (token, uniform) in cases.iter().step_by(cases.len().div_ceil(200)) {
        let got = device_choice(logits, draw(inv_t, top_k, top_p, *uniform));
        assert_eq!(got, Some(*token), "uniform {uniform}");
    }
}

#[test]
fn a_draw_from_the_whole_vocabulary_inverts_its_cumulative_distribution() {
    // A vocabulary over three chunks, the last padded, and one of the demo model's size.
    for (vocab, seed) in [(2500, 1), (49152, 2)] {
        let logits = logits(vocab, 6.0, seed);
        assert_each_share_maps_to_its_token(&logits, 1.25, 0, 1.0, false);
    }
    // The ends of the unit interval stay in the vocabulary.
    let logits = logits(2500, 1.0, 3);
    assert_eq!(device_choice(&logits, draw(1.0, 0, 1.0, 0.0)), Some(0));
    let last = device_choice(&logits, draw(1.0, 0, 1.0, 0.999_999_9)).expect("drawn");
    assert!((2400..2500).contains(&last), "{last}");
}

#[test]
fn top_k_and_top_p_draws_walk_the_largest_tokens_as_the_host_does() {
    let logits = logits(5000, 8.0, 4);
    // Top-k alone, top-k with top-p, top-p alone.
    assert_each_share_maps_to_its_token(&logits, 1.0, 40, 1.0, true);
    assert_each_share_maps_to_its_token(&logits, 1.0, 40, 0.8, true);
    let nucleus = kept(&logits, 4.0, 0, 0.9, true).len();
    assert!((20..DEVICE_CANDIDATES).contains(&nucleus), "{nucleus}");
    assert_each_share_maps_to_its_token(&logits, 4.0, 0, 0.9, true);
    // Top-k of one is the argmax.
    let argmax = logits
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, l)| if *l > b.1 { (i, *l) } else { b },
        )
        .0 as u32;
    for uniform in [0.0, 0.5, 0.99] {
        assert_eq!(device_choice(&logits, draw(0.7, 1, 1.0, uniform)), Some(argmax));
    }
}

#[test]
fn a_nucleus_wider_than_the_candidates_is_left_to_the_host() {
    // Nearly flat: top_p 0.95 keeps most of 3000 tokens, far more than the device keeps in order.
    let logits = logits(3000, 0.01, 5);
    assert!(kept(&logits, 1.0, 0, 0.95, true).len() > DEVICE_CANDIDATES);
    assert_eq!(device_choice(&logits, draw(1.0, 0, 0.95, 0.5)), None);
    // The same logits without a nucleus are drawn on the device.
    assert!(device_choice(&logits, draw(1.0, 0, 1.0, 0.5)).is_some());
}

#[test]
fn each_row_gets_what_it_asked_for() {
    let rows: Vec<Vec<f32>> = (0..3).map(|s| logits(1500, 4.0, 10 + s)).collect();
    let flat: Vec<f32> = rows.concat();
    let t = Tensor::from_vec(flat, (3, 1500), &Device::Cpu).expect("tensor");
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, l)| if *l > b.1 { (i, *l) } else { b },
            )
            .0 as u32
    };
    let greedy = Pick::Greedy { banned: false };
    let got = choose(&t, &[Pick::Logits, greedy, draw(1.0, 1, 1.0, 0.3)], &[]).expect("choose");
    assert_eq!(got, vec![None, Some(argmax(&rows[1])), Some(argmax(&rows[2]))]);
    assert_eq!(
        choose(&t, &[Pick::Logits, Pick::Logits, Pick::Logits], &[]).expect("choose"),
        vec![None, None, None]
    );
    // Banned tokens (a request that ignores the end of generation): the rows that ban them never get
    // them, the others still may. Ids beyond the vocabulary are ignored.
    let second = |row: &[f32]| {
        let best = argmax(row);
        let mut rest = row.to_vec();
        rest[best as usize] = f32::NEG_INFINITY;
        argmax(&rest)
    };
    let banned: Vec<u32> = vec![argmax(&rows[0]), argmax(&rows[1]), argmax(&rows[2]), 99_999];
    let Pick::Draw(top_one) = draw(1.0, 1, 1.0, 0.3) else {
        unreachable!()
    };
    let picks = [
        Pick::Greedy { banned: true },
        greedy,
        Pick::Draw(Draw {
            banned: true,
            ..top_one
        }),
    ];
    let got = choose(&t, &picks, &banned).expect("choose");
    assert_eq!(
        got,
        vec![
            Some(second(&rows[0])),
            Some(argmax(&rows[1])),
            Some(second(&rows[2]))
        ]
    );
    // A whole-vocabulary draw at the middle of the banned token's share takes a neighbour instead.
    let row = &rows[0];
    let kept = kept(row, 1.0, 0, 1.0, false);
    let total: f64 = kept.iter().map(|c| c.1).sum();
    let best = argmax(row) as usize;
    let before: f64 = kept[..best].iter().map(|c| c.1).sum();
    let uniform = ((before + kept[best].1 / 2.0) / total) as f32;
    let Pick::Draw(whole) = draw(1.0, 0, 1.0, uniform) else {
        unreachable!()
    };
    assert_eq!(device_choice(row, Pick::Draw(whole)), Some(best as u32));
    let t0 = Tensor::from_slice(row.as_slice(), (1, row.len()), &Device::Cpu).expect("tensor");
    let barred = Pick::Draw(Draw {
        banned: true,
        ..whole
    });
    let got = choose(&t0, &[barred], &banned).expect("choose")[0].expect("drawn");
    assert_ne!(got, best as u32);
    assert!(got.abs_diff(best as u32) < 100, "{got} against {best}");
}
