//! Units priced apart from tokens: images generated (`/v1/images/generations`,
//! its `n`) and characters of speech input (`/v1/audio/speech`, its
//! `input`). Both are read from the admitted request body: they are what
//! the request asked for, known before any answer, so the reservation and
//! the settlement use the same figure.

use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::config::Price;
use serde::Deserialize;
use serde_json::Value;

/// Most images one request may ask for (`n`); more is a 400 naming `n`.
pub const MAX_IMAGES: u64 = 10;

/// The units a request is priced by, besides its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Units {
    pub images: u64,
    pub characters: u64,
    /// Seconds of audio transcribed, read from the answer (`seconds_of`).
    pub seconds: u64,
}

impl Units {
    pub fn is_empty(&self) -> bool {
        self.images == 0 && self.characters == 0 && self.seconds == 0
    }

    /// USD for these units at `p`'s unit prices (0 where a price is not
    /// set). Finite and ≥ 0, like `cost::cost_usd`.
    pub fn cost_usd(&self, p: &Price) -> f64 {
        let price = |x: Option<f64>| x.filter(|x| x.is_finite() && *x > 0.0).unwrap_or(0.0);
        let usd = self.images as f64 * price(p.per_image)
            + self.characters as f64 * price(p.per_million_characters) / 1e6
            + self.seconds as f64 * price(p.per_minute) / 60.0;
        if usd.is_nan() {
            0.0
        } else {
            usd.min(f64::MAX)
        }
    }
}

#[derive(Deserialize)]
struct Fields {
    #[serde(default)]
    n: Option<Value>,
    #[serde(default)]
    input: Option<Value>,
}

/// Checks the fields units are read from: an image request's `n` must be
/// a whole number from 1 to [`MAX_IMAGES`] (absent or `null`: 1).
pub(crate) fn check(ep: Endpoint, body: &[u8]) -> Result<(), GatewayError> {
    if ep == Endpoint::ImageEdits {
        return form_images(body).map(|_| ());
    }
    if ep != Endpoint::ImageGenerations {
        return Ok(());
    }
    let f: Fields = serde_json::from_slice(body).map_err(|e| GatewayError::InvalidRequest {
        message: format!("The request body cannot be read: {e}."),
        param: None,
    })?;
    images(f.n.as_ref()).map(|_| ())
}

fn images(n: Option<&Value>) -> Result<u64, GatewayError> {
    match n {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_IMAGES).contains(n))
            .ok_or_else(|| GatewayError::InvalidRequest {
                message: format!("`n` must be an integer from 1 to {MAX_IMAGES}."),
                param: Some("n"),
            }),
    }
}

/// An image edit's `n` form field: absent, 1 to [`MAX_IMAGES`].
fn form_images(body: &[u8]) -> Result<u64, GatewayError> {
    let doc = crate::form::fields_json(body);
    let n = doc
        .as_ref()
        .and_then(|d| d.get("n"))
        .and_then(Value::as_str);
    match n {
        None => Ok(1),
        Some(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_IMAGES).contains(n))
            .ok_or_else(|| GatewayError::InvalidRequest {
                message: format!("`n` must be an integer from 1 to {MAX_IMAGES}."),
                param: Some("n"),
            }),
    }
}

/// Seconds of audio a transcription's answer says it had: whisper's
/// `verbose_json` `duration`, or `usage: {"type": "duration", "seconds"}`.
/// `None` when the answer carries neither (rounded up to whole seconds).
pub fn seconds_of(doc: &Value) -> Option<u64> {
    let usage = doc.get("usage");
    let from_usage = usage
        .filter(|u| u.get("type").and_then(Value::as_str) == Some("duration"))
        .and_then(|u| u.get("seconds"))
        .and_then(Value::as_f64);
    let secs = from_usage.or_else(|| doc.get("duration").and_then(Value::as_f64))?;
    (secs.is_finite() && secs >= 0.0).then(|| secs.ceil().min(u64::MAX as f64) as u64)
}

/// The units of an admitted request (zero for endpoints without units; a
/// body that does not read counts what could be read).
pub fn of(ep: Endpoint, body: &[u8]) -> Units {
    if ep == Endpoint::ImageEdits {
        return Units {
            images: form_images(body).unwrap_or(MAX_IMAGES),
            ..Units::default()
        };
    }
    if !matches!(ep, Endpoint::ImageGenerations | Endpoint::AudioSpeech) {
        return Units::default();
    }
    let Ok(f) = serde_json::from_slice::<Fields>(body) else {
        return Units::default();
    };
    match ep {
        Endpoint::ImageGenerations => Units {
            // Checked at admission; a shadow copy's invalid `n` counts the most.
            images: images(f.n.as_ref()).unwrap_or(MAX_IMAGES),
            ..Units::default()
        },
        _ => Units {
            characters: f
                .input
                .as_ref()
                .and_then(Value::as_str)
                .map_or(0, |s| s.chars().count() as u64),
            ..Units::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(per_image: Option<f64>, per_million_characters: Option<f64>) -> Price {
        Price {
            input: 0.0,
            cached_input: None,
            output: 0.0,
            per_image,
            per_million_characters,
            per_minute: None,
        }
    }

    #[test]
    fn images_are_n_from_1_to_the_max() {
        let ep = Endpoint::ImageGenerations;
        assert_eq!(of(ep, br#"{"model":"i","prompt":"x"}"#).images, 1);
        assert_eq!(of(ep, br#"{"model":"i","n":null}"#).images, 1);
        assert_eq!(of(ep, br#"{"model":"i","n":10}"#).images, 10);
        assert!(check(ep, br#"{"model":"i","n":10}"#).is_ok());
        for bad in ["0", "11", "-1", "1.5", "\"2\"", "18446744073709551616"] {
            let body = format!(r#"{{"model":"i","n":{bad}}}"#);
            let e = check(ep, body.as_bytes()).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
            assert!(
                matches!(
                    e,
                    GatewayError::InvalidRequest {
                        param: Some("n"),
                        ..
                    }
                ),
                "{bad}"
            );
        }
        // Other endpoints' `n` is not ours to check.
        assert!(check(Endpoint::ChatCompletions, br#"{"n":99}"#).is_ok());
    }

    #[test]
    fn characters_are_counted_not_bytes() {
        let u = of(
            Endpoint::AudioSpeech,
            "{\"model\":\"s\",\"input\":\"héllo ☃\"}".as_bytes(),
        );
        assert_eq!(
            u,
            Units {
                images: 0,
                characters: 7,
                seconds: 0
            }
        );
        assert!(of(Endpoint::Moderations, br#"{"input":"abc"}"#).is_empty());
    }

    #[test]
    fn unit_cost_is_finite_and_zero_without_a_price() {
        let u = Units {
            images: 3,
            characters: 2_000_000,
            seconds: 0,
        };
        assert!((u.cost_usd(&price(Some(0.04), None)) - 0.12).abs() < 1e-12);
        assert!((u.cost_usd(&price(None, Some(15.0))) - 30.0).abs() < 1e-9);
        assert_eq!(u.cost_usd(&price(None, None)), 0.0);
        assert_eq!(u.cost_usd(&price(Some(f64::NAN), Some(-1.0))), 0.0);
        let huge = Units {
            images: u64::MAX,
            characters: u64::MAX,
            seconds: u64::MAX,
        };
        assert!(huge.cost_usd(&price(Some(1e300), Some(1e300))).is_finite());
    }

    #[test]
    fn transcription_seconds_come_from_the_answer() {
        assert_eq!(seconds_of(&serde_json::json!({"duration": 90.2})), Some(91));
        let u = serde_json::json!({"usage": {"type": "duration", "seconds": 3}});
        assert_eq!(seconds_of(&u), Some(3));
        assert_eq!(seconds_of(&serde_json::json!({"text": "x"})), None);
        assert_eq!(seconds_of(&serde_json::json!({"duration": -1})), None);
        let mut p = price(None, None);
        p.per_minute = Some(0.006);
        let u = Units {
            seconds: 90,
            ..Units::default()
        };
        assert!((u.cost_usd(&p) - 0.009).abs() < 1e-12);
    }

    #[test]
    fn an_edit_counts_its_form_n() {
        let form = |n: &str| {
            format!("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--b\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n{n}\r\n--b--")
        };
        assert_eq!(of(Endpoint::ImageEdits, form("4").as_bytes()).images, 4);
        assert!(check(Endpoint::ImageEdits, form("10").as_bytes()).is_ok());
        for bad in ["0", "11", "x", "2.5"] {
            let e = check(Endpoint::ImageEdits, form(bad).as_bytes()).unwrap_err();
            assert!(
                matches!(
                    e,
                    GatewayError::InvalidRequest {
                        param: Some("n"),
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }
}
