//! Hedged requests (stub).

use super::HedgePlan;
use crate::proxy::ctx::Ctx;
use pingora::proxy::Session;

pub async fn serve(_s: &mut Session, _ctx: &mut Ctx, _plan: &HedgePlan) -> pingora::Result<bool> {
    Ok(false)
}
