//! A transmit ring for ports that encapsulate while copying a frame out
//! (the IPIP uplink; a VXLAN or other socket-backed uplink the same way):
//! fixed slots of one outer packet each, filled by [`TxRing::push`] and
//! emptied in batches by [`TxRing::flush`] through a [`TxSink`].
//!
//! The ring is pure: it does no I/O of its own (the sink does), so every
//! path (segmentation, fragmentation, early flush, drop counting) is tested
//! here without root.
//!
//! - **Push**: one inner IPv4 packet and its offload request (`vnet`) become
//!   one or more slots: a partial checksum (`NEEDS_CSUM`) is completed; a
//!   TCP GSO super-segment is cut at `gso_size`; a packet (or segment)
//!   larger than a slot without DF is fragmented ([`crate::gso`]). Each
//!   slot gets `header_len` bytes in front of its inner packet, which the
//!   caller's `write_header` fills (the outer IPv4 header, for IPIP) once
//!   the inner packet is in place. A full ring is flushed early.
//! - **Flush**: hands the queued packets to the sink, at most what one
//!   call takes at a time. `WouldBlock` is waited out a bounded number of
//!   times ([`FLUSH_WAITS`]), then the rest is dropped; a packet the sink
//!   refuses (`EMSGSIZE`, unreachable, ...) is dropped and the rest sent;
//!   a sink that takes nothing drops the rest. `EMSGSIZE` gets one retry
//!   first: a raw socket reports an ICMP frag needed about an earlier
//!   packet as the error of its next send, whichever packet that is.
//!
//! Invariants: one owner (a worker), so no lock; nothing allocates after
//! [`TxRing::new`]; [`TxRing::flush`] always leaves the ring empty; every
//! packet that was queued and not sent is counted in [`TxRing::take_dropped`]
//! exactly once; a slot never holds more than `slot_size` bytes, so an outer
//! packet never exceeds the link MTU; malformed input is an error, never a
//! panic.
use std::io;
use std::net::Ipv4Addr;

use crate::frame::VnetHdr;
use crate::gso::{self, Fragments, OffloadError, TcpSegments};
use crate::wire::{ETHERNET_HEADER_LEN, IPV4_HEADER_LEN};

/// `WouldBlock` waits per flush before the rest is dropped.
pub const FLUSH_WAITS: u32 = 3;

/// Where a ring's packets go: a port's batched send.
pub trait TxSink {
    /// Sends packets in order, each to the address paired with it, as many
    /// as one call takes; returns how many were taken (0: none will be).
    /// An error is about the first packet offered.
    fn send<'a>(&mut self, pkts: impl Iterator<Item = (&'a [u8], Ipv4Addr)>) -> io::Result<usize>;

    /// Called after `send` returned `WouldBlock`: waits (briefly, bounded)
    /// for room.
    fn wait(&mut self);
}

/// Outer packets waiting for the sink, in fixed slots.
pub struct TxRing {
    header_len: usize,
    slot_size: usize,
    buf: Box<[u8]>,
    lens: Box<[usize]>,
    dsts: Box<[Ipv4Addr]>,
    queued: usize,
    /// Queued packets the sink did not take, since the last
    /// [`TxRing::take_dropped`].
    dropped: u64,
    /// One inner packet, for completing a checksum before fragmenting.
    scratch: Box<[u8]>,
}

fn offload_error(e: OffloadError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        match e {
            OffloadError::Malformed => "malformed packet or offload request",
            OffloadError::Unsupported => "offload not supported for this packet",
            OffloadError::TooManyPieces => "packet would need too many pieces",
        },
    )
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl TxRing {
    /// A ring of `slots` slots of `slot_size` bytes (the largest outer
    /// packet, header included), each starting with `header_len` bytes for
    /// the encapsulation. Allocates `slots * slot_size` bytes plus a 64 KiB
    /// scratch buffer. `slot_size` must exceed `header_len` by at least
    /// 68 bytes (the IPv4 minimum MTU), `slots` must be at least 1.
    pub fn new(slots: usize, slot_size: usize, header_len: usize) -> TxRing {
        assert!(slots >= 1, "a ring needs a slot");
        assert!(slot_size >= header_len + 68, "slot too small for IPv4");
        TxRing {
            header_len,
            slot_size,
            buf: vec![0u8; slots * slot_size].into_boxed_slice(),
            lens: vec![0; slots].into_boxed_slice(),
            dsts: vec![Ipv4Addr::UNSPECIFIED; slots].into_boxed_slice(),
            queued: 0,
            dropped: 0,
            scratch: vec![0u8; usize::from(u16::MAX)].into_boxed_slice(),
        }
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Packets queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The largest inner packet one slot holds.
    pub fn max_inner(&self) -> usize {
        self.slot_size - self.header_len
    }

    /// Packets dropped since the last call (the sink refused them or had
    /// no room), and resets the count.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The queued packets, in order (for tests and diagnostics).
    pub fn packets(&self) -> impl Iterator<Item = (&[u8], Ipv4Addr)> {
        (0..self.queued).map(|i| (self.slot(i), self.dsts[i]))
    }

    fn slot(&self, i: usize) -> &[u8] {
        let at = i * self.slot_size;
        &self.buf[at..at + self.lens[i]]
    }

    /// Index of a free slot, flushing first if the ring is full.
    fn free_slot(&mut self, sink: &mut impl TxSink) -> usize {
        if self.queued == self.slots() {
            // Always empties the ring; drops are counted.
            let _ = self.flush(sink);
        }
        self.queued
    }

    /// The bytes of slot `i` after the header.
    fn inner_mut(&mut self, i: usize) -> &mut [u8] {
        let at = i * self.slot_size;
        &mut self.buf[at + self.header_len..at + self.slot_size]
    }

    /// Lets `write_header` fill the header in front of the `len`-byte inner
    /// packet in slot `i` (it gets header and inner packet) and queues it
    /// for `dst`.
    fn commit(
        &mut self,
        i: usize,
        len: usize,
        dst: Ipv4Addr,
        write_header: &impl Fn(&mut [u8], Ipv4Addr),
    ) {
        let at = i * self.slot_size;
        let n = self.header_len + len;
        write_header(&mut self.buf[at..at + n], dst);
        self.lens[i] = n;
        self.dsts[i] = dst;
        self.queued += 1;
    }

    /// Fragments the `len`-byte packet in `scratch` into the ring.
    fn push_fragments(
        &mut self,
        len: usize,
        max_inner: usize,
        dst: Ipv4Addr,
        write_header: &impl Fn(&mut [u8], Ipv4Addr),
        sink: &mut impl TxSink,
    ) -> io::Result<()> {
        let scratch = std::mem::take(&mut self.scratch);
        let r = (|| {
            let frags = Fragments::new(&scratch[..len], max_inner).map_err(offload_error)?;
            for k in 0..frags.count() {
                let i = self.free_slot(sink);
                let n = frags.write(k, self.inner_mut(i));
                if n == 0 {
                    return Err(invalid("fragment does not fit a slot"));
                }
                self.commit(i, n, dst, write_header);
            }
            Ok(())
        })();
        self.scratch = scratch;
        r
    }

    /// Queues one inner IPv4 packet for `dst`, with the offload request
    /// `vnet` (whose offsets count from the start of the Ethernet frame the
    /// packet came in), cut into segments or fragments as needed (see the
    /// module documentation). `write_header` fills each slot's header once
    /// its inner packet is in place. On error nothing more of the packet is
    /// queued (pieces already queued stay).
    pub fn push(
        &mut self,
        inner: &[u8],
        vnet: VnetHdr,
        dst: Ipv4Addr,
        write_header: &impl Fn(&mut [u8], Ipv4Addr),
        sink: &mut impl TxSink,
    ) -> io::Result<()> {
        let limit = self.max_inner();
        self.push_limited(inner, vnet, dst, limit, write_header, sink)
    }

    /// [`TxRing::push`] with inner packets (segments, fragments) of at
    /// most `limit` bytes, when the path to `dst` is known to be narrower
    /// than a slot (a learned path MTU, `crate::pmtu`); a `limit` above
    /// the slot's room is the slot's room.
    pub fn push_limited(
        &mut self,
        inner: &[u8],
        vnet: VnetHdr,
        dst: Ipv4Addr,
        limit: usize,
        write_header: &impl Fn(&mut [u8], Ipv4Addr),
        sink: &mut impl TxSink,
    ) -> io::Result<()> {
        if inner.len() < IPV4_HEADER_LEN || inner[0] >> 4 != 4 {
            return Err(invalid("not an IPv4 packet"));
        }
        let total = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
        if total < IPV4_HEADER_LEN || total > inner.len() {
            return Err(invalid("bad IPv4 total length"));
        }
        let inner = &inner[..total];
        let csum = if vnet.flags & VnetHdr::F_NEEDS_CSUM != 0 && !vnet.is_gso() {
            let start = usize::from(vnet.csum_start)
                .checked_sub(ETHERNET_HEADER_LEN)
                .ok_or_else(|| invalid("checksum start inside the Ethernet header"))?;
            Some((start, usize::from(vnet.csum_offset)))
        } else {
            None
        };
        let max_inner = limit.min(self.max_inner());
        if vnet.is_gso() {
            if vnet.gso_type & !VnetHdr::GSO_ECN != VnetHdr::GSO_TCPV4 {
                return Err(invalid("GSO type other than TCPv4"));
            }
            let segs =
                TcpSegments::new(inner, usize::from(vnet.gso_size)).map_err(offload_error)?;
            for k in 0..segs.count() {
                if segs.len(k) <= max_inner {
                    let i = self.free_slot(sink);
                    let n = segs.write(k, self.inner_mut(i));
                    self.commit(i, n, dst, write_header);
                } else {
                    let n = segs.write(k, &mut self.scratch);
                    self.push_fragments(n, max_inner, dst, write_header, sink)?;
                }
            }
            return Ok(());
        }
        if total <= max_inner {
            let i = self.free_slot(sink);
            let s = &mut self.inner_mut(i)[..total];
            s.copy_from_slice(inner);
            if let Some((start, offset)) = csum {
                gso::complete_checksum(s, start, offset).map_err(offload_error)?;
            }
            self.commit(i, total, dst, write_header);
            return Ok(());
        }
        self.scratch[..total].copy_from_slice(inner);
        if let Some((start, offset)) = csum {
            gso::complete_checksum(&mut self.scratch[..total], start, offset)
                .map_err(offload_error)?;
        }
        self.push_fragments(total, max_inner, dst, write_header, sink)
    }

    /// Sends everything queued through `sink`; always leaves the ring
    /// empty. Fails (with the last error seen) when any packet was
    /// dropped; the drops are counted ([`TxRing::take_dropped`]).
    pub fn flush(&mut self, sink: &mut impl TxSink) -> io::Result<()> {
        let (mut sent, mut dropped, mut waits) = (0, 0u64, 0);
        let (mut err, mut retried) = (None, None);
        while sent < self.queued {
            let (slot_size, buf, lens, dsts) = (self.slot_size, &self.buf, &self.lens, &self.dsts);
            let pkts = (sent..self.queued).map(|i| {
                let at = i * slot_size;
                (&buf[at..at + lens[i]], dsts[i])
            });
            match sink.send(pkts) {
                Ok(0) => {
                    dropped += (self.queued - sent) as u64;
                    break;
                }
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && waits < FLUSH_WAITS => {
                    waits += 1;
                    sink.wait();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dropped += (self.queued - sent) as u64;
                    err = Some(e);
                    break;
                }
                // EMSGSIZE may be the socket's pending error from an ICMP
                // frag needed about an earlier packet (a raw socket reports
                // it on its next send, whatever that sends): the packet
                // gets one more try before it counts as refused.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) && retried != Some(sent) => {
                    retried = Some(sent);
                }
                // The first packet of this call was refused (EMSGSIZE
                // twice, unreachable, ...): drop it, send the rest.
                Err(e) => {
                    sent += 1;
                    dropped += 1;
                    err = Some(e);
                }
            }
        }
        self.queued = 0;
        if dropped > 0 {
            self.dropped += dropped;
            return Err(err.unwrap_or_else(|| io::ErrorKind::WriteZero.into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, check_ipv4};
    use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket, UdpPacket};
    use std::collections::VecDeque;

    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 66);
    const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);

    /// What the fake sink answers to each `send`, in order; `None`: take
    /// everything offered (up to 4 per call, like a small sendmmsg).
    type Script = VecDeque<io::Result<usize>>;

    #[derive(Default)]
    struct FakeSink {
        script: Script,
        sent: Vec<(Vec<u8>, Ipv4Addr)>,
        calls: usize,
        waits: usize,
    }

    impl TxSink for FakeSink {
        fn send<'a>(
            &mut self,
            pkts: impl Iterator<Item = (&'a [u8], Ipv4Addr)>,
        ) -> io::Result<usize> {
            self.calls += 1;
            let offered: Vec<_> = pkts.take(4).collect();
            let n = match self.script.pop_front() {
                Some(Ok(n)) => n.min(offered.len()),
                Some(Err(e)) => return Err(e),
                None => offered.len(),
            };
            self.sent
                .extend(offered[..n].iter().map(|(p, d)| (p.to_vec(), *d)));
            Ok(n)
        }
        fn wait(&mut self) {
            self.waits += 1;
        }
    }

    /// The IPIP header, as the uplink writes it.
    fn ipip(pkt: &mut [u8], dst: Ipv4Addr) {
        let tos = pkt[IPV4_HEADER_LEN + 1];
        let df = pkt[IPV4_HEADER_LEN + 6] & 0x40 != 0;
        let len = pkt.len() as u16;
        wire::write_ipip_header(pkt, len, 0, tos, df, NODE_A, dst);
    }

    fn ip_header(proto: u8, flags: u16, total: usize) -> Vec<u8> {
        let mut v = vec![0u8; total];
        v[0] = 0x45;
        v[1] = 0xb8; // DSCP 46: the outer header copies it
        v[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        v[4..6].copy_from_slice(&7u16.to_be_bytes());
        v[6..8].copy_from_slice(&flags.to_be_bytes());
        v[8] = 63;
        v[9] = proto;
        v[12..16].copy_from_slice(&POD_A.octets());
        v[16..20].copy_from_slice(&POD_B.octets());
        Ipv4Packet::new_unchecked(&mut v[..20]).fill_checksum();
        v
    }

    fn pseudo_sum(proto: u8, len: usize) -> u16 {
        let mut ps = [0u8; 12];
        ps[..4].copy_from_slice(&POD_A.octets());
        ps[4..8].copy_from_slice(&POD_B.octets());
        ps[9] = proto;
        ps[10..12].copy_from_slice(&(len as u16).to_be_bytes());
        wire::ones_complement_sum(&ps)
    }

    /// A ring like the uplink's for a 1000-byte link: 980 inner bytes.
    fn ring(slots: usize) -> TxRing {
        TxRing::new(slots, 1000, IPV4_HEADER_LEN)
    }

    #[test]
    fn plain_checksum_gso_and_fragments() {
        let mut r = ring(64);
        let mut sink = FakeSink::default();
        // 1. A small packet with DF.
        let mut plain = ip_header(1, 0x4000, 60);
        plain[20] = 8;
        r.push(&plain, VnetHdr::default(), NODE_B, &ipip, &mut sink)
            .unwrap();
        // 2. UDP with a partial checksum.
        let mut udp = ip_header(17, 0, 20 + 8 + 100);
        udp[24..26].copy_from_slice(&108u16.to_be_bytes());
        udp[26..28].copy_from_slice(&pseudo_sum(17, 108).to_be_bytes());
        let csum = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        r.push(&udp, csum, NODE_B, &ipip, &mut sink).unwrap();
        // 3. TCP GSO: 2000 bytes at MSS 900 -> 3 segments of <= 940.
        let mut tcp = ip_header(6, 0x4000, 20 + 20 + 2000);
        tcp[32] = 0x50;
        tcp[33] = 0x18;
        for (i, b) in tcp[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let gso = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 900,
            csum_start: 34,
            csum_offset: 16,
        };
        r.push(&tcp, gso, NODE_B, &ipip, &mut sink).unwrap();
        // 4. 2000 bytes of UDP without DF: fragmented to fit 980.
        let big = ip_header(17, 0, 2000);
        r.push(&big, VnetHdr::default(), NODE_B, &ipip, &mut sink)
            .unwrap();
        assert_eq!(r.queued(), 1 + 1 + 3 + 3);
        assert_eq!(sink.calls, 0, "nothing sent before the flush");
        r.flush(&mut sink).unwrap();
        assert_eq!(r.queued(), 0);
        assert_eq!(r.take_dropped(), 0);
        assert_eq!(sink.calls, 2, "8 packets, 4 per call");

        let (mut tcp_payload, mut frag_bytes) = (Vec::new(), 0);
        for (k, (p, dst)) in sink.sent.iter().enumerate() {
            assert_eq!(*dst, NODE_B);
            assert!(p.len() <= 1000, "outer fits the link MTU");
            let outer = check_ipv4(p).expect("outer header valid");
            assert_eq!((outer.src_addr(), outer.dst_addr()), (NODE_A, NODE_B));
            assert_eq!(outer.dscp(), 46);
            let inner = check_ipv4(outer.payload()).expect("inner header valid");
            assert_eq!(outer.dont_frag(), inner.dont_frag(), "DF copied");
            let (a, b) = (IpAddress::Ipv4(POD_A), IpAddress::Ipv4(POD_B));
            match k {
                0 => assert_eq!(outer.payload(), &plain[..]),
                1 => {
                    let u = UdpPacket::new_checked(inner.payload()).unwrap();
                    assert!(u.verify_checksum(&a, &b), "UDP checksum completed");
                }
                2..=4 => {
                    let t = TcpPacket::new_checked(inner.payload()).unwrap();
                    assert!(t.verify_checksum(&a, &b), "TCP checksum");
                    assert_eq!(t.psh(), k == 4, "PSH only on the last segment");
                    tcp_payload.extend_from_slice(t.payload());
                }
                _ => {
                    assert!(!inner.dont_frag());
                    assert_eq!(inner.more_frags(), k != 7);
                    frag_bytes += inner.payload().len();
                }
            }
        }
        assert_eq!(tcp_payload, tcp[40..]);
        assert_eq!(frag_bytes, 2000 - 20);
    }

    #[test]
    fn malformed_requests_are_refused_not_queued() {
        let mut r = ring(8);
        let mut sink = FakeSink::default();
        let big = ip_header(17, 0, 2000);
        let bad_gso = VnetHdr {
            gso_type: VnetHdr::GSO_UDP,
            gso_size: 100,
            ..VnetHdr::default()
        };
        assert!(r.push(&big, bad_gso, NODE_B, &ipip, &mut sink).is_err());
        let plain = ip_header(1, 0x4000, 60);
        assert!(r
            .push(&plain[..10], VnetHdr::default(), NODE_B, &ipip, &mut sink)
            .is_err());
        let mut lying = plain.clone();
        lying[2..4].copy_from_slice(&100u16.to_be_bytes()); // longer than the bytes
        assert!(r
            .push(&lying, VnetHdr::default(), NODE_B, &ipip, &mut sink)
            .is_err());
        let csum_in_eth = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 4,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        assert!(r
            .push(&plain, csum_in_eth, NODE_B, &ipip, &mut sink)
            .is_err());
        // DF and too big for a slot: not fragmented.
        let big_df = ip_header(17, 0x4000, 2000);
        assert!(r
            .push(&big_df, VnetHdr::default(), NODE_B, &ipip, &mut sink)
            .is_err());
        assert_eq!(r.queued(), 0);
    }

    #[test]
    fn full_ring_is_flushed_early() {
        let mut r = ring(2);
        let mut sink = FakeSink::default();
        let p = ip_header(17, 0, 100);
        for _ in 0..5 {
            r.push(&p, VnetHdr::default(), NODE_B, &ipip, &mut sink)
                .unwrap();
        }
        assert_eq!(sink.sent.len(), 4, "two early flushes of two");
        assert_eq!(r.queued(), 1);
        r.flush(&mut sink).unwrap();
        assert_eq!(sink.sent.len(), 5);
        assert_eq!(r.take_dropped(), 0);
    }

    #[test]
    fn would_block_is_waited_out_then_dropped() {
        let p = ip_header(17, 0, 100);
        let would_block = || Err(io::ErrorKind::WouldBlock.into());
        // Room after two waits: nothing lost.
        let mut r = ring(8);
        let mut sink = FakeSink {
            script: [would_block(), Ok(2), would_block(), Ok(4)]
                .into_iter()
                .collect(),
            ..FakeSink::default()
        };
        for _ in 0..6 {
            r.push(&p, VnetHdr::default(), NODE_B, &ipip, &mut sink)
                .unwrap();
        }
        r.flush(&mut sink).unwrap();
        assert_eq!((sink.sent.len(), sink.waits), (6, 2));
        assert_eq!(r.take_dropped(), 0);
        // Never any room: FLUSH_WAITS waits, then all six are dropped.
        let mut sink = FakeSink {
            script: (0..10).map(|_| would_block()).collect(),
            ..FakeSink::default()
        };
        for _ in 0..6 {
            r.push(&p, VnetHdr::default(), NODE_B, &ipip, &mut sink)
                .unwrap();
        }
        let e = r.flush(&mut sink).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(sink.waits, FLUSH_WAITS as usize);
        assert_eq!(r.queued(), 0, "a flush always empties the ring");
        assert_eq!(r.take_dropped(), 6);
        assert_eq!(r.take_dropped(), 0, "counted once");
    }

    #[test]
    fn refused_packets_are_dropped_and_the_rest_sent() {
        let p = ip_header(17, 0, 100);
        let mut r = ring(8);
        let mut sink = FakeSink {
            script: [
                Ok(1),
                Err(io::Error::from_raw_os_error(libc::EMSGSIZE)),
                Err(io::Error::from_raw_os_error(libc::EMSGSIZE)),
                Ok(4),
            ]
            .into_iter()
            .collect(),
            ..FakeSink::default()
        };
        for _ in 0..5 {
            r.push(&p, VnetHdr::default(), NODE_B, &ipip, &mut sink)
                .unwrap();
        }
        let e = r.flush(&mut sink).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE));
        assert_eq!(sink.sent.len(), 4);
        assert_eq!(r.take_dropped(), 1);
        // One EMSGSIZE is the socket's pending error (an ICMP about an
        // earlier packet): the packet is tried again and goes.
        let mut sink = FakeSink {
            script: [
                Ok(1),
                Err(io::Error::from_raw_os_error(libc::EMSGSIZE)),
                Ok(4),
            ]
            .into_iter()
            .collect(),
            ..FakeSink::default()
        };
        for _ in 0..5 {
            r.push(&p, VnetHdr::default(), NODE_B, &ipip, &mut sink)
                .unwrap();
        }
        r.flush(&mut sink).unwrap();
        assert_eq!(sink.sent.len(), 5);
        assert_eq!(r.take_dropped(), 0);
        // A sink that takes nothing drops the rest.
        let mut sink = FakeSink {
            script: [Ok(2), Ok(0)].into_iter().collect(),
            ..FakeSink::default()
        };
        for _ in 0..5 {
            r.push(&p, VnetHdr::default(), NODE_B, &ipip, &mut sink)
                .unwrap();
        }
        let e = r.flush(&mut sink).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert_eq!(r.take_dropped(), 3);
        assert_eq!(r.queued(), 0);
    }

    #[test]
    fn early_flush_drops_are_counted() {
        let p = ip_header(17, 0, 100);
        let mut r = ring(2);
        let mut sink = FakeSink {
            script: [Ok(0)].into_iter().collect(),
            ..FakeSink::default()
        };
        for _ in 0..3 {
            r.push(&p, VnetHdr::default(), NODE_B, &ipip, &mut sink)
                .unwrap();
        }
        assert_eq!(r.take_dropped(), 2, "the early flush lost two");
        r.flush(&mut sink).unwrap();
        assert_eq!(sink.sent.len(), 1);
    }
}
