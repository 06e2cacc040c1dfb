//! BPF bytecode built at run time: the instruction encoding and the two
//! programs podrouterd loads, so it needs no C compiler, libbpf or bpftool
//! at build or run time (they are loaded with the `bpf()` system call, see
//! [`crate::sys::bpf`]):
//!
//! - the XDP program that hands every frame of an interface to
//!   podrouter's AF_XDP socket, in C terms
//!
//!   ```text
//!   return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
//!   ```
//!
//!   A frame whose queue has no socket in the map goes on to the kernel
//!   (`XDP_PASS`), so the program never drops anything by itself;
//! - the flow steering program of a multi-queue TAP
//!   ([`flow_steering_program`], see [`crate::mq`]), which picks the queue
//!   (so the worker) of each frame the kernel sends into the TAP from the
//!   frame's IPv4 addresses and TCP/UDP ports: every frame of a flow gets
//!   the same queue.
//!
//! The uplink's program ([`uplink_program`], for `uplink_xdp`) takes
//! only this node's tunnel traffic and passes everything else:
//!
//! ```text
//! if (len > max || len < min) return XDP_PASS;  // min: 34, VXLAN 42
//! if (eth.proto != IPv4 || ip.ver_ihl != 0x45) return XDP_PASS;
//! if (ip.frag_off & (MF | offset)) return XDP_PASS;   // the kernel reassembles
//! if (ip.daddr != node) return XDP_PASS;
//! if (ip.protocol != 4) return XDP_PASS;           // IPIP; VXLAN: 17, and
//! if (udp.dest != vxlan_port) return XDP_PASS;     // VXLAN only
//! return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
//! ```
//!
//! Invariants: pure (no I/O); an [`Insn`] has the layout of the kernel's
//! `struct bpf_insn` (8 bytes, little-endian fields on little-endian
//! hosts), so a slice of them is what `BPF_PROG_LOAD` takes.

/// The name every XDP program podrouterd loads carries (`ip link` and
/// `bpftool` show it); a restart replaces programs of this name.
pub const XDP_PROG_NAME: &str = "podrouter_xsk";

/// The licence string the program is loaded under (it calls no GPL-only
/// helper).
pub const LICENSE: &std::ffi::CStr = c"Apache-2.0";

/// One BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Instruction classes and fields (include/uapi/linux/bpf_common.h, bpf.h).
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_H: u8 = 0x08;
const BPF_B: u8 = 0x10;
const BPF_ADD: u8 = 0x00;
const BPF_JGT: u8 = 0x20;
const BPF_JLE: u8 = 0xb0;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_ABS: u8 = 0x20;
const BPF_IND: u8 = 0x40;
const BPF_MEM: u8 = 0x60;
const BPF_MUL: u8 = 0x20;
const BPF_AND: u8 = 0x50;
const BPF_LSH: u8 = 0x60;
const BPF_RSH: u8 = 0x70;
const BPF_XOR: u8 = 0xa0;
const BPF_MOV: u8 = 0xb0;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_JEQ: u8 = 0x10;
const BPF_JSET: u8 = 0x40;
const BPF_JNE: u8 = 0x50;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load whose immediate is a map fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// Registers.
pub const R0: u8 = 0;
pub const R1: u8 = 1;
pub const R2: u8 = 2;
pub const R3: u8 = 3;
pub const R4: u8 = 4;
pub const R5: u8 = 5;
pub const R6: u8 = 6;
pub const R7: u8 = 7;
pub const R8: u8 = 8;
/// The read-only frame pointer (top of the program's 512-byte stack).
pub const R10: u8 = 10;

/// Helper `bpf_redirect_map`.
pub const FN_REDIRECT_MAP: i32 = 51;
/// XDP verdict `XDP_PASS`.
pub const XDP_PASS: i32 = 2;
/// Offsets in `struct xdp_md`: `data`, `data_end`, `rx_queue_index`.
pub const XDP_MD_DATA: i16 = 0;
pub const XDP_MD_DATA_END: i16 = 4;
pub const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (dst & 0x0f) | (src << 4),
            off,
            imm,
        }
    }

    /// `dst = *(u32 *)(src + off)`
    pub const fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
    }

    /// `dst = *(u16 *)(src + off)` (host byte order)
    pub const fn load_u16(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(BPF_LDX | BPF_MEM | BPF_H, dst, src, off, 0)
    }

    /// `dst = *(u8 *)(src + off)`
    pub const fn load_u8(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(BPF_LDX | BPF_MEM | BPF_B, dst, src, off, 0)
    }

    /// `dst = src` (64-bit)
    pub const fn mov_reg(dst: u8, src: u8) -> Insn {
        Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
    }

    /// `dst += imm` (64-bit)
    pub const fn add_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm)
    }

    /// `dst &= imm` (64-bit)
    pub const fn and_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(BPF_ALU64 | BPF_AND | BPF_K, dst, 0, 0, imm)
    }

    /// `if (u32)dst != (u32)imm goto +off`
    pub const fn jne32_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(BPF_JMP32 | BPF_JNE | BPF_K, dst, 0, off, imm)
    }

    /// `if dst > src goto +off` (unsigned, 64-bit)
    pub const fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JGT | BPF_X, dst, src, off, 0)
    }

    /// `if dst <= src goto +off` (unsigned, 64-bit)
    pub const fn jle_reg(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JLE | BPF_X, dst, src, off, 0)
    }

    /// The same instruction jumping `off` ahead (for jumps patched once the
    /// target is known).
    const fn with_off(self, off: i16) -> Insn {
        Insn { off, ..self }
    }

    /// `dst = imm` (64-bit register, sign-extended immediate)
    pub const fn mov_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
    }

    /// `dst = map` (two instructions: a 64-bit immediate load of a map fd,
    /// which the verifier turns into the map's address).
    pub const fn load_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
        [
            Insn::new(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd),
            Insn::new(0, 0, 0, 0, 0),
        ]
    }

    /// `dst = src` (64-bit registers)
    pub const fn mov(dst: u8, src: u8) -> Insn {
        Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
    }

    /// `dst = imm` (64-bit immediate, two instructions)
    pub const fn load_imm64(dst: u8, imm: u64) -> [Insn; 2] {
        [
            Insn::new(BPF_LD | BPF_DW | BPF_IMM, dst, 0, 0, imm as u32 as i32),
            Insn::new(0, 0, 0, 0, (imm >> 32) as u32 as i32),
        ]
    }

    /// `dst *= src` (64-bit)
    pub const fn mul(dst: u8, src: u8) -> Insn {
        Insn::new(BPF_ALU64 | BPF_MUL | BPF_X, dst, src, 0, 0)
    }

    /// `dst ^= src` (64-bit)
    pub const fn xor(dst: u8, src: u8) -> Insn {
        Insn::new(BPF_ALU64 | BPF_XOR | BPF_X, dst, src, 0, 0)
    }

    /// `dst <<= imm` (64-bit)
    pub const fn lsh_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(BPF_ALU64 | BPF_LSH | BPF_K, dst, 0, 0, imm)
    }

    /// `dst >>= imm` (64-bit, logical)
    pub const fn rsh_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(BPF_ALU64 | BPF_RSH | BPF_K, dst, 0, 0, imm)
    }

    /// `r0 = ntohl(*(u32 *)(skb->data + off))`, `ntohs` of a u16, or a
    /// byte (`size` 4, 2 or 1): the legacy packet load of socket filters
    /// (the skb must be in r6; r1-r5 are clobbered; a load beyond the
    /// packet ends the program, returning 0).
    pub const fn load_abs(size: u8, off: i32) -> Insn {
        Insn::new(BPF_LD | BPF_ABS | size_bits(size), 0, 0, 0, off)
    }

    /// [`Insn::load_abs`] at `src + off`.
    pub const fn load_ind(size: u8, src: u8, off: i32) -> Insn {
        Insn::new(BPF_LD | BPF_IND | size_bits(size), 0, src, 0, off)
    }

    /// `if dst != imm goto +off`
    pub const fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JNE | BPF_K, dst, 0, off, imm)
    }

    /// `if dst == imm goto +off`
    pub const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JEQ | BPF_K, dst, 0, off, imm)
    }

    /// `if dst & imm goto +off`
    pub const fn jset_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JSET | BPF_K, dst, 0, off, imm)
    }

    /// `r0 = helper(r1, ..., r5)`
    pub const fn call(helper: i32) -> Insn {
        Insn::new(BPF_JMP | BPF_CALL, 0, 0, 0, helper)
    }

    /// `return r0`
    pub const fn exit() -> Insn {
        Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
    }

    /// The 8 bytes the kernel reads (little-endian host).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

const fn size_bits(size: u8) -> u8 {
    match size {
        1 => BPF_B,
        2 => BPF_H,
        _ => BPF_W,
    }
}

/// The name the steering program is loaded under.
pub const STEERING_PROG_NAME: &str = "podrouter_steer";

/// A multi-queue TAP's steering program (`TUNSETSTEERINGEBPF`, a socket
/// filter run on each frame the kernel transmits into the TAP; the tun
/// driver takes the low 16 bits of what it returns modulo the number of
/// queues). In C terms, on the Ethernet frame:
///
/// ```text
/// if (ethertype != IPv4) return 0;
/// h = saddr ^ daddr;
/// if (!(frag_off & (MF | offset)) && (protocol == TCP || protocol == UDP))
///     h ^= *(u32 *)(l4 header);          /* source port << 16 | dest port */
/// return (h * 0x9e3779b97f4a7c15) >> 48; /* Fibonacci hashing: top bits */
/// ```
///
/// The multiplication matters: Linux gives `connect()` even ephemeral
/// ports, so the clients' flows to one server differ only from bit 1 of
/// the source port up, and a plain fold of the bits would put them all
/// on one queue of two.
///
/// So every frame of one TCP or UDP flow, and every fragment of one
/// address pair, goes to one queue; a VXLAN packet's outer UDP source
/// port, which its sender derives from the inner flow (RFC 7348), spreads
/// the tunnelled flows. The kernel's own choice without a program (its
/// flow table) moves a flow to whichever queue last *wrote* a packet of
/// it, which would gather a pod's flows on that pod's worker; this does
/// not depend on what was written.
pub fn flow_steering_program() -> [Insn; 26] {
    const ETH: i32 = crate::wire::ETHERNET_HEADER_LEN as i32;
    let [k_lo, k_hi] = Insn::load_imm64(R1, 0x9e37_79b9_7f4a_7c15);
    [
        /* 0 */ Insn::mov(R6, R1), // the loads below read the skb in r6
        /* 1 */ Insn::load_abs(2, 12),
        /* 2 */ Insn::jne_imm(R0, 0x0800, 21), // not IPv4: to 24
        /* 3 */ Insn::load_abs(4, ETH + 12),
        /* 4 */ Insn::mov(R7, R0),
        /* 5 */ Insn::load_abs(4, ETH + 16),
        /* 6 */ Insn::xor(R7, R0),
        /* 7 */ Insn::load_abs(2, ETH + 6),
        /* 8 */ Insn::jset_imm(R0, 0x3fff, 9), // a fragment: to 18
        /* 9 */ Insn::load_abs(1, ETH + 9),
        /* 10 */ Insn::jeq_imm(R0, 6, 1), // TCP: to 12
        /* 11 */ Insn::jne_imm(R0, 17, 6), // not UDP: to 18
        /* 12 */ Insn::load_abs(1, ETH),
        /* 13 */ Insn::and_imm(R0, 0x0f),
        /* 14 */ Insn::lsh_imm(R0, 2),
        /* 15 */ Insn::mov(R8, R0), // the IPv4 header's length
        /* 16 */ Insn::load_ind(4, R8, ETH),
        /* 17 */ Insn::xor(R7, R0),
        /* 18 */ Insn::mov(R0, R7),
        /* 19 */ k_lo,
        /* 20 */ k_hi,
        /* 21 */ Insn::mul(R0, R1),
        /* 22 */ Insn::rsh_imm(R0, 48),
        /* 23 */ Insn::exit(),
        /* 24 */ Insn::mov_imm(R0, 0),
        /* 25 */ Insn::exit(),
    ]
}

/// The XDP program redirecting every frame to the socket at its receive
/// queue's index in the XSKMAP `map_fd`, or passing it to the kernel.
pub fn xsk_redirect_program(map_fd: i32) -> [Insn; 6] {
    let [ld_map, ld_map_hi] = Insn::load_map_fd(R1, map_fd);
    [
        // r2 = ctx->rx_queue_index (r1 is ctx on entry)
        Insn::load_u32(R2, R1, XDP_MD_RX_QUEUE_INDEX),
        // r1 = &xsks
        ld_map,
        ld_map_hi,
        // r3 = XDP_PASS: the verdict when the map has no socket there
        Insn::mov_imm(R3, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)
        Insn::call(FN_REDIRECT_MAP),
        Insn::exit(),
    ]
}

/// The name the IPIP GSO classifier is loaded under (`bpftool` shows it).
pub const IPIP_GSO_PROG_NAME: &str = "podrouter_ipgso";

/// Helpers of the IPIP GSO classifier (`enum bpf_func_id`).
const FN_SKB_STORE_BYTES: i32 = 9;
const FN_SKB_LOAD_BYTES: i32 = 26;
const FN_SKB_ADJUST_ROOM: i32 = 50;
const FN_REDIRECT_NEIGH: i32 = 152;
/// `BPF_ADJ_ROOM_MAC`: make or remove room right after the MAC header.
const ADJ_ROOM_MAC: i32 = 1;
/// `BPF_F_ADJ_ROOM_FIXED_GSO`: keep `gso_size` as it is.
const ADJ_ROOM_FIXED_GSO: i32 = 1 << 0;
/// `BPF_F_ADJ_ROOM_ENCAP_L3_IPV4`: the room is an outer IPv4 header
/// (marks the skb encapsulated, `SKB_GSO_IPXIP4`).
const ADJ_ROOM_ENCAP_L3_IPV4: i32 = 1 << 1;
/// tc verdict `TC_ACT_SHOT`: drop.
const TC_ACT_SHOT: i32 = 2;

/// The IPIP GSO classifier (tcx ingress of podrouterd's IPIP TAP, see
/// [`crate::ipip_gso`]). Every frame podrouterd writes there is Ethernet +
/// outer IPv4 (protocol 4) + inner IPv4 + TCP, a TCP GSO packet as the
/// TAP's virtio header made it: typed plain `SKB_GSO_TCPV4`, which a
/// device would cut at the outer headers. The program re-types it as an
/// IPIP packet, so the kernel's `ipip_gso_segment` cuts it right wherever
/// a device cannot carry it whole, and sends it out of `uplink_ifindex`
/// after a route and neighbour lookup of the outer destination. In C
/// terms:
///
/// ```text
/// __u8 outer[20];
/// if (bpf_skb_load_bytes(skb, 14, outer, 20)) return TC_ACT_SHOT;
/// if (outer[0] != 0x45 || outer[9] != IPPROTO_IPIP) return TC_ACT_SHOT;
/// /* pop the outer header: the network header is now the inner one */
/// if (bpf_skb_adjust_room(skb, -20, BPF_ADJ_ROOM_MAC, FIXED_GSO)) return TC_ACT_SHOT;
/// /* push it back as encapsulation: inner headers set, SKB_GSO_IPXIP4 */
/// if (bpf_skb_adjust_room(skb, 20, BPF_ADJ_ROOM_MAC, FIXED_GSO | ENCAP_L3_IPV4))
///     return TC_ACT_SHOT;
/// if (bpf_skb_store_bytes(skb, 14, outer, 20, 0)) return TC_ACT_SHOT;
/// return bpf_redirect_neigh(uplink_ifindex, NULL, 0, 0);
/// ```
///
/// Nothing else ever reaches the TAP's ingress (only podrouterd writes
/// it), so everything that is not such a frame is dropped.
pub fn ipip_gso_program(uplink_ifindex: u32) -> Vec<Insn> {
    const ETH: i32 = crate::wire::ETHERNET_HEADER_LEN as i32;
    const OUTER: i32 = crate::wire::IPV4_HEADER_LEN as i32;
    /// Where the outer header is kept on the stack.
    const SAVED: i16 = -24;
    let mut p = Vec::with_capacity(40);
    let mut to_drop = Vec::new();
    let mut jump_to_drop = |p: &mut Vec<Insn>, insn: Insn| {
        to_drop.push(p.len());
        p.push(insn);
    };
    p.push(Insn::mov(R6, R1)); // r6 = skb
                               // bpf_skb_load_bytes(skb, 14, fp - 24, 20)
    p.push(Insn::mov(R1, R6));
    p.push(Insn::mov_imm(R2, ETH));
    p.push(Insn::mov(R3, R10));
    p.push(Insn::add_imm(R3, i32::from(SAVED)));
    p.push(Insn::mov_imm(R4, OUTER));
    p.push(Insn::call(FN_SKB_LOAD_BYTES));
    jump_to_drop(&mut p, Insn::jne_imm(R0, 0, 0));
    p.push(Insn::load_u8(R1, R10, SAVED));
    jump_to_drop(&mut p, Insn::jne_imm(R1, 0x45, 0));
    p.push(Insn::load_u8(R1, R10, SAVED + 9));
    jump_to_drop(&mut p, Insn::jne_imm(R1, 4, 0));
    // bpf_skb_adjust_room(skb, -20, MAC, FIXED_GSO)
    p.push(Insn::mov(R1, R6));
    p.push(Insn::mov_imm(R2, -OUTER));
    p.push(Insn::mov_imm(R3, ADJ_ROOM_MAC));
    p.push(Insn::mov_imm(R4, ADJ_ROOM_FIXED_GSO));
    p.push(Insn::call(FN_SKB_ADJUST_ROOM));
    jump_to_drop(&mut p, Insn::jne_imm(R0, 0, 0));
    // bpf_skb_adjust_room(skb, 20, MAC, FIXED_GSO | ENCAP_L3_IPV4)
    p.push(Insn::mov(R1, R6));
    p.push(Insn::mov_imm(R2, OUTER));
    p.push(Insn::mov_imm(R3, ADJ_ROOM_MAC));
    p.push(Insn::mov_imm(
        R4,
        ADJ_ROOM_FIXED_GSO | ADJ_ROOM_ENCAP_L3_IPV4,
    ));
    p.push(Insn::call(FN_SKB_ADJUST_ROOM));
    jump_to_drop(&mut p, Insn::jne_imm(R0, 0, 0));
    // bpf_skb_store_bytes(skb, 14, fp - 24, 20, 0)
    p.push(Insn::mov(R1, R6));
    p.push(Insn::mov_imm(R2, ETH));
    p.push(Insn::mov(R3, R10));
    p.push(Insn::add_imm(R3, i32::from(SAVED)));
    p.push(Insn::mov_imm(R4, OUTER));
    p.push(Insn::mov_imm(R5, 0));
    p.push(Insn::call(FN_SKB_STORE_BYTES));
    jump_to_drop(&mut p, Insn::jne_imm(R0, 0, 0));
    // return bpf_redirect_neigh(uplink_ifindex, NULL, 0, 0)
    p.push(Insn::mov_imm(R1, uplink_ifindex as i32));
    p.push(Insn::mov_imm(R2, 0));
    p.push(Insn::mov_imm(R3, 0));
    p.push(Insn::mov_imm(R4, 0));
    p.push(Insn::call(FN_REDIRECT_NEIGH));
    p.push(Insn::exit());
    let drop = p.len();
    p.push(Insn::mov_imm(R0, TC_ACT_SHOT));
    p.push(Insn::exit());
    for i in to_drop {
        p[i] = p[i].with_off((drop - i - 1) as i16);
    }
    p
}

/// What the uplink's XDP program takes besides IPv4 to the node: the
/// configured tunnel's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkTunnel {
    /// IP protocol 4.
    Ipip,
    /// UDP to this destination port (the VXLAN port).
    Vxlan { port: u16 },
}

impl UplinkTunnel {
    /// Shortest frame the program looks into: Ethernet and an IPv4 header
    /// without options, and for VXLAN the UDP header.
    const fn min_frame(self) -> i32 {
        match self {
            UplinkTunnel::Ipip => 14 + 20,
            UplinkTunnel::Vxlan { .. } => 14 + 20 + 8,
        }
    }

    const fn protocol(self) -> i32 {
        match self {
            UplinkTunnel::Ipip => 4,
            UplinkTunnel::Vxlan { .. } => 17,
        }
    }
}

/// The uplink's XDP program for IPIP: [`uplink_program`] with
/// [`UplinkTunnel::Ipip`].
pub fn uplink_ipip_program(map_fd: i32, node: std::net::Ipv4Addr, max_frame: u16) -> Vec<Insn> {
    uplink_program(map_fd, node, max_frame, UplinkTunnel::Ipip)
}

/// The uplink's XDP program: `tunnel`'s packets (IPIP: protocol 4; VXLAN:
/// UDP to its port) addressed to `node`, whole (no fragment), IPv4
/// without options, at most `max_frame` bytes with their Ethernet header,
/// go to the socket at their receive queue's index in the XSKMAP `map_fd`
/// (or on to the kernel if there is none); everything else goes on to the
/// kernel (`XDP_PASS`). The node's own traffic, ARP, other UDP ports,
/// fragments and anything too long for a UMEM chunk are never taken from
/// the host.
pub fn uplink_program(
    map_fd: i32,
    node: std::net::Ipv4Addr,
    max_frame: u16,
    tunnel: UplinkTunnel,
) -> Vec<Insn> {
    // Loads are in host (little-endian) byte order: compare with the wire
    // bytes read the same way.
    let ethertype_ipv4 = i32::from(u16::from_le_bytes([0x08, 0x00]));
    // MF and the 13-bit offset of the big-endian flags/offset field.
    let frag_mask = i32::from(u16::from_le_bytes([0x3f, 0xff]));
    let node_le = u32::from_le_bytes(node.octets()) as i32;
    let mut p = Vec::with_capacity(32);
    let mut to_pass = Vec::new();
    let mut jump_to_pass = |p: &mut Vec<Insn>, insn: Insn| {
        to_pass.push(p.len());
        p.push(insn);
    };
    // r2 = data, r3 = data_end (r1 stays ctx)
    p.push(Insn::load_u32(R2, R1, XDP_MD_DATA));
    p.push(Insn::load_u32(R3, R1, XDP_MD_DATA_END));
    // Too long for a chunk: the kernel's path takes it whole.
    p.push(Insn::mov_reg(R4, R2));
    p.push(Insn::add_imm(R4, i32::from(max_frame) + 1));
    jump_to_pass(&mut p, Insn::jle_reg(R4, R3, 0));
    // Too short for Ethernet + IPv4 (+ UDP).
    p.push(Insn::mov_reg(R4, R2));
    p.push(Insn::add_imm(R4, tunnel.min_frame()));
    jump_to_pass(&mut p, Insn::jgt_reg(R4, R3, 0));
    p.push(Insn::load_u16(R5, R2, 12));
    jump_to_pass(&mut p, Insn::jne32_imm(R5, ethertype_ipv4, 0));
    p.push(Insn::load_u8(R5, R2, 14));
    jump_to_pass(&mut p, Insn::jne32_imm(R5, 0x45, 0));
    p.push(Insn::load_u16(R5, R2, 14 + 6));
    p.push(Insn::and_imm(R5, frag_mask));
    jump_to_pass(&mut p, Insn::jne32_imm(R5, 0, 0));
    p.push(Insn::load_u32(R5, R2, 14 + 16));
    jump_to_pass(&mut p, Insn::jne32_imm(R5, node_le, 0));
    p.push(Insn::load_u8(R5, R2, 14 + 9));
    jump_to_pass(&mut p, Insn::jne32_imm(R5, tunnel.protocol(), 0));
    if let UplinkTunnel::Vxlan { port } = tunnel {
        // The UDP destination port (the length check covered it).
        p.push(Insn::load_u16(R5, R2, 14 + 20 + 2));
        let port_le = i32::from(u16::from_le_bytes(port.to_be_bytes()));
        jump_to_pass(&mut p, Insn::jne32_imm(R5, port_le, 0));
    }
    // return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)
    p.push(Insn::load_u32(R2, R1, XDP_MD_RX_QUEUE_INDEX));
    p.extend(Insn::load_map_fd(R1, map_fd));
    p.push(Insn::mov_imm(R3, XDP_PASS));
    p.push(Insn::call(FN_REDIRECT_MAP));
    p.push(Insn::exit());
    // pass: return XDP_PASS
    let pass = p.len();
    p.push(Insn::mov_imm(R0, XDP_PASS));
    p.push(Insn::exit());
    for i in to_pass {
        p[i] = p[i].with_off((pass - i - 1) as i16);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insn_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::align_of::<Insn>(), 4);
    }

    /// The bytes spelled out by hand from the kernel's instruction-set
    /// document (Documentation/bpf/standardization/instruction-set.rst),
    /// with map fd 7; the privileged test in `afxdp` proves the kernel's
    /// verifier accepts the program.
    #[test]
    fn redirect_program_golden_bytes() {
        let bytes: Vec<[u8; 8]> = xsk_redirect_program(7)
            .iter()
            .map(|i| i.to_bytes())
            .collect();
        assert_eq!(
            bytes,
            vec![
                [0x61, 0x12, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00], // r2 = *(u32 *)(r1 + 16)
                [0x18, 0x11, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00], // r1 = map fd 7 ll
                [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
                [0xb7, 0x03, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00], // r3 = 2
                [0x85, 0x00, 0x00, 0x00, 0x33, 0x00, 0x00, 0x00], // call 51
                [0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // exit
            ]
        );
    }

    /// Every jump of the steering program lands inside it, and each path
    /// ends at an exit; spot-checked bytes from the instruction-set
    /// document (the privileged test in `mq` proves the verifier takes
    /// it and the kernel spreads flows with it).
    #[test]
    fn steering_program_jumps_land_inside_and_bytes_match_the_encoding() {
        let p = flow_steering_program();
        let jumps: Vec<(usize, usize)> = p
            .iter()
            .enumerate()
            .filter(|(_, i)| i.code & 0x07 == BPF_JMP && i.code != 0x95)
            .map(|(at, i)| (at, (at as i64 + 1 + i64::from(i.off)) as usize))
            .collect();
        assert_eq!(jumps, vec![(2, 24), (8, 18), (10, 12), (11, 18)]);
        assert_eq!(p[23], Insn::exit());
        assert_eq!(p[25], Insn::exit());
        let b = |i: usize| p[i].to_bytes();
        assert_eq!(b(0), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]); // r6 = r1
        assert_eq!(b(1), [0x28, 0, 0, 0, 12, 0, 0, 0]); // r0 = ldabsh 12
        assert_eq!(b(3), [0x20, 0, 0, 0, 26, 0, 0, 0]); // r0 = ldabsw 26
        assert_eq!(b(9), [0x30, 0, 0, 0, 23, 0, 0, 0]); // r0 = ldabsb 23
        assert_eq!(b(16), [0x40, 0x80, 0, 0, 14, 0, 0, 0]); // r0 = ldindw r8 + 14
        assert_eq!(b(8), [0x45, 0, 9, 0, 0xff, 0x3f, 0, 0]); // if r0 & 0x3fff goto +9
        assert_eq!(b(19), [0x18, 0x01, 0, 0, 0x15, 0x7c, 0x4a, 0x7f]); // r1 = K ll
        assert_eq!(b(20), [0, 0, 0, 0, 0xb9, 0x79, 0x37, 0x9e]);
        assert_eq!(b(21), [0x2f, 0x10, 0, 0, 0, 0, 0, 0]); // r0 *= r1
        assert_eq!(b(22), [0x77, 0, 0, 0, 48, 0, 0, 0]); // r0 >>= 48
    }

    /// The uplink program's checks, spelled out from the instruction-set
    /// document: every jump lands on the `XDP_PASS` exit, the constants
    /// compare with the wire bytes as a little-endian load reads them.
    /// The privileged test in `xdp_uplink` proves the verifier takes it.
    #[test]
    fn uplink_program_golden_bytes() {
        let node = std::net::Ipv4Addr::new(192, 168, 57, 200);
        let p = uplink_ipip_program(9, node, 1514);
        let bytes: Vec<[u8; 8]> = p.iter().map(|i| i.to_bytes()).collect();
        let pass = p.len() - 2;
        assert_eq!(bytes[pass], [0xb7, 0, 0, 0, 2, 0, 0, 0], "r0 = XDP_PASS");
        assert_eq!(bytes[pass + 1], [0x95, 0, 0, 0, 0, 0, 0, 0], "exit");
        assert_eq!(bytes[0], [0x61, 0x12, 0, 0, 0, 0, 0, 0], "r2 = ctx->data");
        assert_eq!(
            bytes[1],
            [0x61, 0x13, 4, 0, 0, 0, 0, 0],
            "r3 = ctx->data_end"
        );
        assert_eq!(bytes[3], [0x07, 0x04, 0, 0, 0xeb, 0x05, 0, 0], "r4 += 1515");
        assert_eq!(bytes[4][..2], [0xbd, 0x34], "if r4 <= r3");
        assert_eq!(bytes[7][..2], [0x2d, 0x34], "if r4 > r3");
        // Every conditional jump goes to the pass block.
        let mut jumps = 0;
        for (i, insn) in p.iter().enumerate() {
            if matches!(insn.code & 0x07, BPF_JMP | BPF_JMP32)
                && insn.code & 0xf0 != BPF_CALL
                && insn.code & 0xf0 != BPF_EXIT
            {
                assert_eq!(
                    i as i64 + 1 + i64::from(insn.off),
                    pass as i64,
                    "jump at {i}"
                );
                jumps += 1;
            }
        }
        assert_eq!(jumps, 7);
        let has = |b: [u8; 8]| bytes.contains(&b);
        // ethertype 0x0800 read little-endian: 0x0008
        let jne32_r5 = |imm: [u8; 4]| {
            bytes
                .iter()
                .any(|b| b[..2] == [0x56, 0x05] && b[4..] == imm)
        };
        assert!(jne32_r5([0x08, 0, 0, 0]));
        // destination 192.168.57.200 as a little-endian u32
        assert!(jne32_r5([192, 168, 57, 200]));
        assert!(jne32_r5([0x45, 0, 0, 0]));
        // frag mask: 0x3fff big-endian
        assert!(has([0x57, 0x05, 0, 0, 0x3f, 0xff, 0, 0]));
        // protocol 4, then the redirect
        assert!(jne32_r5([4, 0, 0, 0]));
        assert_eq!(bytes[pass - 6], [0x61, 0x12, 0x10, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[pass - 5], [0x18, 0x11, 0, 0, 9, 0, 0, 0]);
        assert_eq!(bytes[pass - 2], [0x85, 0, 0, 0, 0x33, 0, 0, 0]);
    }

    /// The VXLAN variant: the IPIP checks with protocol 17, a frame long
    /// enough for the UDP header, and one more check (the UDP destination
    /// port, read little-endian) before the redirect; every jump still
    /// lands on the pass block.
    #[test]
    fn uplink_vxlan_program_checks_the_udp_port() {
        let node = std::net::Ipv4Addr::new(192, 168, 57, 200);
        let p = uplink_program(9, node, 1514, UplinkTunnel::Vxlan { port: 4789 });
        let bytes: Vec<[u8; 8]> = p.iter().map(|i| i.to_bytes()).collect();
        let pass = p.len() - 2;
        assert_eq!(bytes[pass], [0xb7, 0, 0, 0, 2, 0, 0, 0], "r0 = XDP_PASS");
        assert_eq!(bytes[6], [0x07, 0x04, 0, 0, 42, 0, 0, 0], "r4 += 42");
        let mut jumps = 0;
        for (i, insn) in p.iter().enumerate() {
            if matches!(insn.code & 0x07, BPF_JMP | BPF_JMP32)
                && insn.code & 0xf0 != BPF_CALL
                && insn.code & 0xf0 != BPF_EXIT
            {
                assert_eq!(i as i64 + 1 + i64::from(insn.off), pass as i64, "jump {i}");
                jumps += 1;
            }
        }
        assert_eq!(jumps, 8);
        let jne32_r5 = |imm: [u8; 4]| {
            bytes
                .iter()
                .position(|b| b[..2] == [0x56, 0x05] && b[4..] == imm)
        };
        let udp = jne32_r5([17, 0, 0, 0]).expect("protocol 17");
        assert_eq!(jne32_r5([4, 0, 0, 0]), None, "no IPIP check");
        // r5 = *(u16 *)(data + 36); if r5 != 4789 (0x12b5 big-endian)
        assert_eq!(bytes[udp + 1], [0x69, 0x25, 36, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[udp + 2][4..], [0x12, 0xb5, 0, 0]);
        assert_eq!(bytes[udp + 3], [0x61, 0x12, 0x10, 0, 0, 0, 0, 0]);
        // IPIP is unchanged by the VXLAN variant's existence.
        assert_eq!(
            uplink_ipip_program(9, node, 1514),
            uplink_program(9, node, 1514, UplinkTunnel::Ipip)
        );
    }

    /// The IPIP GSO classifier, from the instruction-set document: every
    /// conditional jump lands on the `TC_ACT_SHOT` exit, the helpers are
    /// called in order with the flags the module documents. The
    /// privileged test in `ipip_gso` proves the verifier takes it and
    /// the kernel does what it says.
    #[test]
    fn ipip_gso_program_golden_bytes() {
        let p = ipip_gso_program(7);
        let bytes: Vec<[u8; 8]> = p.iter().map(|i| i.to_bytes()).collect();
        assert_eq!(p.len(), 40);
        let drop = p.len() - 2;
        assert_eq!(bytes[drop], [0xb7, 0, 0, 0, 2, 0, 0, 0], "r0 = TC_ACT_SHOT");
        assert_eq!(bytes[drop + 1], [0x95, 0, 0, 0, 0, 0, 0, 0], "exit");
        let mut jumps = 0;
        for (i, insn) in p.iter().enumerate() {
            if insn.code & 0x07 == BPF_JMP
                && insn.code & 0xf0 != BPF_CALL
                && insn.code & 0xf0 != BPF_EXIT
            {
                assert_eq!(
                    i as i64 + 1 + i64::from(insn.off),
                    drop as i64,
                    "jump at {i}"
                );
                jumps += 1;
            }
        }
        assert_eq!(jumps, 6);
        let calls: Vec<i32> = p.iter().filter(|i| i.code == 0x85).map(|i| i.imm).collect();
        assert_eq!(calls, vec![26, 50, 50, 9, 152]);
        assert_eq!(bytes[0], [0xbf, 0x16, 0, 0, 0, 0, 0, 0], "r6 = r1");
        // r1 = *(u8 *)(r10 - 24): the saved version/IHL byte
        assert!(bytes.contains(&[0x71, 0xa1, 0xe8, 0xff, 0, 0, 0, 0]));
        // r2 = -20, r4 = FIXED_GSO; r4 = FIXED_GSO | ENCAP_L3_IPV4
        assert!(bytes.contains(&[0xb7, 0x02, 0, 0, 0xec, 0xff, 0xff, 0xff]));
        assert!(bytes.contains(&[0xb7, 0x04, 0, 0, 1, 0, 0, 0]));
        assert!(bytes.contains(&[0xb7, 0x04, 0, 0, 3, 0, 0, 0]));
        // r1 = uplink ifindex, then the redirect's verdict is returned
        assert_eq!(bytes[drop - 6], [0xb7, 0x01, 0, 0, 7, 0, 0, 0]);
        assert_eq!(bytes[drop - 1], [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn registers_pack_dst_low_src_high() {
        let i = Insn::load_u32(R2, R1, -4);
        assert_eq!(i.regs, 0x12);
        assert_eq!(i.to_bytes()[2..4], (-4i16).to_le_bytes());
    }
}
