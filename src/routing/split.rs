//! A/B splits: each caller lands in one variant, always the same one. The
//! caller is the body's `user` when present, else the key's name; the hash
//! is salted with the alias so two experiments split callers independently,
//! and needs no state, so every gateway instance agrees.

use super::plan::Variant;

/// The SplitMix64 finalizer: scrambles a 64-bit value so nearby inputs
/// give unrelated outputs (a hash step, not a random source).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps a 64-bit value to `[0, 1)` using its top 53 bits.
fn to_unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// FNV-1a over `bytes`, then scrambled.
fn hash(alias: &str, caller: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in alias.bytes().chain([0xff]).chain(caller.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// The index of the variant `caller` belongs to.
pub(crate) fn pick(alias: &str, caller: &[u8], variants: &[Variant]) -> Option<usize> {
    if variants.is_empty() {
        return None;
    }
    let u = to_unit(hash(alias, caller));
    Some(
        variants
            .iter()
            .position(|v| u < v.upper)
            .unwrap_or(variants.len() - 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn variants(shares: &[f64]) -> Vec<Variant> {
        let mut upper = 0.0;
        shares
            .iter()
            .enumerate()
            .map(|(i, s)| {
                upper += s;
                Variant {
                    name: Arc::from(format!("v{i}").as_str()),
                    upper,
                    routes: vec![i],
                }
            })
            .collect()
    }

    #[test]
    fn the_same_caller_always_gets_the_same_variant() {
        let v = variants(&[0.5, 0.5]);
        for k in 0..100 {
            let name = format!("key-{k}");
            let first = pick("chat", name.as_bytes(), &v);
            for _ in 0..5 {
                assert_eq!(pick("chat", name.as_bytes(), &v), first);
            }
        }
    }

    #[test]
    fn shares_hold_over_many_callers() {
        let v = variants(&[0.2, 0.3, 0.5]);
        let n = 100_000;
        let mut got = [0u32; 3];
        for k in 0..n {
            let name = format!("team-{}-key-{k}", k % 7);
            if let Some(i) = pick("chat", name.as_bytes(), &v) {
                got[i] += 1;
            }
        }
        for (i, want) in [0.2, 0.3, 0.5].iter().enumerate() {
            let share = f64::from(got[i]) / f64::from(n);
            assert!((share - want).abs() < 0.01, "variant {i}: {share}");
        }
    }

    #[test]
    fn aliases_split_independently() {
        let v = variants(&[0.5, 0.5]);
        let same = (0..1000)
            .filter(|k| {
                let name = format!("key-{k}");
                pick("a", name.as_bytes(), &v) == pick("b", name.as_bytes(), &v)
            })
            .count();
        assert!((400..600).contains(&same), "{same}");
    }
}
