//! BPF bytecode built at run time: the instruction encoding and the XDP
//! program that hands every frame of an interface to podrouter's AF_XDP
//! socket, so podrouterd needs no C compiler, libbpf or bpftool at build
//! or run time (the program is loaded with the `bpf()` system call, see
//! [`crate::sys::bpf`]).
//!
//! The program, in C terms:
//!
//! ```text
//! return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
//! ```
//!
//! A frame whose queue has no socket in the map goes on to the kernel
//! (`XDP_PASS`), so the program never drops anything by itself.
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
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_MOV: u8 = 0xb0;
const BPF_K: u8 = 0x00;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load whose immediate is a map fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// Registers.
pub const R0: u8 = 0;
pub const R1: u8 = 1;
pub const R2: u8 = 2;
pub const R3: u8 = 3;

/// Helper `bpf_redirect_map`.
pub const FN_REDIRECT_MAP: i32 = 51;
/// XDP verdict `XDP_PASS`.
pub const XDP_PASS: i32 = 2;
/// Offset of `rx_queue_index` in `struct xdp_md`.
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

    #[test]
    fn registers_pack_dst_low_src_high() {
        let i = Insn::load_u32(R2, R1, -4);
        assert_eq!(i.regs, 0x12);
        assert_eq!(i.to_bytes()[2..4], (-4i16).to_le_bytes());
    }
}
