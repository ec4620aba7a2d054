//! MQTT 5 property sections, written in identifier order.

use super::{
    invalid, put_binary, put_str, put_u16, put_u32, put_u8, put_varint, Counter, Result, Sink,
};
use crate::properties::{id, PropCtx, Properties};

/// Writes the property length and the properties of `p`; a property not allowed in `ctx` is an
/// error.
pub(super) fn write<S: Sink>(s: &mut S, p: &Properties, ctx: PropCtx) -> Result {
    let mut c = Counter(0);
    entries(&mut c, p, ctx)?;
    put_varint(s, u32::try_from(c.0).unwrap_or(u32::MAX))?;
    entries(s, p, ctx)
}

/// Like [`write`] for a PUBLISH, with a Topic Alias added after the properties of `p` (which
/// must carry none itself). The broker aliases topics per connection without copying the
/// shared message's properties.
pub(super) fn write_with_alias<S: Sink>(s: &mut S, p: &Properties, alias: u16) -> Result {
    if p.topic_alias.is_some() {
        return Err(invalid("PUBLISH", "two Topic Alias properties"));
    }
    let mut c = Counter(0);
    entries(&mut c, p, PropCtx::Publish)?;
    put_varint(s, u32::try_from(c.0 + 3).unwrap_or(u32::MAX))?;
    entries(s, p, PropCtx::Publish)?;
    put_u8(s, id::TOPIC_ALIAS);
    put_u16(s, alias);
    Ok(())
}

fn ident<S: Sink>(s: &mut S, ctx: PropCtx, ident: u8) -> Result {
    if !ctx.allows(ident) {
        return Err(invalid(ctx.name(), "property not allowed in this packet"));
    }
    put_u8(s, ident);
    Ok(())
}

fn entries<S: Sink>(s: &mut S, p: &Properties, ctx: PropCtx) -> Result {
    if let Some(v) = p.payload_format_indicator {
        ident(s, ctx, id::PAYLOAD_FORMAT_INDICATOR)?;
        put_u8(s, v);
    }
    if let Some(v) = p.message_expiry_interval {
        ident(s, ctx, id::MESSAGE_EXPIRY_INTERVAL)?;
        put_u32(s, v);
    }
    if let Some(v) = &p.content_type {
        ident(s, ctx, id::CONTENT_TYPE)?;
        put_str(s, v)?;
    }
    if let Some(v) = &p.response_topic {
        ident(s, ctx, id::RESPONSE_TOPIC)?;
        put_str(s, v)?;
    }
    if let Some(v) = &p.correlation_data {
        ident(s, ctx, id::CORRELATION_DATA)?;
        put_binary(s, "Correlation Data", v)?;
    }
    if ctx == PropCtx::Subscribe && p.subscription_identifiers.len() > 1 {
        return Err(invalid(ctx.name(), "more than one Subscription Identifier"));
    }
    for &v in &p.subscription_identifiers {
        ident(s, ctx, id::SUBSCRIPTION_IDENTIFIER)?;
        put_varint(s, v)?;
    }
    if let Some(v) = p.session_expiry_interval {
        ident(s, ctx, id::SESSION_EXPIRY_INTERVAL)?;
        put_u32(s, v);
    }
    if let Some(v) = &p.assigned_client_identifier {
        ident(s, ctx, id::ASSIGNED_CLIENT_IDENTIFIER)?;
        put_str(s, v)?;
    }
    if let Some(v) = p.server_keep_alive {
        ident(s, ctx, id::SERVER_KEEP_ALIVE)?;
        put_u16(s, v);
    }
    if let Some(v) = &p.authentication_method {
        ident(s, ctx, id::AUTHENTICATION_METHOD)?;
        put_str(s, v)?;
    }
    if let Some(v) = &p.authentication_data {
        ident(s, ctx, id::AUTHENTICATION_DATA)?;
        put_binary(s, "Authentication Data", v)?;
    }
    if let Some(v) = p.request_problem_information {
        ident(s, ctx, id::REQUEST_PROBLEM_INFORMATION)?;
        put_u8(s, v);
    }
    if let Some(v) = p.will_delay_interval {
        ident(s, ctx, id::WILL_DELAY_INTERVAL)?;
        put_u32(s, v);
    }
    if let Some(v) = p.request_response_information {
        ident(s, ctx, id::REQUEST_RESPONSE_INFORMATION)?;
        put_u8(s, v);
    }
    if let Some(v) = &p.response_information {
        ident(s, ctx, id::RESPONSE_INFORMATION)?;
        put_str(s, v)?;
    }
    if let Some(v) = &p.server_reference {
        ident(s, ctx, id::SERVER_REFERENCE)?;
        put_str(s, v)?;
    }
    if let Some(v) = &p.reason_string {
        ident(s, ctx, id::REASON_STRING)?;
        put_str(s, v)?;
    }
    if let Some(v) = p.receive_maximum {
        ident(s, ctx, id::RECEIVE_MAXIMUM)?;
        put_u16(s, v);
    }
    if let Some(v) = p.topic_alias_maximum {
        ident(s, ctx, id::TOPIC_ALIAS_MAXIMUM)?;
        put_u16(s, v);
    }
    if let Some(v) = p.topic_alias {
        ident(s, ctx, id::TOPIC_ALIAS)?;
        put_u16(s, v);
    }
    if let Some(v) = p.maximum_qos {
        ident(s, ctx, id::MAXIMUM_QOS)?;
        put_u8(s, v);
    }
    if let Some(v) = p.retain_available {
        ident(s, ctx, id::RETAIN_AVAILABLE)?;
        put_u8(s, v);
    }
    for (k, v) in &p.user_properties {
        ident(s, ctx, id::USER_PROPERTY)?;
        put_str(s, k)?;
        put_str(s, v)?;
    }
    if let Some(v) = p.maximum_packet_size {
        ident(s, ctx, id::MAXIMUM_PACKET_SIZE)?;
        put_u32(s, v);
    }
    if let Some(v) = p.wildcard_subscription_available {
        ident(s, ctx, id::WILDCARD_SUBSCRIPTION_AVAILABLE)?;
        put_u8(s, v);
    }
    if let Some(v) = p.subscription_identifier_available {
        ident(s, ctx, id::SUBSCRIPTION_IDENTIFIER_AVAILABLE)?;
        put_u8(s, v);
    }
    if let Some(v) = p.shared_subscription_available {
        ident(s, ctx, id::SHARED_SUBSCRIPTION_AVAILABLE)?;
        put_u8(s, v);
    }
    Ok(())
}
