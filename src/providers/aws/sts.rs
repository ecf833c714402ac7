//! STS `AssumeRoleWithWebIdentity`: the form body we POST and the XML answer
//! we read. The call is unsigned: the web-identity token is the proof.

use super::credentials::Credentials;
use crate::providers::secret::Secret;
use aws_smithy_types::date_time::{DateTime, Format};
use std::time::SystemTime;

/// The STS API version of the query protocol.
const VERSION: &str = "2011-06-15";

/// The global STS endpoint (regional ones are `https://sts.<region>.amazonaws.com`).
pub const DEFAULT_ENDPOINT: &str = "https://sts.amazonaws.com";

/// The form body of an `AssumeRoleWithWebIdentity` call.
pub fn request_body(
    role_arn: &str,
    session_name: &str,
    token: &Secret,
    duration_secs: u64,
) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", VERSION)
        .append_pair("RoleArn", role_arn)
        .append_pair("RoleSessionName", session_name)
        .append_pair("WebIdentityToken", token.expose())
        .append_pair("DurationSeconds", &duration_secs.to_string())
        .finish()
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Reads STS's answer. An error answer gives its `Code` (never its
/// `Message`, which may quote the token's claims) and status.
pub fn parse_response(status: u16, body: &[u8]) -> Result<Credentials, String> {
    let xml = std::str::from_utf8(body).map_err(|_| format!("status {status}, body not UTF-8"))?;
    let doc =
        roxmltree::Document::parse(xml).map_err(|_| format!("status {status}, body is not XML"))?;
    let root = doc.root_element();
    if !(200..300).contains(&status) || root.tag_name().name() == "ErrorResponse" {
        let code = child(root, "Error")
            .and_then(|e| text(e, "Code"))
            .unwrap_or_else(|| "unknown".into());
        return Err(format!("status {status}, error {code}"));
    }
    let creds = child(root, "AssumeRoleWithWebIdentityResult")
        .and_then(|r| child(r, "Credentials"))
        .ok_or_else(|| "answer has no Credentials".to_string())?;
    let field = |name: &str| text(creds, name).ok_or_else(|| format!("answer has no {name}"));
    let expiration = field("Expiration")?;
    let expires = DateTime::from_str(&expiration, Format::DateTime)
        .ok()
        .and_then(|d| SystemTime::try_from(d).ok())
        .ok_or_else(|| "answer has an unreadable Expiration".to_string())?;
    Ok(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: Secret::new(field("SecretAccessKey")?),
        session_token: Some(Secret::new(field("SessionToken")?)),
        expires: Some(expires),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example answer of AWS's API reference for AssumeRoleWithWebIdentity.
    const OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>amzn1.account.AF6RHO7KZU5XRVQJGXK6HB56KR2A</SubjectFromWebIdentityToken>
    <Audience>client.5498841531868486423.1548@apps.example.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/FederatedWebIdentityRole/app1</Arn>
      <AssumedRoleId>AROACLKWSDQRAOEXAMPLE:app1</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>AQoDYXdzEE0a8ANXXXXXXXXNO1ewxE5TijQyp+IEXAMPLE</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2014-10-24T23:00:23Z</Expiration>
      <AccessKeyId>ASgeIAIOSFODNN7EXAMPLE</AccessKeyId>
    </Credentials>
    <SourceIdentity>SourceIdentityValue</SourceIdentity>
    <Provider>www.amazon.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn reads_the_documented_answer() {
        let c = parse_response(200, OK.as_bytes()).unwrap();
        assert_eq!(c.access_key_id, "ASgeIAIOSFODNN7EXAMPLE");
        assert_eq!(
            c.secret_access_key.expose(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
        );
        let secs = c
            .expires
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(secs, 1414191623);
    }

    #[test]
    fn errors_give_the_code_only() {
        let body = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Token claims sub=secret-subject</Message></Error><RequestId>x</RequestId></ErrorResponse>"#;
        let e = parse_response(400, body.as_bytes()).unwrap_err();
        assert!(e.contains("InvalidIdentityToken"), "{e}");
        assert!(!e.contains("secret-subject"), "{e}");
        assert!(parse_response(200, b"not xml").is_err());
        assert!(parse_response(200, b"<a/>").is_err());
        assert!(parse_response(503, b"").is_err());
    }

    #[test]
    fn the_form_encodes_every_field() {
        let b = request_body(
            "arn:aws:iam::1:role/r",
            "s 1",
            &Secret::new("a.b+c/="),
            3600,
        );
        assert!(b.starts_with("Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr&RoleSessionName=s+1&WebIdentityToken=a.b%2Bc%2F%3D&DurationSeconds=3600"), "{b}");
    }
}
