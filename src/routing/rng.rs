//! A small per-thread random source for weighted draws and exploration.
//! Not for secrets: only to spread traffic.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The SplitMix64 increment (odd, so the state visits every value).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Scrambles a 64-bit value so nearby inputs give unrelated outputs.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(nanos ^ NEXT.fetch_add(GAMMA, Relaxed))
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// A uniform `u64`.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(GAMMA);
        s.set(x);
        mix(x)
    })
}

/// A uniform `f64` in `[0, 1)`.
pub fn unit() -> f64 {
    to_unit(next_u64())
}

/// Maps a 64-bit value to `[0, 1)` using its top 53 bits.
pub fn to_unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_in_range_and_spread() {
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let u = unit();
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|b| (800..1200).contains(b)),
            "{buckets:?}"
        );
    }
}
