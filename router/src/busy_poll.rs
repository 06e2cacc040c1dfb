//! Busy polling: whether a worker polls its ports again at once instead
//! of sleeping in epoll (`[dataplane] busy_poll_us`).
//!
//! A sleeping worker costs nothing, but the next frame then waits for its
//! wake-up (on a VM whose idle CPU halts, an exit to the host). With a
//! window set, a worker keeps polling for that long after the last round
//! that received a frame, so the next packet of an exchange (a reply, the
//! next segment of a handshake) finds it awake; an idle worker still
//! sleeps, so idle pods cost nothing.
//!
//! The window grows with the traffic (`[dataplane] busy_poll_max_us`): a
//! worker measures the gap between each two rounds that received frames,
//! and once [`GAPS_TO_GROW`] gaps in a row were no longer than the largest
//! window, its window becomes twice the longest recent gap (the peak
//! decays by an eighth at each gap), between the configured window and
//! that largest one. Steady traffic (request/response at a thousand a
//! second, its gaps 100-900 µs) then finds the worker awake at every
//! packet, not only at the reply that follows a request; sparse traffic
//! (a gap longer than the largest window) sets it back to the configured
//! window at once, so a worker never spins past a gap it could not have
//! bridged. The price is the CPU: a worker whose ports see a frame at
//! least every largest-window keeps its core busy (counted:
//! `podrouter_worker_spin_seconds_total`).
//!
//! A spinning thread uses its whole share of its CPU, and when something
//! else becomes runnable there the scheduler makes it wait a full slice
//! (milliseconds), where a thread that slept is woken ahead of others.
//! So the worker yields its CPU (`sched_yield`) after each empty round of
//! a spin, which lets a task woken on that CPU run at once (another
//! node's worker, a pod) and costs one system call when there is none;
//! and the policy watches for the scheduler taking the CPU all the same:
//! a gap between one round's end and the next round's start longer than
//! [`PREEMPTED_GAP_NS`] (in between the worker only asks epoll for
//! readiness, without waiting, and yields) means its thread did not run.
//! If the scheduler took the CPU from it, or it yielded to a task that
//! held the CPU that long (its count of involuntary context switches grew
//! since it began to spin), it stops spinning for a while:
//! [`MIN_BACKOFF_NS`] after a lone preemption (a kworker's or a timer's
//! moment on its CPU), twice the last back-off when the previous one
//! ended less than [`MAX_BACKOFF_NS`] ago, up to that: on a CPU something
//! else keeps wanting, the worker behaves as if the window were zero
//! within a few preemptions, and one kworker does not cost a second of
//! spinning. A gap without such a switch was
//! interrupt work on its CPU or, on a virtual machine, the host running
//! something else on the virtual CPU: sleeping would not have avoided it,
//! so the spin goes on (counted as a stall). Where the count cannot be
//! read, every long gap counts as a preemption. The worker counts both
//! (`podrouter_busy_poll_backoffs_total`, `podrouter_busy_poll_stalls_total`).
//!
//! Invariants: with a zero window [`BusyPoll::after_round`] always says
//! sleep-as-before and keeps no state (the largest window does not turn
//! busy polling on); the window in use is never below the configured one
//! nor above the largest; time and the switch count are
//! passed in (the worker's own reads), never read here; the switch count
//! is asked for at most once per spin start and once per long gap, never
//! per round.
use std::time::Duration;

/// A gap between two polling rounds, with no sleep in between, longer than
/// this means the worker's thread was not running: preempted (or held up
/// by interrupt work on its CPU). A round's gap is normally an
/// `epoll_wait` with a zero timeout, a microsecond or two.
pub const PREEMPTED_GAP_NS: u64 = 250_000;

/// How long a worker that was preempted while spinning, for the first
/// time in a while, sleeps between rounds again like a worker without
/// busy polling.
pub const MIN_BACKOFF_NS: u64 = 10_000_000;

/// The longest back-off, reached when preemptions keep coming: each one
/// within this time of the previous back-off's end doubles the back-off.
pub const MAX_BACKOFF_NS: u64 = 1_000_000_000;

/// What a long gap between two polling rounds was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongGap {
    /// The scheduler took the CPU: the worker backs off.
    Preempted,
    /// Interrupt work, or the host: the spin goes on.
    Stall,
}

/// The largest window `[dataplane] busy_poll_us` (and
/// `busy_poll_max_us`) takes.
pub const MAX_WINDOW: Duration = Duration::from_millis(10);

/// Gaps in a row, between rounds that received frames, no longer than the
/// largest window, before the window grows: one short gap in sparse
/// traffic does not make the worker spin.
pub const GAPS_TO_GROW: u32 = 3;

/// One worker's busy-polling state.
#[derive(Debug)]
pub struct BusyPoll {
    /// The configured window: the one in use until the traffic's gaps say
    /// otherwise.
    window_ns: u64,
    /// How far the window may grow (`window_ns` itself: it does not).
    max_window_ns: u64,
    /// Gaps in a row between rounds that received frames no longer than
    /// `max_window_ns`.
    fitting_gaps: u32,
    /// The longest recent such gap, decaying by an eighth at each gap
    /// (zero after a gap that did not fit).
    gap_peak_ns: u64,
    /// When the last round that received a frame ended.
    last_work_ns: u64,
    /// When the current round started and whether a long gap came before
    /// it (`round_starts`), and when the previous round ended: what the
    /// spin-time count measures.
    round_start_ns: u64,
    long_gap_before_round: bool,
    last_round_end_ns: u64,
    /// Wall time spent spinning since the worker last took it
    /// ([`BusyPoll::take_spun_ns`]).
    unreported_spun_ns: u64,
    /// Whether the last round ended with the worker spinning (then it has
    /// not slept since `last_round_end_ns`).
    spinning: bool,
    /// No spinning before this time (after a preemption).
    backoff_until_ns: u64,
    /// The last back-off's length (zero before the first).
    backoff_ns: u64,
    /// The thread's involuntary context switches when it began to spin
    /// (or at the last long gap), if known.
    switches_seen: Option<u64>,
    /// Preemptions seen while spinning (each starts a back-off).
    pub backoffs: u64,
    /// Long gaps while spinning that were no preemption (the spin went
    /// on).
    pub stalls: u64,
}

impl BusyPoll {
    /// A policy that keeps polling for `window` after the last frame
    /// (zero: never).
    pub fn new(window: Duration) -> BusyPoll {
        let window_ns = nanos(window);
        BusyPoll {
            window_ns,
            max_window_ns: window_ns,
            fitting_gaps: 0,
            gap_peak_ns: 0,
            last_work_ns: 0,
            round_start_ns: 0,
            long_gap_before_round: false,
            last_round_end_ns: 0,
            unreported_spun_ns: 0,
            spinning: false,
            backoff_until_ns: 0,
            backoff_ns: 0,
            switches_seen: None,
            backoffs: 0,
            stalls: 0,
        }
    }

    /// The same policy with a window that grows up to `max` while the
    /// traffic's gaps fit in it (no effect with a zero window, or a `max`
    /// below the window).
    pub fn growing_to(mut self, max: Duration) -> BusyPoll {
        if self.window_ns > 0 {
            self.max_window_ns = self.window_ns.max(nanos(max));
        }
        self
    }

    /// Whether busy polling is configured at all.
    pub fn enabled(&self) -> bool {
        self.window_ns > 0
    }

    /// The window in use now: the configured one, or, once
    /// [`GAPS_TO_GROW`] gaps in a row fitted in the largest, twice the
    /// longest recent gap, between the two.
    pub fn window_ns(&self) -> u64 {
        if self.fitting_gaps < GAPS_TO_GROW {
            return self.window_ns;
        }
        self.gap_peak_ns
            .saturating_mul(2)
            .clamp(self.window_ns, self.max_window_ns)
    }

    /// Wall time the worker spent spinning (polling on after empty rounds
    /// instead of sleeping, long gaps left out) since the last call.
    pub fn take_spun_ns(&mut self) -> u64 {
        std::mem::take(&mut self.unreported_spun_ns)
    }

    /// A round that received frames ended at `now_ns`: the gap since the
    /// previous one teaches the window.
    fn learn_gap(&mut self, now_ns: u64) {
        if self.max_window_ns == self.window_ns {
            return;
        }
        let gap = now_ns.saturating_sub(self.last_work_ns);
        if gap <= self.max_window_ns {
            self.fitting_gaps = self.fitting_gaps.saturating_add(1);
            self.gap_peak_ns = gap.max(self.gap_peak_ns - self.gap_peak_ns / 8);
        } else {
            self.fitting_gaps = 0;
            self.gap_peak_ns = 0;
        }
    }

    /// Called when a round starts at `now_ns`: a long gap since the
    /// previous round's end, with no sleep in between, is a preemption if
    /// `involuntary_switches` (the thread's count, asked only then) grew
    /// since the spin began, or cannot be read. Returns what a long gap
    /// was (`None`: no long gap), for the worker's counters.
    pub fn round_starts(
        &mut self,
        now_ns: u64,
        involuntary_switches: impl FnOnce() -> Option<u64>,
    ) -> Option<LongGap> {
        self.round_start_ns = now_ns;
        self.long_gap_before_round = false;
        // Only a spinning worker's gaps tell of preemption: the gap after
        // a sleep is the sleep.
        if !self.spinning || now_ns.saturating_sub(self.last_round_end_ns) <= PREEMPTED_GAP_NS {
            return None;
        }
        self.long_gap_before_round = true;
        let now = involuntary_switches();
        let preempted = match (self.switches_seen, now) {
            (Some(before), Some(now)) => now > before,
            _ => true,
        };
        self.switches_seen = now;
        if !preempted {
            self.stalls += 1;
            return Some(LongGap::Stall);
        }
        self.backoffs += 1;
        let lone = now_ns.saturating_sub(self.backoff_until_ns) >= MAX_BACKOFF_NS;
        self.backoff_ns = if lone || self.backoff_ns == 0 {
            MIN_BACKOFF_NS
        } else {
            (self.backoff_ns * 2).min(MAX_BACKOFF_NS)
        };
        self.backoff_until_ns = now_ns.saturating_add(self.backoff_ns);
        Some(LongGap::Preempted)
    }

    /// Called when the worker waits for readiness outside the rounds (a
    /// paused worker): the next gap is that wait, not a preemption.
    pub fn slept(&mut self) {
        self.spinning = false;
    }

    /// Called when a round ends at `now_ns` (`found_work`: it received a
    /// frame): true if the worker should poll again without sleeping
    /// beyond its usual empty rounds. `involuntary_switches` (the
    /// thread's count) is asked when a spin begins.
    pub fn after_round(
        &mut self,
        now_ns: u64,
        found_work: bool,
        involuntary_switches: impl FnOnce() -> Option<u64>,
    ) -> bool {
        if self.window_ns == 0 {
            return false;
        }
        if self.spinning && !self.long_gap_before_round {
            // Since the previous round ended the worker polled instead of
            // sleeping: up to this round's start if it found work (its
            // work is no spin), to its end if it found none.
            let until = if found_work {
                self.round_start_ns
            } else {
                now_ns
            };
            self.unreported_spun_ns += until.saturating_sub(self.last_round_end_ns);
        }
        self.last_round_end_ns = now_ns;
        if found_work {
            self.learn_gap(now_ns);
            self.last_work_ns = now_ns;
        }
        let spin = now_ns >= self.backoff_until_ns
            && now_ns.saturating_sub(self.last_work_ns) < self.window_ns();
        if spin && !self.spinning {
            self.switches_seen = involuntary_switches();
        }
        self.spinning = spin;
        spin
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// A thread whose switch count cannot be read.
    fn unknown() -> Option<u64> {
        None
    }

    #[test]
    fn a_zero_window_never_spins() {
        let mut b = BusyPoll::new(Duration::ZERO);
        assert!(!b.enabled());
        b.round_starts(1_000 * US, unknown);
        assert!(!b.after_round(1_001 * US, true, unknown));
        assert!(!b.after_round(1_002 * US, false, unknown));
    }

    #[test]
    fn spins_for_the_window_after_the_last_frame_then_sleeps() {
        let mut b = BusyPoll::new(Duration::from_micros(100));
        assert!(b.enabled());
        let mut t = 1_000_000 * US;
        b.round_starts(t, unknown);
        assert!(b.after_round(t, true, unknown), "right after a frame");
        t += 50 * US;
        b.round_starts(t - 1, unknown);
        assert!(b.after_round(t, false, unknown), "50 µs after it");
        b.round_starts(t + 1, unknown);
        assert!(
            b.after_round(t + 10 * US, true, unknown),
            "a new frame restarts the window"
        );
        t += 10 * US + 100 * US;
        b.round_starts(t - 1, unknown);
        assert!(
            !b.after_round(t, false, unknown),
            "100 µs without a frame: sleep"
        );
        // The gap after a sleep is no preemption.
        t += 50_000 * US;
        b.round_starts(t, unknown);
        assert!(b.after_round(t + US, true, unknown));
        assert_eq!(b.backoffs, 0);
    }

    /// A frame every `gap_us` from `*t`, `n` times: a round of 1 µs that
    /// receives it, then empty rounds every 10 µs while the policy says
    /// spin (else the worker sleeps to the next frame). Returns, per gap,
    /// whether the worker was still spinning when the next frame came.
    fn frames_every(b: &mut BusyPoll, t: &mut u64, gap_us: u64, n: usize) -> Vec<bool> {
        let mut awake = Vec::new();
        for _ in 0..n {
            let next = *t + gap_us * US;
            b.round_starts(*t, unknown);
            let mut spin = b.after_round(*t + US, true, unknown);
            *t += US;
            while spin && *t + 10 * US < next {
                *t += 10 * US;
                b.round_starts(*t - US, unknown);
                spin = b.after_round(*t, false, unknown);
            }
            awake.push(spin);
            *t = next;
        }
        awake
    }

    #[test]
    fn the_window_grows_to_bridge_steady_gaps_and_falls_back_after_a_long_one() {
        let mut b =
            BusyPoll::new(Duration::from_micros(100)).growing_to(Duration::from_micros(2000));
        let mut t = 1_000_000 * US;
        assert_eq!(b.window_ns(), 100 * US);
        // 800 µs between frames: asleep at first, then, once three gaps in
        // a row fitted in 2 ms, awake across every gap.
        let awake = frames_every(&mut b, &mut t, 800, 8);
        assert_eq!(awake, [false, false, false, true, true, true, true, true]);
        assert_eq!(b.window_ns(), 1_600 * US, "twice the gap");
        // One gap longer than the largest window: back to 100 µs at once.
        t += 5_000 * US;
        b.slept();
        let awake = frames_every(&mut b, &mut t, 800, 2);
        assert_eq!(awake, [false, false]);
        assert_eq!(b.window_ns(), 100 * US);
        // Gaps close to the largest window grow it to that, no further.
        let awake = frames_every(&mut b, &mut t, 1_500, 6);
        assert!(awake[4] && awake[5], "{awake:?}");
        assert_eq!(b.window_ns(), 2_000 * US);
        // Back-to-back frames (a flood): the peak decays to the configured
        // window, never below.
        frames_every(&mut b, &mut t, 5, 200);
        assert_eq!(b.window_ns(), 100 * US);
    }

    #[test]
    fn a_window_that_may_not_grow_stays_as_configured() {
        for mut b in [
            BusyPoll::new(Duration::from_micros(100)),
            BusyPoll::new(Duration::from_micros(100)).growing_to(Duration::from_micros(50)),
        ] {
            let mut t = 1_000_000 * US;
            let awake = frames_every(&mut b, &mut t, 800, 6);
            assert!(awake.iter().all(|a| !a), "{awake:?}");
            assert_eq!(b.window_ns(), 100 * US);
        }
        // A largest window does not turn busy polling on.
        let mut z = BusyPoll::new(Duration::ZERO).growing_to(Duration::from_micros(2000));
        assert!(!z.enabled());
        let mut t = 1_000_000 * US;
        assert!(frames_every(&mut z, &mut t, 800, 6).iter().all(|a| !a));
    }

    #[test]
    fn spin_time_counts_the_polling_not_the_work_nor_a_preemption() {
        let mut b = BusyPoll::new(Duration::from_micros(100));
        let mut t = 1_000_000 * US;
        b.round_starts(t, unknown);
        assert!(b.after_round(t + 10 * US, true, unknown));
        assert_eq!(b.take_spun_ns(), 0, "a round of work is no spin");
        // Three empty rounds, 20 µs apart, then one with a frame that
        // starts 20 µs later and works 30 µs.
        for i in 1..=3 {
            b.round_starts(t + 10 * US + i * 20 * US - US, unknown);
            b.after_round(t + 10 * US + i * 20 * US, false, unknown);
        }
        b.round_starts(t + 90 * US, unknown);
        b.after_round(t + 120 * US, true, unknown);
        assert_eq!(b.take_spun_ns(), 80 * US);
        assert_eq!(b.take_spun_ns(), 0, "taken once");
        // Descheduled 3 ms in the spin: not counted.
        t += 120 * US + 3_000 * US;
        b.round_starts(t, unknown);
        b.after_round(t + US, false, unknown);
        assert_eq!(b.take_spun_ns(), 0);
        // After a sleep, the first round is no spin either.
        b.slept();
        t += 50_000 * US;
        b.round_starts(t, unknown);
        b.after_round(t + US, false, unknown);
        assert_eq!(b.take_spun_ns(), 0);
    }

    #[test]
    fn a_preempted_spin_backs_off_then_spins_again() {
        let mut b = BusyPoll::new(Duration::from_micros(100));
        let mut t = 1_000_000 * US;
        b.round_starts(t, unknown);
        assert!(b.after_round(t, true, unknown));
        // Descheduled for 3 ms between two rounds of the spin.
        t += 3_000 * US;
        b.round_starts(t, unknown);
        assert_eq!(b.backoffs, 1);
        assert!(!b.after_round(t + US, true, unknown), "backing off: sleep");
        t += MIN_BACKOFF_NS / 2;
        b.round_starts(t, unknown);
        assert!(!b.after_round(t, true, unknown), "still backing off");
        t += MIN_BACKOFF_NS;
        b.round_starts(t, unknown);
        assert!(b.after_round(t, true, unknown), "the back-off is over");
        assert_eq!(b.backoffs, 1);
    }

    /// Spins, is descheduled for 3 ms at `*t`, and says how long the
    /// back-off that follows lasts (to the microsecond).
    fn preempt_and_time_backoff(b: &mut BusyPoll, t: &mut u64) -> u64 {
        b.round_starts(*t, unknown);
        assert!(b.after_round(*t, true, unknown), "spinning before");
        *t += 3_000 * US;
        assert_eq!(b.round_starts(*t, unknown), Some(LongGap::Preempted));
        let start = *t;
        while !b.after_round(*t, true, unknown) {
            *t += US;
            b.round_starts(*t, unknown);
        }
        *t - start
    }

    #[test]
    fn preemptions_in_a_row_double_the_back_off_up_to_the_cap_and_a_lone_one_resets_it() {
        let mut b = BusyPoll::new(Duration::from_micros(100));
        let mut t = 1_000_000 * US;
        let mut seen = Vec::new();
        for _ in 0..9 {
            seen.push(preempt_and_time_backoff(&mut b, &mut t) / 1_000_000);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 640, 1000, 1000], "ms");
        // Asleep, no traffic, for longer than the cap since the last
        // back-off ended.
        b.slept();
        t += MAX_BACKOFF_NS;
        assert_eq!(preempt_and_time_backoff(&mut b, &mut t), MIN_BACKOFF_NS);
        assert_eq!(b.backoffs, 10);
    }

    #[test]
    fn a_gap_without_a_preemption_is_a_stall_and_the_spin_goes_on() {
        let mut b = BusyPoll::new(Duration::from_micros(100));
        let mut t = 1_000_000 * US;
        b.round_starts(t, || Some(7));
        assert!(b.after_round(t, true, || Some(7)), "the spin begins");
        // 3 ms without running, the scheduler never took the CPU: the host
        // (or interrupt work) did.
        t += 3_000 * US;
        assert_eq!(b.round_starts(t, || Some(7)), Some(LongGap::Stall));
        assert_eq!((b.backoffs, b.stalls), (0, 1));
        assert!(b.after_round(t + US, true, || Some(7)), "still spinning");
        // Then the scheduler does preempt it.
        t += 3_000 * US;
        b.round_starts(t, || Some(8));
        assert_eq!((b.backoffs, b.stalls), (1, 1));
        assert!(!b.after_round(t + US, true, || Some(8)), "backing off");
    }

    #[test]
    fn the_switch_count_is_read_at_a_spin_start_and_at_long_gaps_only() {
        let reads = std::cell::Cell::new(0u32);
        let count = || {
            reads.set(reads.get() + 1);
            Some(3)
        };
        let mut b = BusyPoll::new(Duration::from_micros(100));
        let mut t = 1_000_000 * US;
        for _ in 0..50 {
            b.round_starts(t, count);
            b.after_round(t + US, true, count);
            t += 2 * US;
        }
        assert_eq!(reads.get(), 1, "one read when the spin began");
        t += 1_000 * US;
        b.round_starts(t, count);
        assert_eq!(reads.get(), 2, "one more at the long gap");
        // A window of zero never asks.
        let mut z = BusyPoll::new(Duration::ZERO);
        z.round_starts(t, count);
        z.after_round(t, true, count);
        assert_eq!(reads.get(), 2);
    }
}
