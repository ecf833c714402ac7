//! Redaction: what is captured passes through here before it is written.
//! Built-in patterns (API keys, bearer tokens, AWS access key ids, e-mail
//! addresses, card numbers that pass the Luhn check) and the alias's own
//! `redact` patterns; every match becomes [`MARK`].

use regex::Regex;
use std::borrow::Cow;
use std::sync::LazyLock;

/// What a redacted match is replaced with.
pub const MARK: &str = "[REDACTED]";

/// The built-in patterns except cards (which need the Luhn check).
static BUILT_IN: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        // OpenAI-style keys (`sk-…`, `sk-proj-…`, Anthropic's `sk-ant-…`)
        // and the gateway's own (`tg-` and 43 base64url characters).
        r"\bsk-[A-Za-z0-9_\-]{16,}",
        r"\btg-[A-Za-z0-9_\-]{32,}",
        // `Bearer <token>` wherever it appears.
        r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{8,}=*",
        // AWS access key ids (long-term and temporary).
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        // E-mail addresses.
        r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
    ]
    .iter()
    .filter_map(|p| Regex::new(p).ok())
    .collect()
});

/// Runs of 13 to 19 digits, optionally split by single spaces or dashes.
static CARD: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\b[0-9](?:[ \-]?[0-9]){12,18}\b").ok());

/// `text` with every built-in and `extra` match replaced by [`MARK`].
pub fn redact<'a>(text: &'a str, extra: &[Regex]) -> Cow<'a, str> {
    let mut s = Cow::Borrowed(text);
    if let Some(card) = CARD.as_ref() {
        if card.is_match(&s) {
            let replaced = card.replace_all(&s, |c: &regex::Captures<'_>| {
                if luhn(&c[0]) {
                    MARK.to_string()
                } else {
                    c[0].to_string()
                }
            });
            s = Cow::Owned(replaced.into_owned());
        }
    }
    for re in BUILT_IN.iter().chain(extra) {
        if re.is_match(&s) {
            let replaced = re.replace_all(&s, MARK).into_owned();
            s = Cow::Owned(replaced);
        }
    }
    s
}

/// Whether the digits of `s` (other characters skipped) pass the Luhn check.
pub fn luhn(s: &str) -> bool {
    let mut sum = 0u32;
    let mut n = 0usize;
    for (i, d) in s
        .bytes()
        .rev()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .enumerate()
    {
        let v = if i % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
        sum += v;
        n += 1;
    }
    n >= 13 && sum.is_multiple_of(10)
}

/// `s` cut to at most `max` bytes (on a character boundary), with a marker
/// saying how much was cut. Returns the text and whether it was cut.
pub fn truncate(s: String, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.len() - end;
    let mut out = s;
    out.truncate(end);
    out.push_str(&format!("…[truncated {cut} bytes]"));
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn built_in_patterns_remove_keys_tokens_emails_and_cards() {
        let t = "key sk-proj-abcdefghijklmnop1234 and Authorization: Bearer abc.def-ghi_jkl \
                 aws AKIAIOSFODNN7EXAMPLE mail jane.doe+x@example.co.uk card 4111 1111 1111 1111 \
                 order 1234567890123 gw tg-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let r = redact(t, &[]);
        assert_eq!(
            r,
            "key [REDACTED] and Authorization: [REDACTED] \
             aws [REDACTED] mail [REDACTED] card [REDACTED] \
             order 1234567890123 gw [REDACTED]"
        );
    }

    #[test]
    fn configured_patterns_apply_after_the_built_in_ones() {
        let extra = [Regex::new(r"ACME-\d{4}").unwrap()];
        assert_eq!(
            redact("ticket ACME-1234 ok", &extra),
            "ticket [REDACTED] ok"
        );
        // Nothing to redact: borrowed, not copied.
        assert!(matches!(redact("plain text", &extra), Cow::Borrowed(_)));
    }

    #[test]
    fn luhn_accepts_valid_card_numbers_only() {
        assert!(luhn("4111111111111111"));
        assert!(luhn("5500-0000-0000-0004"));
        assert!(!luhn("4111111111111112"));
        assert!(!luhn("1234567890123"));
        // Too short to be a card.
        assert!(!luhn("18"));
    }

    #[test]
    fn truncate_cuts_on_a_character_boundary_with_a_marker() {
        assert_eq!(truncate("abc".into(), 3), ("abc".into(), false));
        assert_eq!(
            truncate("ééé".into(), 3),
            ("é…[truncated 4 bytes]".into(), true)
        );
    }

    proptest! {
        #[test]
        fn redaction_never_panics_and_leaves_no_planted_email(
            before in "\\PC{0,40}",
            after in "\\PC{0,40}",
            user in "[a-z]{1,10}",
        ) {
            let planted = format!("{user}@example.com");
            let t = format!("{before} {planted} {after}");
            let r = redact(&t, &[]);
            prop_assert!(!r.contains(&planted), "{} kept in {}", planted, r);
        }

        #[test]
        fn redaction_of_any_text_never_panics(s in "\\PC{0,200}", n in 0usize..300) {
            let r = redact(&s, &[]).into_owned();
            let _ = truncate(r, n);
        }
    }
}
