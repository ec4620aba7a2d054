//! MQTT 5 property sections (section 2.2.2).

use super::reader::{malformed, protocol_error, Reader};
use super::{check_topic_name, Result};
use crate::properties::{id, PropCtx, Properties};

/// Reads a property length and the properties it covers, checking that each identifier is
/// known, allowed in `ctx`, not repeated (except User Property, and Subscription Identifier in
/// PUBLISH), and that its value is in range.
pub(super) fn read(r: &mut Reader, ctx: PropCtx) -> Result<Properties> {
    let len = r.varint("truncated property length")?;
    let mut r = r.sub(
        usize::try_from(len).unwrap_or(usize::MAX),
        "property length exceeds the remaining length",
    )?;
    let mut p = Properties::default();
    let mut seen = 0u64;
    while !r.is_empty() {
        let ident = r.varint("truncated property identifier")?;
        let ident = u8::try_from(ident)
            .ok()
            .filter(|&i| i <= id::SHARED_SUBSCRIPTION_AVAILABLE && is_known(i))
            .ok_or(malformed("[2.2.2.2]", "unknown property identifier"))?;
        if !ctx.allows(ident) {
            return Err(protocol_error(
                "[2.2.2.2]",
                "property not allowed in this packet",
            ));
        }
        let bit = 1u64 << ident;
        if seen & bit != 0 && !ctx.repeatable(ident) {
            return Err(protocol_error(
                "[2.2.2.2]",
                "property included more than once",
            ));
        }
        seen |= bit;
        read_value(&mut r, ident, &mut p)?;
    }
    Ok(p)
}

fn is_known(ident: u8) -> bool {
    matches!(
        ident,
        0x01..=0x03 | 0x08 | 0x09 | 0x0B | 0x11..=0x13 | 0x15..=0x1A | 0x1C | 0x1F | 0x21..=0x2A
    )
}

/// A byte property that must be 0 or 1.
fn flag(r: &mut Reader, rule: &'static str, what: &'static str) -> Result<Option<u8>> {
    match r.u8("truncated property value")? {
        v @ (0 | 1) => Ok(Some(v)),
        _ => Err(protocol_error(rule, what)),
    }
}

fn non_zero_u16(r: &mut Reader, rule: &'static str, what: &'static str) -> Result<Option<u16>> {
    match r.u16("truncated property value")? {
        0 => Err(protocol_error(rule, what)),
        v => Ok(Some(v)),
    }
}

fn read_value(r: &mut Reader, ident: u8, p: &mut Properties) -> Result<()> {
    match ident {
        id::PAYLOAD_FORMAT_INDICATOR => {
            p.payload_format_indicator =
                flag(r, "[3.3.2.3.2]", "Payload Format Indicator not 0 or 1")?
        }
        id::MESSAGE_EXPIRY_INTERVAL => {
            p.message_expiry_interval = Some(r.u32("truncated Message Expiry Interval")?)
        }
        id::CONTENT_TYPE => p.content_type = Some(r.string("truncated Content Type")?),
        id::RESPONSE_TOPIC => {
            let topic = r.string("truncated Response Topic")?;
            check_topic_name(&topic, "[MQTT-3.3.2-14]")?;
            p.response_topic = Some(topic);
        }
        id::CORRELATION_DATA => p.correlation_data = Some(r.binary("truncated Correlation Data")?),
        id::SUBSCRIPTION_IDENTIFIER => {
            let v = r.varint("truncated Subscription Identifier")?;
            if v == 0 {
                return Err(protocol_error("[3.8.2.1.2]", "Subscription Identifier 0"));
            }
            p.subscription_identifiers.push(v);
        }
        id::SESSION_EXPIRY_INTERVAL => {
            p.session_expiry_interval = Some(r.u32("truncated Session Expiry Interval")?)
        }
        id::ASSIGNED_CLIENT_IDENTIFIER => {
            p.assigned_client_identifier = Some(r.string("truncated Assigned Client Identifier")?)
        }
        id::SERVER_KEEP_ALIVE => p.server_keep_alive = Some(r.u16("truncated Server Keep Alive")?),
        id::AUTHENTICATION_METHOD => {
            p.authentication_method = Some(r.string("truncated Authentication Method")?)
        }
        id::AUTHENTICATION_DATA => {
            p.authentication_data = Some(r.binary("truncated Authentication Data")?)
        }
        id::REQUEST_PROBLEM_INFORMATION => {
            p.request_problem_information =
                flag(r, "[3.1.2.11.7]", "Request Problem Information not 0 or 1")?
        }
        id::WILL_DELAY_INTERVAL => {
            p.will_delay_interval = Some(r.u32("truncated Will Delay Interval")?)
        }
        id::REQUEST_RESPONSE_INFORMATION => {
            p.request_response_information =
                flag(r, "[3.1.2.11.6]", "Request Response Information not 0 or 1")?
        }
        id::RESPONSE_INFORMATION => {
            p.response_information = Some(r.string("truncated Response Information")?)
        }
        id::SERVER_REFERENCE => p.server_reference = Some(r.string("truncated Server Reference")?),
        id::REASON_STRING => p.reason_string = Some(r.string("truncated Reason String")?),
        id::RECEIVE_MAXIMUM => {
            p.receive_maximum = non_zero_u16(r, "[3.1.2.11.3]", "Receive Maximum 0")?
        }
        id::TOPIC_ALIAS_MAXIMUM => {
            p.topic_alias_maximum = Some(r.u16("truncated Topic Alias Maximum")?)
        }
        id::TOPIC_ALIAS => p.topic_alias = non_zero_u16(r, "[MQTT-3.3.2-8]", "Topic Alias 0")?,
        id::MAXIMUM_QOS => p.maximum_qos = flag(r, "[3.2.2.3.4]", "Maximum QoS not 0 or 1")?,
        id::RETAIN_AVAILABLE => {
            p.retain_available = flag(r, "[3.2.2.3.5]", "Retain Available not 0 or 1")?
        }
        id::USER_PROPERTY => {
            let key = r.string("truncated User Property name")?;
            let value = r.string("truncated User Property value")?;
            p.user_properties.push((key, value));
        }
        id::MAXIMUM_PACKET_SIZE => match r.u32("truncated Maximum Packet Size")? {
            0 => return Err(protocol_error("[3.1.2.11.4]", "Maximum Packet Size 0")),
            v => p.maximum_packet_size = Some(v),
        },
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
            p.wildcard_subscription_available = flag(
                r,
                "[3.2.2.3.11]",
                "Wildcard Subscription Available not 0 or 1",
            )?
        }
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            p.subscription_identifier_available = flag(
                r,
                "[3.2.2.3.12]",
                "Subscription Identifier Available not 0 or 1",
            )?
        }
        id::SHARED_SUBSCRIPTION_AVAILABLE => {
            p.shared_subscription_available = flag(
                r,
                "[3.2.2.3.13]",
                "Shared Subscription Available not 0 or 1",
            )?
        }
        _ => return Err(malformed("[2.2.2.2]", "unknown property identifier")),
    }
    Ok(())
}
