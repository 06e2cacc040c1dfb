//! Any bytes into the BGP message decoder: it must return a message or a
//! NOTIFICATION, never panic; a decoded UPDATE must re-encode into
//! messages that decode again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podrouter_control::bgp::wire::{self, Ctx, Message};

fuzz_target!(|data: &[u8]| {
    for four in [true, false] {
        let ctx = Ctx {
            four_octet_as: four,
        };
        let _ = wire::frame(data);
        if let Ok(Message::Update(u)) = wire::decode(data, ctx) {
            if let Some(a) = &u.attrs {
                for m in wire::encode_updates(&u.withdrawn, Some(a), &u.nlri, ctx) {
                    if m.len() <= wire::MAX_MESSAGE_LEN {
                        wire::decode(&m, ctx).expect("our own encoding decodes");
                    }
                }
            }
        }
        // The UPDATE body decoder on its own, without the header checks.
        let _ = wire::decode_update(data, ctx);
        let _ = wire::decode_open(data);
    }
});
