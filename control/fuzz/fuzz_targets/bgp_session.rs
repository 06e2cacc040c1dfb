//! Any byte stream from an Established peer into a session: no panic, and
//! the session either stays up or sends a NOTIFICATION and closes.
#![no_main]
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use podrouter_control::bgp::session::{ConnId, Input, Session, SessionConfig, State};
use podrouter_control::bgp::wire::{self, Capability, GracefulRestart, Open};

fuzz_target!(|data: &[u8]| {
    let t = Instant::now();
    let cfg = SessionConfig {
        peer: Ipv4Addr::new(10, 0, 0, 2),
        peer_as: 64513,
        local_as: 64512,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        next_hop: Ipv4Addr::new(10, 0, 0, 1),
        hold_time: 9,
        connect_retry: Duration::from_secs(5),
        passive: false,
        graceful_restart: true,
        restart_time: 120,
        restarting: false,
        max_prefixes: Some(1000),
    };
    let mut s = Session::new(cfg, vec![], t);
    s.handle(t, Input::Start);
    s.handle(t, Input::Connected(ConnId::Outbound));
    let open = wire::encode_open(&Open {
        version: 4,
        my_as: 64513,
        hold_time: 9,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        caps: vec![
            Capability::FourOctetAs(64513),
            Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                restart_time: 30,
                families: vec![(1, 1, true)],
            }),
        ],
        other_params: vec![],
    });
    s.handle(t, Input::Data(ConnId::Outbound, &open));
    s.handle(t, Input::Data(ConnId::Outbound, &wire::encode_keepalive()));
    assert_eq!(s.state(), State::Established);
    // Feed in two chunks split by the first byte, to exercise framing.
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    s.handle(t, Input::Data(ConnId::Outbound, &data[..split]));
    s.handle(t, Input::Data(ConnId::Outbound, &data[split..]));
    s.poll(t + Duration::from_secs(100));
});
