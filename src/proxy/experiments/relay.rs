//! Writing a race's outcome to the client: the winner's header and body,
//! tagged and metered like a proxied response, or the OpenAI-format error
//! when no leg won.

use crate::base::error::GatewayError;
use crate::proxy::ctx::Ctx;
use crate::proxy::{finish, response};
use crate::upstream::client::Exchange;
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

/// Answers the error of a race nobody won, in the OpenAI format.
pub(crate) async fn answer_error(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    let err = ctx.attempts.exhausted();
    let e = Error::explain(ErrorType::HTTPStatus(err.status()), err.code());
    ctx.out.fail(err);
    finish::fail_to_proxy(session, &e, ctx).await;
    Ok(true)
}

/// Streams the winner to the client: its header (tagged like the proxy's),
/// then every chunk through the meters.
pub(crate) async fn relay(
    session: &mut Session,
    ctx: &mut Ctx,
    mut ex: Exchange,
    first: Option<Bytes>,
) -> pingora::Result<bool> {
    let mut resp = ex.header().clone();
    response::on_header(&mut resp, ctx)?;
    resp.remove_header(&http::header::CONNECTION);
    if resp.headers.get(http::header::CONTENT_LENGTH).is_none() {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        ctx.out.gone();
        return Ok(true);
    }
    let mut pending = first;
    loop {
        let (mut body, eos) = match pending.take() {
            Some(b) => (Some(b), false),
            None => match ex.chunk().await {
                Ok(Some(b)) => (Some(b), false),
                Ok(None) => (None, true),
                Err(f) => {
                    ctx.out.broke(if f.is_timeout() {
                        GatewayError::UpstreamTimeout
                    } else {
                        GatewayError::UpstreamError
                    });
                    session.set_keepalive(None);
                    let e = Error::explain(ErrorType::ReadError, "upstream stream broke").into_up();
                    finish::fail_to_proxy(session, &e, ctx).await;
                    return Ok(true);
                }
            },
        };
        if let Err(e) = response::on_chunk(&mut body, eos, ctx) {
            session.set_keepalive(None);
            finish::fail_to_proxy(session, &e, ctx).await;
            return Ok(true);
        }
        let empty = body.as_ref().is_none_or(|b| b.is_empty());
        if (!empty || eos) && session.write_response_body(body, eos).await.is_err() {
            ctx.out.gone();
            return Ok(true);
        }
        if eos {
            break;
        }
    }
    ex.finish().await;
    Ok(true)
}
