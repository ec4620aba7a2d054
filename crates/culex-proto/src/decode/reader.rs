//! A bounds-checked cursor over a packet body.

use bytes::Bytes;

use super::Result;
use crate::error::DecodeError;

pub(super) fn malformed(rule: &'static str, what: &'static str) -> DecodeError {
    DecodeError::Malformed { rule, what }
}

pub(super) fn protocol_error(rule: &'static str, what: &'static str) -> DecodeError {
    DecodeError::Protocol { rule, what }
}

/// Parses a Variable Byte Integer from the front of `bytes`: its value and length, or `None`
/// when `bytes` ends before it does. At most 4 bytes, shortest form (`[MQTT-1.5.5-1]`).
pub(super) fn parse_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>> {
    let mut value = 0u32;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(malformed(
                    "[MQTT-1.5.5-1]",
                    "variable byte integer not in its shortest form",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(malformed(
            "[1.5.5]",
            "variable byte integer longer than 4 bytes",
        ));
    }
    Ok(None)
}

/// Reads fields from a packet body; every read checks the bounds, and running past the end is a
/// Malformed Packet (the remaining length does not match the contents).
pub(super) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(super) fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Fails when bytes are left over.
    pub(super) fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                "[2.1.4]",
                "bytes left over after the packet's contents",
            ))
        }
    }

    fn slice(&mut self, n: usize, what: &'static str) -> Result<&[u8]> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(DecodeError::Malformed {
                rule: "[2.1.4]",
                what,
            })?;
        self.pos = end;
        self.buf.get(start..end).ok_or(malformed("[2.1.4]", what))
    }

    /// `n` bytes as a zero-copy slice of the packet.
    pub(super) fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        let start = self.pos;
        self.slice(n, what)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// Everything left.
    pub(super) fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.buf.len());
        self.pos = self.buf.len();
        self.buf.slice(start..)
    }

    /// A reader over the next `n` bytes, which this reader skips.
    pub(super) fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader> {
        Ok(Reader::new(self.bytes(n, what)?))
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8> {
        let b = self.slice(1, what)?;
        b.first().copied().ok_or(malformed("[2.1.4]", what))
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16> {
        let b = self.slice(2, what)?;
        let b: [u8; 2] = b.try_into().map_err(|_| malformed("[2.1.4]", what))?;
        Ok(u16::from_be_bytes(b))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32> {
        let b = self.slice(4, what)?;
        let b: [u8; 4] = b.try_into().map_err(|_| malformed("[2.1.4]", what))?;
        Ok(u32::from_be_bytes(b))
    }

    pub(super) fn varint(&mut self, what: &'static str) -> Result<u32> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let (value, len) = parse_varint(rest)?.ok_or(malformed("[2.1.4]", what))?;
        self.pos += len;
        Ok(value)
    }

    /// Binary Data: a two-byte length and that many bytes.
    pub(super) fn binary(&mut self, what: &'static str) -> Result<Bytes> {
        let len = self.u16(what)?;
        self.bytes(usize::from(len), what)
    }

    /// UTF-8 Encoded String: well-formed UTF-8 (`[MQTT-1.5.4-1]`) without U+0000
    /// (`[MQTT-1.5.4-2]`).
    pub(super) fn string(&mut self, what: &'static str) -> Result<String> {
        let len = self.u16(what)?;
        let b = self.slice(usize::from(len), what)?;
        let s = std::str::from_utf8(b)
            .map_err(|_| malformed("[MQTT-1.5.4-1]", "ill-formed UTF-8 string"))?;
        if s.contains('\0') {
            return Err(malformed("[MQTT-1.5.4-2]", "string contains U+0000"));
        }
        Ok(s.to_owned())
    }
}
