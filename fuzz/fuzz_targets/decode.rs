//! Feeds arbitrary bytes to the decoder before and after CONNECT for every protocol version,
//! decoding packet after packet until an error or an incomplete packet. Whatever decodes must
//! encode again.

#![no_main]

use bytes::BytesMut;
use culex_proto::{decode, encode, encoded_len, Packet, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ctx in [
        None,
        Some(Protocol::V31),
        Some(Protocol::V311),
        Some(Protocol::V5),
    ] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, ctx, 1 << 20) {
            let protocol = match (&packet, ctx) {
                (Packet::Connect(c), _) => c.protocol,
                (_, Some(p)) => p,
                (_, None) => return,
            };
            let mut out = BytesMut::new();
            if encode(&packet, protocol, &mut out).is_ok() {
                assert_eq!(encoded_len(&packet, protocol).ok(), Some(out.len()));
            }
        }
    }
});
