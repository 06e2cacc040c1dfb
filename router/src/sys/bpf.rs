//! The `bpf()` system call, for the few commands podrouter needs to load
//! and attach its XDP program without libbpf: create an XSKMAP and set
//! its entries, load a program, attach it to an interface as a BPF link,
//! and find (by id) the links and programs already attached, to replace
//! a program a previous podrouterd left behind; and to load the socket
//! filter that steers a multi-queue TAP's flows ([`socket_filter_load`]);
//! and to load and attach the IPIP GSO classifier as a tcx link
//! ([`sched_cls_load`], [`tcx_ingress_link_create`]).
//!
//! Invariants: each command's attribute block is a `#[repr(C)]` struct
//! laid out as the matching member of the kernel's `union bpf_attr`
//! (zeroed, then filled), passed with its own size; the kernel treats the
//! bytes it knows beyond that size as zero. Returned descriptors are owned
//! (`OwnedFd`, close-on-exec, as the kernel makes them).
use std::ffi::CStr;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::bpf::Insn;

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_LINK_CREATE: libc::c_int = 28;
const BPF_LINK_GET_FD_BY_ID: libc::c_int = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_int = 31;
const BPF_LINK_DETACH: libc::c_int = 34;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_PROG_TYPE_SCHED_CLS`: a tc (or tcx) classifier on an skb.
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `enum bpf_attach_type`: BPF_TCX_INGRESS (Linux 6.6+).
const BPF_TCX_INGRESS: u32 = 46;
/// `enum bpf_attach_type`: BPF_XDP.
const BPF_XDP: u32 = 37;
/// `enum bpf_link_type`: BPF_LINK_TYPE_XDP.
const BPF_LINK_TYPE_XDP: u32 = 6;

/// `XDP_FLAGS_SKB_MODE`: generic XDP (in the kernel's skb path).
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP in the driver.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Size of the verifier log kept when a load fails.
const LOG_SIZE: usize = 16 * 1024;

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is an exclusively borrowed, fully initialised
    // repr(C) attribute block of the size passed; every pointer inside it
    // (set by the callers below) points to memory live for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            mem::size_of::<T>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn fd_result(r: i64) -> OwnedFd {
    // SAFETY: the command returns a new descriptor that nobody else owns.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (d, s) in out.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    out
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates an XSKMAP of `entries` slots (key: queue index).
pub fn xskmap_create(name: &str, entries: u32) -> io::Result<OwnedFd> {
    let mut a = MapCreateAttr {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_name: name16(name),
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut a).map(fd_result)
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Puts socket `xsk` at `key` of XSKMAP `map`.
pub fn xskmap_set(map: BorrowedFd<'_>, key: u32, xsk: BorrowedFd<'_>) -> io::Result<()> {
    let value: u32 = xsk.as_raw_fd() as u32;
    let mut a = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Clears `key` of XSKMAP `map` (`ENOENT` if it was empty).
pub fn xskmap_clear(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    let mut a = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_DELETE_ELEM, &mut a).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads an XDP program. On a verifier rejection the error carries the
/// verifier's log.
pub fn xdp_prog_load(name: &str, insns: &[Insn], license: &CStr) -> io::Result<OwnedFd> {
    prog_load(BPF_PROG_TYPE_XDP, BPF_XDP, 0, name, insns, license)
}

/// `BPF_F_XDP_HAS_FRAGS`: the program takes frames spread over several
/// buffers (multi-buffer XDP); a device may then carry frames larger
/// than a page (veth raises its peer's largest MTU).
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

/// Loads an XDP program that takes multi-buffer frames
/// (`BPF_F_XDP_HAS_FRAGS`). On a verifier rejection the error carries
/// the verifier's log.
pub fn xdp_frags_prog_load(name: &str, insns: &[Insn], license: &CStr) -> io::Result<OwnedFd> {
    prog_load(
        BPF_PROG_TYPE_XDP,
        BPF_XDP,
        BPF_F_XDP_HAS_FRAGS,
        name,
        insns,
        license,
    )
}

/// Loads a socket filter program (what `TUNSETSTEERINGEBPF` takes). On a
/// verifier rejection the error carries the verifier's log.
pub fn socket_filter_load(name: &str, insns: &[Insn], license: &CStr) -> io::Result<OwnedFd> {
    prog_load(BPF_PROG_TYPE_SOCKET_FILTER, 0, 0, name, insns, license)
}

/// Loads a tc classifier (`BPF_PROG_TYPE_SCHED_CLS`), for a tcx link
/// ([`tcx_ingress_link_create`]). On a verifier rejection the error
/// carries the verifier's log.
pub fn sched_cls_load(name: &str, insns: &[Insn], license: &CStr) -> io::Result<OwnedFd> {
    prog_load(BPF_PROG_TYPE_SCHED_CLS, 0, 0, name, insns, license)
}

fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    prog_flags: u32,
    name: &str,
    insns: &[Insn],
    license: &CStr,
) -> io::Result<OwnedFd> {
    let mut a = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name16(name),
        expected_attach_type,
        prog_flags,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut a) {
        Ok(r) => Ok(fd_result(r)),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // Load again with the log on, only to explain the failure.
            let mut log = vec![0u8; LOG_SIZE];
            a.log_level = 1;
            a.log_size = LOG_SIZE as u32;
            a.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut a).map(fd_result);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(io::Error::new(
                e.kind(),
                format!(
                    "BPF_PROG_LOAD: {e}; verifier: {}",
                    String::from_utf8_lossy(&log[..end]).trim()
                ),
            ))
        }
        Err(e) => Err(e),
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// Attaches XDP program `prog` to interface `ifindex` as a BPF link, in
/// the mode `flags` asks for ([`XDP_FLAGS_DRV_MODE`] or
/// [`XDP_FLAGS_SKB_MODE`]). The program stays attached while the link's
/// descriptor is open (and no longer: a killed podrouterd leaves none).
/// `EBUSY` if the interface already has an XDP program.
pub fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut a = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &mut a).map(fd_result)
}

/// Attaches tc classifier `prog` to the ingress of interface `ifindex`
/// as a tcx BPF link (Linux 6.6+; no qdisc, no netlink), after whatever
/// tcx programs are already there. The program stays attached while the
/// link's descriptor is open (and no longer: a killed podrouterd leaves
/// none).
pub fn tcx_ingress_link_create(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    let mut a = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &mut a).map(fd_result)
}

#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Ids of every BPF link in the system, in order.
pub fn link_ids() -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut a = IdAttr::default();
    loop {
        match bpf(BPF_LINK_GET_NEXT_ID, &mut a) {
            Ok(_) => {
                ids.push(a.next_id);
                a.id = a.next_id;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(e),
        }
    }
}

/// Opens the link with id `id`.
pub fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut a = IdAttr {
        id,
        ..Default::default()
    };
    bpf(BPF_LINK_GET_FD_BY_ID, &mut a).map(fd_result)
}

fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut a = IdAttr {
        id,
        ..Default::default()
    };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut a).map(fd_result)
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    let mut a = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: mem::size_of::<T>() as u32,
        info: (info as *mut T) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map(drop)
}

/// `struct bpf_link_info` up to the XDP member of its union.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    xdp_ifindex: u32,
    _rest: [u32; 7],
}

/// `struct bpf_prog_info` up to the program's name.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

/// An XDP link as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpLinkInfo {
    pub link_id: u32,
    pub prog_id: u32,
    pub ifindex: u32,
}

/// What link `fd` is: `Some` for an XDP link.
pub fn xdp_link_info(fd: BorrowedFd<'_>) -> io::Result<Option<XdpLinkInfo>> {
    let mut info = LinkInfo::default();
    obj_info(fd, &mut info)?;
    Ok(
        (info.link_type == BPF_LINK_TYPE_XDP).then_some(XdpLinkInfo {
            link_id: info.id,
            prog_id: info.prog_id,
            ifindex: info.xdp_ifindex,
        }),
    )
}

/// The id of program `fd` (as `ip link` shows it).
pub fn prog_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = ProgInfo::default();
    obj_info(fd, &mut info)?;
    Ok(info.id)
}

/// The name of the program with id `id`.
pub fn prog_name_by_id(id: u32) -> io::Result<String> {
    let fd = prog_fd_by_id(id)?;
    let mut info = ProgInfo::default();
    obj_info(fd.as_fd(), &mut info)?;
    let end = info.name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&info.name[..end]).into_owned())
}

/// Detaches link `fd` from its interface (the link object lives on, empty,
/// until its last descriptor closes).
pub fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = IdAttr {
        id: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_DETACH, &mut a).map(drop)
}
