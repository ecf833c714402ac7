//! A mock AWS STS answering `AssumeRoleWithWebIdentity` (a form POST) in
//! STS's XML. It checks the action, version, role ARN and web-identity
//! token, issues fresh credentials on every call (each registered with a
//! [`BedrockMock`] so requests signed with them verify), with an expiry a
//! test can shorten to force refreshes.

use super::bedrock_mock::BedrockMock;
use super::mini_server::{MiniReply, MiniServer};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct StsMock {
    server: MiniServer,
    hits: Arc<AtomicUsize>,
    lifetime_secs: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let dt = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

impl StsMock {
    /// Accepts `token` for `role_arn`; credentials last `lifetime`.
    pub async fn start(
        role_arn: &str,
        token: &str,
        bedrock: BedrockMock,
        lifetime: Duration,
    ) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let lifetime_secs = Arc::new(AtomicU64::new(lifetime.as_secs()));
        let fail = Arc::new(AtomicBool::new(false));
        let (h, l, f) = (hits.clone(), lifetime_secs.clone(), fail.clone());
        let (role, tok) = (role_arn.to_string(), token.to_string());
        let server = MiniServer::start(move |r| {
            let n = h.fetch_add(1, Ordering::SeqCst) + 1;
            if f.load(Ordering::SeqCst) {
                return MiniReply::json(503, "<ErrorResponse><Error><Code>ServiceUnavailable</Code></Error></ErrorResponse>");
            }
            let form = r.form();
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            let problem = if r.method != "POST" {
                Some("method")
            } else if r.header("content-type") != Some("application/x-www-form-urlencoded") {
                Some("content-type")
            } else if get("Action") != Some("AssumeRoleWithWebIdentity") || get("Version") != Some("2011-06-15") {
                Some("action")
            } else if get("RoleArn") != Some(role.as_str()) {
                Some("role")
            } else if get("WebIdentityToken") != Some(tok.as_str()) {
                Some("token")
            } else if get("RoleSessionName").is_none_or(str::is_empty) {
                Some("session")
            } else {
                None
            };
            if let Some(p) = problem {
                let code = if p == "token" { "InvalidIdentityToken" } else { "InvalidParameterValue" };
                return MiniReply::json(400, format!(
                    "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>bad {p}</Message></Error></ErrorResponse>"
                ));
            }
            let id = format!("ASIAMOCK{n:08}");
            let secret = format!("mock-secret-{n}/Xy+z");
            let session = format!("mock-session-token-{n}");
            bedrock.allow_key(&id, &secret, Some(&session));
            let exp = rfc3339(SystemTime::now() + Duration::from_secs(l.load(Ordering::SeqCst)));
            let xml = format!(
                r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <SessionToken>{session}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{exp}</Expiration>
      <AccessKeyId>{id}</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#
            );
            MiniReply::json(200, xml).with_header("content-type", "text/xml")
        })
        .await;
        Self {
            server,
            hits,
            lifetime_secs,
            fail,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Calls answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_lifetime(&self, d: Duration) {
        self.lifetime_secs.store(d.as_secs(), Ordering::SeqCst);
    }

    pub fn set_fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
}
