//! Helpers of the key store tests: a config with the admin API and a key
//! store, an admin API client, and a chat request with a key.

use super::gateway::{client, Gateway, CONFIG_HEAD};
use serde_json::{json, Value};
use std::time::Duration;

pub const ADMIN_KEY: &str = "tg-admin-key-0123456789";
/// A config key (read-only through the API).
pub const CONFIG_KEY: &str = "tg-config-key-0001";

/// A config with a built-in mock provider, aliases `fast` and `slow`, the
/// admin API on `{PLAIN}`, one config key `cfg-key` in config team
/// `cfg-team`, and `store` as the `key_store:` section (YAML flow map).
/// `extra` is added at the end (e.g. `limits_store`, `state_file`).
pub fn config(store: &str, extra: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}admin_listen: "{{PLAIN}}"
admin_key: "{ADMIN_KEY}"
providers:
  mock: {{ kind: mock, mock: {{ prompt_tokens: 10, completion_tokens: 5 }} }}
models:
  fast: {{ routes: [ {{ provider: mock, model: m1, price: {{ input: 1.0, output: 1.0 }} }} ] }}
  slow: {{ routes: [ {{ provider: mock, model: m2 }} ] }}
teams:
  cfg-team: {{ limits: {{ rpm: 100000 }} }}
keys:
  - {{ name: cfg-key, key: "{CONFIG_KEY}", team: cfg-team }}
key_store: {store}
{extra}"#
    )
}

/// The admin API of one gateway.
pub struct Admin {
    pub base: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn of(gw: &Gateway) -> Admin {
        Admin {
            base: format!("http://{}", gw.plain_addr()),
            http: client(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rq = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.expect("admin request");
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap_or_default();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// Creates a key; returns its secret (asserting 201).
    pub async fn create_key(&self, body: Value) -> String {
        let (s, v) = self.post("/admin/keys", body).await;
        assert_eq!(s, 201, "{v}");
        v["key"].as_str().expect("secret in the answer").to_string()
    }
}

/// A non-streaming chat request to `model` with `key`: status and body.
pub async fn chat(http: &reqwest::Client, gw: &Gateway, key: &str, model: &str) -> (u16, Value) {
    let r = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .timeout(Duration::from_secs(10))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
        .send()
        .await;
    match r {
        Ok(r) => {
            let s = r.status().as_u16();
            let b = r.bytes().await.unwrap_or_default();
            (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}
