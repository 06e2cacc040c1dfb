//! Frames spread over several UMEM chunks (multi-buffer AF_XDP,
//! `XDP_USE_SG`): gathering a receive chain into one frame, and cutting a
//! frame to transmit into chunk-sized pieces.
//!
//! The kernel's rules (`Documentation/networking/af_xdp.rst`,
//! "Multi-Buffer Support"): every descriptor of a frame but the last has
//! `XDP_PKT_CONTD` in its `options`; on receive the kernel puts only whole
//! frames on the RX ring (all their descriptors, or none if the ring has no
//! room for all), though a reader may see a frame's first descriptors in
//! one batch and the rest in the next; on transmit, an invalid descriptor
//! makes the rest of its frame invalid, and copy mode takes at most
//! `MAX_SKB_FRAGS + 1` descriptors a frame (at least 18 on any kernel).
//!
//! Invariants: [`Gather`] never hands the pipeline part of a frame: a
//! chain longer than the port's largest frame, one with a descriptor
//! outside its chunk, or one cut off (the caller says so with
//! [`Gather::cut`]) is dropped whole and counted once, and what follows it
//! up to its last descriptor is skipped. Gathering copies straight into
//! the worker's [`Frame`]: no scratch buffer, no allocation.
use crate::frame::{Frame, VnetHdr};

/// Most descriptors a transmitted frame may take in copy mode on any
/// kernel (`CONFIG_MAX_SKB_FRAGS` is at least 17).
pub const MAX_TX_PIECES: usize = 18;

/// What one receive descriptor did to the frame being gathered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The frame is complete in the output frame.
    Frame,
    /// More descriptors of this frame follow.
    More,
    /// The frame was dropped (counted once, on its first bad descriptor).
    Dropped,
    /// A descriptor of a frame dropped earlier, skipped.
    Skipped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames.
    Idle,
    /// This many bytes of a frame are in the output frame.
    Building(usize),
    /// Skipping to the last descriptor of a dropped frame.
    Discarding,
}

/// Gathers receive descriptors into frames (see the module documentation).
#[derive(Debug)]
pub struct Gather {
    /// Largest frame accepted (Ethernet header included).
    max: usize,
    state: State,
}

impl Gather {
    pub fn new(max_frame: usize) -> Gather {
        Gather {
            max: max_frame,
            state: State::Idle,
        }
    }

    /// Takes one descriptor's bytes (`None`: the descriptor did not lie
    /// inside one chunk) and whether the frame continues after it; writes
    /// into `out`, which must be the same frame until [`Step::Frame`] or
    /// [`Step::Dropped`].
    pub fn piece(&mut self, bytes: Option<&[u8]>, contd: bool, out: &mut Frame) -> Step {
        let start = match self.state {
            State::Discarding => {
                if !contd {
                    self.state = State::Idle;
                }
                return Step::Skipped;
            }
            State::Idle => 0,
            State::Building(len) => len,
        };
        let fits = bytes.filter(|b| start + b.len() <= self.max);
        let Some(b) = fits else {
            self.state = if contd {
                State::Discarding
            } else {
                State::Idle
            };
            return Step::Dropped;
        };
        if start == 0 {
            out.load(b, VnetHdr::default());
        } else {
            // Room checked: start + len <= max <= the frame's capacity.
            if !out.resize(start + b.len()) {
                self.state = if contd {
                    State::Discarding
                } else {
                    State::Idle
                };
                return Step::Dropped;
            }
            out.data_mut()[start..].copy_from_slice(b);
        }
        if contd {
            self.state = State::Building(start + b.len());
            Step::More
        } else {
            self.state = State::Idle;
            Step::Frame
        }
    }

    /// The RX ring ran dry in the middle of a frame (the kernel publishes
    /// whole frames, so only a kernel that broke its rule gets here): the
    /// frame is dropped, and its remaining descriptors will be skipped.
    /// True if a frame was being gathered (count it).
    pub fn cut(&mut self) -> bool {
        if let State::Building(_) = self.state {
            self.state = State::Discarding;
            true
        } else {
            false
        }
    }

    /// Whether a frame is partly gathered.
    #[cfg(test)]
    pub fn in_frame(&self) -> bool {
        matches!(self.state, State::Building(_))
    }
}

/// How many chunks of `chunk_size` bytes a frame of `len` bytes takes.
pub fn pieces(len: usize, chunk_size: usize) -> usize {
    len.div_ceil(chunk_size).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame::new()
    }

    #[test]
    fn a_chain_is_gathered_into_one_frame_and_a_single_descriptor_is_a_frame() {
        let mut g = Gather::new(9014);
        let mut out = frame();
        let a = vec![1u8; 3840];
        let b = vec![2u8; 3840];
        let c = vec![3u8; 1334];
        assert_eq!(g.piece(Some(&a), true, &mut out), Step::More);
        assert!(g.in_frame());
        assert_eq!(g.piece(Some(&b), true, &mut out), Step::More);
        assert_eq!(g.piece(Some(&c), false, &mut out), Step::Frame);
        assert!(!g.in_frame());
        let d = out.data();
        assert_eq!(d.len(), 9014);
        assert!(d[..3840].iter().all(|&x| x == 1));
        assert!(d[3840..7680].iter().all(|&x| x == 2));
        assert!(d[7680..].iter().all(|&x| x == 3));
        // The next frame starts afresh.
        assert_eq!(g.piece(Some(&[9u8; 60]), false, &mut out), Step::Frame);
        assert_eq!(out.data(), &[9u8; 60][..]);
    }

    #[test]
    fn a_chain_longer_than_the_largest_frame_is_dropped_whole_and_counted_once() {
        let mut g = Gather::new(9014);
        let mut out = frame();
        let piece = vec![7u8; 3840];
        assert_eq!(g.piece(Some(&piece), true, &mut out), Step::More);
        assert_eq!(g.piece(Some(&piece), true, &mut out), Step::More);
        // 11,520 bytes > 9,014: dropped here, the rest skipped.
        assert_eq!(g.piece(Some(&piece), true, &mut out), Step::Dropped);
        assert_eq!(g.piece(Some(&piece), true, &mut out), Step::Skipped);
        assert_eq!(g.piece(Some(&piece), false, &mut out), Step::Skipped);
        // The frame after it is whole.
        assert_eq!(g.piece(Some(&[5u8; 100]), false, &mut out), Step::Frame);
        assert_eq!(out.data(), &[5u8; 100][..]);
        // A single descriptor over the limit (a port without multi-buffer
        // whose chunk is larger than its MTU) is dropped too.
        assert_eq!(
            g.piece(Some(&vec![0u8; 9015]), false, &mut out),
            Step::Dropped
        );
        assert!(!g.in_frame());
    }

    #[test]
    fn a_broken_descriptor_drops_its_frame_and_the_rest_of_the_chain() {
        let mut g = Gather::new(9014);
        let mut out = frame();
        assert_eq!(g.piece(Some(&[1u8; 100]), true, &mut out), Step::More);
        assert_eq!(g.piece(None, true, &mut out), Step::Dropped);
        assert_eq!(g.piece(Some(&[1u8; 100]), false, &mut out), Step::Skipped);
        // Broken on the last descriptor: nothing more to skip.
        assert_eq!(g.piece(Some(&[2u8; 100]), true, &mut out), Step::More);
        assert_eq!(g.piece(None, false, &mut out), Step::Dropped);
        assert_eq!(g.piece(Some(&[3u8; 64]), false, &mut out), Step::Frame);
        assert_eq!(out.data(), &[3u8; 64][..]);
    }

    #[test]
    fn a_chain_cut_off_by_an_empty_ring_is_dropped_and_its_tail_skipped() {
        let mut g = Gather::new(9014);
        let mut out = frame();
        assert!(!g.cut(), "nothing to cut between frames");
        assert_eq!(g.piece(Some(&[1u8; 3840]), true, &mut out), Step::More);
        assert!(g.cut(), "a partly gathered frame is dropped");
        assert!(!g.cut(), "and counted once");
        // Its tail, in the next batch, is skipped up to its last piece.
        assert_eq!(g.piece(Some(&[1u8; 3840]), true, &mut out), Step::Skipped);
        assert_eq!(g.piece(Some(&[1u8; 100]), false, &mut out), Step::Skipped);
        assert_eq!(g.piece(Some(&[4u8; 64]), false, &mut out), Step::Frame);
        assert_eq!(out.data(), &[4u8; 64][..]);
    }

    #[test]
    fn pieces_round_up_to_whole_chunks() {
        assert_eq!(pieces(60, 4096), 1);
        assert_eq!(pieces(4096, 4096), 1);
        assert_eq!(pieces(4097, 4096), 2);
        assert_eq!(pieces(9014, 4096), 3);
        assert_eq!(pieces(9014, 2048), 5);
        assert!(pieces(9014, 2048) <= MAX_TX_PIECES);
    }
}
