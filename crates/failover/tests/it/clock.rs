//! Deterministic randomness and drifting clocks for the simulated world.

/// SplitMix64: small, deterministic, good enough for fault injection.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo + 1)
        }
    }
    pub(crate) fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.next_u64() % 1000 < u64::from(per_mille)
    }
}

/// A site's monotonic clock: piecewise linear in true time, each piece with
/// a rate within `1 ± max_ppm / 10^6`, continuous, never going back.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    /// `(true start, local reading at start, rate deviation in ppm)`.
    pieces: Vec<(u64, u64, i64)>,
}

impl Clock {
    pub(crate) fn new(
        rng: &mut Rng,
        offset: u64,
        max_ppm: i64,
        extreme: bool,
        change_every: u64,
        horizon: u64,
    ) -> Self {
        let mut pieces = Vec::new();
        let (mut t, mut local) = (0, offset);
        loop {
            let ppm = if extreme {
                if rng.next_u64().is_multiple_of(2) {
                    max_ppm
                } else {
                    -max_ppm
                }
            } else {
                rng.range(0, 2 * max_ppm as u64) as i64 - max_ppm
            };
            pieces.push((t, local, ppm));
            if change_every == 0 || t > horizon {
                break;
            }
            let next = t + rng.range(change_every / 2, change_every * 3 / 2).max(1);
            local = Self::eval((t, local, ppm), next);
            t = next;
        }
        Clock { pieces }
    }

    pub(crate) fn fixed(offset: u64, ppm: i64) -> Self {
        Clock {
            pieces: vec![(0, offset, ppm)],
        }
    }

    fn eval((t0, l0, ppm): (u64, u64, i64), t: u64) -> u64 {
        let dt = i128::from(t - t0);
        l0 + (dt * i128::from(1_000_000 + ppm)).div_euclid(1_000_000) as u64
    }

    fn piece_at(&self, t: u64) -> (u64, u64, i64) {
        let i = self.pieces.partition_point(|p| p.0 <= t);
        self.pieces[i.saturating_sub(1)]
    }

    /// The local reading at true time `t`.
    pub(crate) fn local(&self, t: u64) -> u64 {
        Self::eval(self.piece_at(t), t)
    }

    /// The first true time at which the local reading is at least `x`.
    pub(crate) fn true_at(&self, x: u64) -> u64 {
        let i = self.pieces.partition_point(|p| p.1 <= x);
        let piece = self.pieces[i.saturating_sub(1)];
        let (t0, l0, ppm) = piece;
        if x <= l0 {
            return t0;
        }
        let rate = i128::from(1_000_000 + ppm);
        let mut t = t0 + ((i128::from(x - l0) * 1_000_000) / rate) as u64;
        while Self::eval(piece, t) < x {
            t += 1;
        }
        while t > t0 && Self::eval(piece, t - 1) >= x {
            t -= 1;
        }
        t
    }

    /// The largest rate deviation of any piece, in ppm.
    pub(crate) fn max_abs_ppm(&self) -> i64 {
        self.pieces.iter().map(|p| p.2.abs()).max().unwrap_or(0)
    }
}
