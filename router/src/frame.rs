//! Frame buffers lent to the pipeline: one Ethernet frame with headroom in
//! front (for an IPIP header) and the virtio-net offload header that came
//! with it.
//!
//! Invariants: `HEADROOM` bytes are free in front of a freshly received
//! frame; `start + len <= capacity`; a frame can hold a 64 KiB GSO segment.
use std::fmt;

/// Free bytes kept in front of a received frame, enough for an outer IPv4
/// header and more.
pub const HEADROOM: usize = 128;

/// Largest frame a port may hand us: a 64 KiB IPv4 datagram (TSO segment)
/// plus its Ethernet header, rounded up.
pub const MAX_FRAME_LEN: usize = 65_536 + 64;

/// Length of `struct virtio_net_hdr` as TAP devices exchange it.
pub const VNET_HDR_LEN: usize = 10;

/// The virtio-net header that accompanies a frame on an offloading TAP:
/// checksum offload (`NEEDS_CSUM`, `csum_start`, `csum_offset`) and GSO.
/// Fields are host-endian, as TAP uses them on little-endian hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The L4 checksum is partial: the receiver must fill it in.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The checksum has been verified already.
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_ECN: u8 = 0x80;

    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        }
    }

    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// True when the frame is a GSO super-segment to be cut at `gso_size`.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }
}

/// One frame in an owned buffer with headroom.
pub struct Frame {
    buf: Box<[u8]>,
    start: usize,
    len: usize,
    /// Offload metadata received with the frame and sent with it.
    pub vnet: VnetHdr,
}

impl Default for Frame {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("vnet", &self.vnet)
            .finish()
    }
}

impl Frame {
    /// An empty frame able to hold `MAX_FRAME_LEN` bytes after `HEADROOM`.
    pub fn new() -> Self {
        Frame {
            buf: vec![0u8; HEADROOM + MAX_FRAME_LEN].into_boxed_slice(),
            start: HEADROOM,
            len: 0,
            vnet: VnetHdr::default(),
        }
    }

    /// A frame holding a copy of `data` (tests, in-memory ports).
    /// Data longer than `MAX_FRAME_LEN` is truncated.
    pub fn from_bytes(data: &[u8]) -> Self {
        let mut f = Frame::new();
        f.load(data, VnetHdr::default());
        f
    }

    /// Replaces the contents with a copy of `data` (truncated to
    /// `MAX_FRAME_LEN`), restoring the full headroom.
    pub fn load(&mut self, data: &[u8], vnet: VnetHdr) {
        let n = data.len().min(MAX_FRAME_LEN);
        self.start = HEADROOM;
        self.buf[HEADROOM..HEADROOM + n].copy_from_slice(&data[..n]);
        self.len = n;
        self.vnet = vnet;
    }

    /// Prepares the frame for a receive: full headroom restored, no offload
    /// metadata. Returns the region a port writes the frame into; the port
    /// then calls [`Frame::set_len`].
    pub fn rx_buffer(&mut self) -> &mut [u8] {
        self.start = HEADROOM;
        self.len = 0;
        self.vnet = VnetHdr::default();
        &mut self.buf[HEADROOM..]
    }

    /// Sets the frame length after a receive or a rewrite; clamped to the
    /// buffer's end.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.buf.len() - self.start);
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Bytes free in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Bytes the frame can grow by at its end.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.start - self.len
    }

    /// Grows the frame by `n` bytes at the front (into the headroom) and
    /// returns the whole frame; `None` if the headroom is too small.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.start {
            return None;
        }
        self.start -= n;
        self.len += n;
        Some(self.data_mut())
    }

    /// Drops `n` bytes from the front; false (and no change) if the frame is
    /// shorter than `n`.
    #[inline]
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.start += n;
        self.len -= n;
        true
    }

    /// Changes the length, growing into the tailroom or shrinking; false (and
    /// no change) if it would not fit.
    #[inline]
    pub fn resize(&mut self, len: usize) -> bool {
        if len > self.buf.len() - self.start {
            return false;
        }
        self.len = len;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::from_bytes(&b), h);
        assert!(h.is_gso());
        assert!(!VnetHdr::default().is_gso());
    }

    #[test]
    fn headroom_push_and_pull() {
        let mut f = Frame::from_bytes(&[1, 2, 3]);
        assert_eq!(f.headroom(), HEADROOM);
        let d = f.push_front(2).unwrap();
        d[0] = 9;
        assert_eq!(f.data(), &[9, 0, 1, 2, 3]);
        assert!(f.pull_front(2));
        assert_eq!(f.data(), &[1, 2, 3]);
        assert!(f.push_front(HEADROOM + 1).is_none());
        assert!(!f.pull_front(4));
        assert!(f.resize(10));
        assert_eq!(f.len(), 10);
        assert!(!f.resize(HEADROOM + MAX_FRAME_LEN));
    }

    #[test]
    fn oversized_input_is_truncated_not_panicking() {
        let big = vec![7u8; MAX_FRAME_LEN + 100];
        let f = Frame::from_bytes(&big);
        assert_eq!(f.len(), MAX_FRAME_LEN);
    }
}
