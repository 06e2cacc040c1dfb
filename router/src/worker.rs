//! Workers: one thread per configured core that polls its ports in
//! batches, runs each frame through the pipeline and sends it on.
//!
//! Invariants: a port is received from by exactly one worker (the one it
//! was added to), a multi-queue port by one worker per queue, each under
//! the port's id (a worker holds at most one queue of a port); the FIB and port table are loaded once per batch; a round
//! receives only from ports epoll reported readable (edge-triggered, through
//! mio) since they were last drained, so a worker with a thousand idle pods
//! makes no syscall for them; a port leaves the ready set only when a
//! receive returned nothing, or returned short from a port whose short
//! receive means drained ([`Port::short_recv_drains`]: a TAP stops at
//! `EAGAIN`), so no frame is left behind an edge; ports
//! without an fd are polled every round; a round takes at most one batch
//! from each port, so a flooding port's backlog waits for later rounds
//! instead of delaying its neighbours, with one exception: after a batch
//! that wrote to the host port, the worker reads back at once what the
//! node's stack sent out of it inside those writes (at most as many frames
//! as were written, at most [`HOST_CHASE_READS`] times in a row,
//! [`chase_host`]), which reads no port but the host port and leaves its
//! readiness as it was unless the read proved it empty; nothing on
//! the per-frame path allocates, locks or logs; a paused worker
//! ([`WorkerHandle::pause`], for a takeover) receives from no port until
//! it is resumed, and it pauses only between rounds, after the round's
//! frames were sent.
//!
//! Transmit: each worker owns one [`TxQueue`] per egress port it has sent
//! to (DPDK l3fwd's `tx_mbufs[port]` per lcore), made by the port the first
//! time and kept while that port stays at its id (the table's generation
//! says so); every port pushed to in a batch is flushed once at its end, so
//! queues are empty between batches. Queues of ports that left the table
//! are dropped when the worker sees a new table snapshot.
//!
//! Scheduling: a worker with nothing to do sleeps in epoll and is woken by
//! the next frame's readiness. As a SCHED_OTHER thread a woken worker may
//! wait for the normal task running on its CPU to sleep or use up its
//! slice (up to a 4 ms tick at `HZ=250`); with `worker_rt_priority` it
//! runs SCHED_FIFO and preempts such a task at once (README "The p99.9
//! stall, found"). The policy is set once, when the thread starts.
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::busy_poll::{BusyPoll, LongGap};
use crate::capture::{Armed, Direction, Taps};
use crate::conntrack::FlowTable;
use crate::counters::{DropReason, SharedCounters, WorkerCounters};
use crate::fib::Fib;
use crate::frame::Frame;
use crate::pipeline::{BatchContext, Pipeline, PipelineConfig, Verdict};
use crate::port::{Port, PortId, PortTable, TxQueue};
use std::net::Ipv4Addr;

/// How long a worker with fd-less ports (in-memory) waits between polls.
const FDLESS_POLL: Duration = Duration::from_millis(1);

/// Empty polling rounds before a worker goes to sleep.
const IDLE_ROUNDS_BEFORE_SLEEP: u32 = 2;

const WAKER: Token = Token(usize::MAX);

/// How a worker is set up.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: usize,
    /// Core to pin the thread to, if any.
    pub core: Option<usize>,
    /// Frames taken from one port per poll.
    pub batch_size: usize,
    pub pipeline: PipelineConfig,
    /// The flow table shared by all workers.
    pub flows: Arc<FlowTable>,
    /// The published network policy, loaded once per batch.
    pub policies: Arc<crate::policy::Policies>,
    /// The built-in load balancer's published services, loaded once per
    /// batch.
    pub services: Arc<crate::service::Services>,
    /// Capture and trace taps, checked once per round ([`crate::capture`]).
    pub taps: Arc<Taps>,
    /// The path MTUs learned towards other nodes, loaded once per batch.
    pub path_mtus: Arc<crate::pmtu::PathMtus>,
    /// Keep polling without sleeping for this long after the last round
    /// that received a frame (`[dataplane] busy_poll_us`); zero: sleep
    /// after [`IDLE_ROUNDS_BEFORE_SLEEP`] empty rounds, as always.
    pub busy_poll: Duration,
    /// How far that window grows while the traffic's gaps fit in it
    /// (`[dataplane] busy_poll_max_us`, [`BusyPoll::growing_to`]).
    pub busy_poll_max: Duration,
    /// The worker thread's scheduler time slice (`[dataplane]
    /// worker_slice_us`, [`crate::sys::set_current_thread_slice`]); zero:
    /// the kernel's default.
    pub slice: Duration,
    /// SCHED_FIFO priority of the worker thread (`[dataplane]
    /// worker_rt_priority`, [`crate::sys::set_current_thread_fifo`]); zero:
    /// SCHED_OTHER, as every thread.
    pub rt_priority: u32,
}

enum Command {
    AddPort(PortId, Arc<dyn Port>),
    /// Stop receiving from the port; the sender is told when done.
    RemovePort(PortId, Sender<()>),
    /// Stop receiving from every port (after the current round, whose
    /// frames are sent on); the sender is told once no receive will run.
    Pause(Sender<()>),
    /// Receive again after a pause.
    Resume,
}

/// How long a paused worker waits for a command before it looks at the
/// stop flag again (a command or a stop also wakes it at once).
const PAUSED_WAIT: Duration = Duration::from_millis(100);

/// The control thread's handle on a running worker.
pub struct WorkerHandle {
    pub id: usize,
    commands: Sender<Command>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<SharedCounters>,
    ports: usize,
}

impl WorkerHandle {
    /// Starts a worker thread.
    pub fn spawn(
        cfg: WorkerConfig,
        fib: Arc<Fib>,
        ports: Arc<ArcSwap<PortTable>>,
    ) -> io::Result<WorkerHandle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(SharedCounters::default());
        let id = cfg.id;
        let worker = Worker {
            pipeline: Pipeline::new(cfg.pipeline.clone()),
            frames: (0..cfg.batch_size.max(1)).map(|_| Frame::new()).collect(),
            cfg,
            fib,
            ports,
            poll,
            commands: rx,
            stop: stop.clone(),
            paused: false,
            counters: counters.clone(),
            owned: Vec::new(),
            tx: TxQueues::default(),
            slot_of: Vec::new(),
            stale_edge: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("podrouter-w{id}"))
            .spawn(move || worker.run())?;
        Ok(WorkerHandle {
            id,
            commands: tx,
            waker,
            stop,
            thread: Some(thread),
            counters,
            ports: 0,
        })
    }

    /// Hands a port to this worker; it starts receiving on the next round.
    pub fn add_port(&mut self, id: PortId, port: Arc<dyn Port>) -> io::Result<()> {
        self.send(Command::AddPort(id, port))?;
        self.ports += 1;
        Ok(())
    }

    /// Hands one more receive queue of a port another worker owns
    /// ([`Port::rx_queues`]) to this worker, under that port's id. Not
    /// counted in [`WorkerHandle::port_count`]: every worker gets one
    /// queue of such a port, so they add the same to each.
    pub fn add_rx_queue(&mut self, id: PortId, queue: Arc<dyn Port>) -> io::Result<()> {
        self.send(Command::AddPort(id, queue))
    }

    /// Takes a port away and waits (bounded) until the worker has let go.
    pub fn remove_port(&mut self, id: PortId) -> io::Result<()> {
        self.start_remove_port(id)?.wait()
    }

    /// Takes a port away without waiting: the worker lets go on its next
    /// round, and [`PortRelease::wait`] (on any thread) returns once it has.
    pub fn start_remove_port(&mut self, id: PortId) -> io::Result<PortRelease> {
        let release = self.start_remove_rx_queue(id)?;
        self.ports = self.ports.saturating_sub(1);
        Ok(release)
    }

    /// Takes back a receive queue given with [`WorkerHandle::add_rx_queue`]
    /// (not counted in [`WorkerHandle::port_count`]), without waiting. A
    /// worker that holds nothing under `id` lets go at once.
    pub fn start_remove_rx_queue(&mut self, id: PortId) -> io::Result<PortRelease> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::RemovePort(id, tx))?;
        Ok(PortRelease(Box::new([rx])))
    }

    /// Stops receiving from every port, ports added later included, until
    /// [`WorkerHandle::resume`]: what was received is sent on first, and
    /// frames arriving meanwhile wait in the ports' own queues (a TAP's,
    /// a socket's). Used by a takeover: the old daemon pauses before it
    /// hands its descriptors over, the new one starts paused.
    pub fn pause(&self) -> io::Result<PortRelease> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Pause(tx))?;
        Ok(PortRelease(Box::new([rx])))
    }

    /// Receives again after [`WorkerHandle::pause`].
    pub fn resume(&self) -> io::Result<()> {
        self.send(Command::Resume)
    }

    /// Ports this worker receives from.
    pub fn port_count(&self) -> usize {
        self.ports
    }

    fn send(&self, c: Command) -> io::Result<()> {
        self.commands
            .send(c)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "worker has exited"))?;
        self.waker.wake()
    }

    /// Stops the worker and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port removal one or more workers have been asked for (see
/// [`WorkerHandle::start_remove_port`], [`PortRelease::and`]).
#[must_use = "the worker may still use the port until wait returns"]
pub struct PortRelease(Box<[mpsc::Receiver<()>]>);

impl PortRelease {
    /// Waits (at most 5 s) until no worker asked uses the port any more.
    pub fn wait(self) -> io::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for rx in self.0.into_vec() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            rx.recv_timeout(left).map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "worker did not release the port")
            })?;
        }
        Ok(())
    }

    /// One release that waits for both (a port whose receive queues are
    /// spread over several workers).
    pub fn and(self, other: PortRelease) -> PortRelease {
        let mut all = self.0.into_vec();
        all.extend(other.0.into_vec());
        PortRelease(all.into_boxed_slice())
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct OwnedPort {
    id: PortId,
    port: Arc<dyn Port>,
    /// Set after a receive error other than "nothing waiting"; the port is
    /// skipped until the control thread removes it.
    failed: bool,
    /// Frames may be waiting: epoll reported the port since a receive last
    /// came back empty (or short, for a port whose short receive drains
    /// it). Ports without an fd are always treated as ready.
    ready: bool,
    /// [`Port::short_recv_drains`], asked once.
    short_recv_drains: bool,
}

struct Worker {
    cfg: WorkerConfig,
    pipeline: Pipeline,
    frames: Vec<Frame>,
    fib: Arc<Fib>,
    ports: Arc<ArcSwap<PortTable>>,
    poll: Poll,
    commands: Receiver<Command>,
    stop: Arc<AtomicBool>,
    /// Paused ([`Command::Pause`]): no port is received from.
    paused: bool,
    counters: Arc<SharedCounters>,
    owned: Vec<OwnedPort>,
    tx: TxQueues,
    /// Index in `owned` of each port id (the epoll token), `u32::MAX` if
    /// not owned.
    slot_of: Vec<u32>,
    /// Index in `owned` of the host port if the last round read it inline
    /// ([`chase_host`]): the next round receives from it last.
    stale_edge: Option<usize>,
}

impl Worker {
    fn run(mut self) {
        if let Some(core) = self.cfg.core {
            match crate::sys::pin_current_thread_to_core(core) {
                Ok(()) => log::info!("worker {} pinned to core {core}", self.cfg.id),
                Err(e) => log::warn!("worker {}: cannot pin to core {core}: {e}", self.cfg.id),
            }
        }
        if !self.cfg.slice.is_zero() {
            match crate::sys::set_current_thread_slice(self.cfg.slice) {
                Ok(()) => log::info!(
                    "worker {}: scheduler slice {} µs",
                    self.cfg.id,
                    self.cfg.slice.as_micros()
                ),
                Err(e) => log::warn!(
                    "worker {}: cannot set a scheduler slice (needs Linux 6.12): {e}",
                    self.cfg.id
                ),
            }
        }
        if self.cfg.rt_priority != 0 {
            match crate::sys::set_current_thread_fifo(self.cfg.rt_priority) {
                Ok(()) => log::info!(
                    "worker {}: SCHED_FIFO priority {}",
                    self.cfg.id,
                    self.cfg.rt_priority
                ),
                Err(e) => log::warn!(
                    "worker {}: cannot become SCHED_FIFO (needs CAP_SYS_NICE), stays SCHED_OTHER: {e}",
                    self.cfg.id
                ),
            }
        }
        let mut events = Events::with_capacity(256);
        let mut idle_rounds = 0u32;
        let mut busy_poll = BusyPoll::new(self.cfg.busy_poll).growing_to(self.cfg.busy_poll_max);
        while !self.stop.load(Ordering::Acquire) {
            if self.apply_commands().is_err() {
                break; // control thread is gone
            }
            if self.paused {
                // Readiness seen now is not lost: every port counts as
                // ready again at the resume.
                busy_poll.slept();
                self.collect_ready(&mut events, Some(PAUSED_WAIT));
                continue;
            }
            let started_ns = crate::clock::now_ns();
            match busy_poll.round_starts(started_ns, involuntary_switches) {
                Some(LongGap::Preempted) => self.counters.busy_poll_backoffs.incr(),
                Some(LongGap::Stall) => self.counters.busy_poll_stalls.incr(),
                None => {}
            }
            let found_work = self.poll_round(started_ns);
            // One more clock read per round, only with busy polling on.
            let spin = busy_poll.enabled()
                && busy_poll.after_round(crate::clock::now_ns(), found_work, involuntary_switches);
            let spun_ns = busy_poll.take_spun_ns();
            if spun_ns != 0 {
                self.counters.spin_ns.add(spun_ns);
            }
            let timeout = if found_work {
                idle_rounds = 0;
                Some(Duration::ZERO)
            } else {
                idle_rounds += 1;
                if spin {
                    // An empty round of the spin: let whatever else is
                    // runnable on this CPU (another node's worker, a pod)
                    // run first, rather than wait for the scheduler to
                    // preempt the spin. Alone on the CPU, this returns at
                    // once.
                    crate::sys::yield_current_thread();
                }
                if idle_rounds < IDLE_ROUNDS_BEFORE_SLEEP || spin {
                    Some(Duration::ZERO)
                } else {
                    self.counters.sleeps.incr();
                    self.owned
                        .iter()
                        .any(|p| p.port.readiness_fd().is_none())
                        .then_some(FDLESS_POLL)
                }
            };
            self.collect_ready(&mut events, timeout);
        }
        log::debug!("worker {} stopped", self.cfg.id);
    }

    /// Waits (up to `timeout`; `None` = until woken) for readiness and
    /// marks the ports epoll reports as ready.
    fn collect_ready(&mut self, events: &mut Events, timeout: Option<Duration>) {
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("worker {}: epoll failed: {e}", self.cfg.id);
                std::thread::sleep(FDLESS_POLL);
            }
            return;
        }
        for ev in events.iter() {
            let Token(t) = ev.token();
            if let Some(&i) = self.slot_of.get(t) {
                if let Some(p) = self.owned.get_mut(i as usize) {
                    p.ready = true;
                }
            }
        }
    }

    fn apply_commands(&mut self) -> Result<(), ()> {
        loop {
            match self.commands.try_recv() {
                Ok(Command::AddPort(id, port)) => {
                    if let Some(fd) = port.readiness_fd() {
                        if let Err(e) = self.register(fd, id) {
                            log::error!("worker {}: cannot watch port {}: {e}", self.cfg.id, id.0);
                        }
                    }
                    // Ready until a receive drains it: frames may already
                    // be waiting, and an edge only reports new ones.
                    let slot = id.0 as usize;
                    if self.slot_of.len() <= slot {
                        self.slot_of.resize(slot + 1, u32::MAX);
                    }
                    self.slot_of[slot] = self.owned.len() as u32;
                    self.owned.push(OwnedPort {
                        id,
                        short_recv_drains: port.short_recv_drains(),
                        port,
                        failed: false,
                        ready: true,
                    });
                }
                Ok(Command::RemovePort(id, done)) => {
                    if let Some(i) = self.owned.iter().position(|p| p.id == id) {
                        let p = self.owned.swap_remove(i);
                        self.slot_of[id.0 as usize] = u32::MAX;
                        if let Some(moved) = self.owned.get(i) {
                            self.slot_of[moved.id.0 as usize] = i as u32;
                        }
                        if let Some(fd) = p.port.readiness_fd() {
                            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                        }
                    }
                    let _ = done.send(());
                }
                Ok(Command::Pause(done)) => {
                    // Called between rounds: the last round's frames have
                    // been flushed, and no receive runs until the resume.
                    self.paused = true;
                    let _ = done.send(());
                }
                Ok(Command::Resume) => {
                    self.paused = false;
                    for p in &mut self.owned {
                        p.ready = true;
                    }
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(()),
            }
        }
    }

    fn register(&self, fd: RawFd, id: PortId) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), Token(id.0 as usize), Interest::READABLE)
    }

    /// One pass over every owned port, started at `started_ns`; true if
    /// any frame was received.
    fn poll_round(&mut self, started_ns: u64) -> bool {
        let fib = self.fib.load();
        let ports = self.ports.load();
        let policy = self.cfg.policies.load();
        let services = self.cfg.services.load();
        let path_mtus = self.cfg.path_mtus.load();
        self.tx.follow(&ports);
        let counters: &WorkerCounters = &self.counters;
        let ctx = BatchContext::new(&fib, &ports, counters, &self.cfg.flows, started_ns)
            .with_policy(&policy)
            .with_services(&services)
            .with_path_mtus(&path_mtus);
        // One relaxed load per round while nothing is armed.
        let armed = self.cfg.taps.armed().then(|| self.cfg.taps.load());
        let mut busy = false;
        // The host port read inline last round goes last: its pending edge
        // is most likely the frame already read, so its read will likely
        // find nothing, and other ports' frames should not wait for it.
        let last = self.stale_edge.take().filter(|&i| i < self.owned.len());
        let order = (0..self.owned.len())
            .filter(move |&i| Some(i) != last)
            .chain(last);
        for i in order {
            let owned = &mut self.owned[i];
            if !owned.ready || owned.failed {
                continue;
            }
            let n = match owned.port.recv(&mut self.frames) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    log::warn!(
                        "worker {}: port {} failed to receive, ignoring it until it is removed: {e}",
                        self.cfg.id,
                        owned.id.0
                    );
                    owned.failed = true;
                    0
                }
            };
            if n == 0 {
                // Nothing was waiting: the port is drained and its next
                // edge re-arms it. (A short but non-empty receive proves
                // nothing: a port may merge or filter what it read.)
                if owned.port.readiness_fd().is_some() {
                    owned.ready = false;
                }
                continue;
            }
            if n < self.frames.len()
                && owned.short_recv_drains
                && owned.port.readiness_fd().is_some()
            {
                // Drained: the next frame comes with an edge.
                owned.ready = false;
            }
            busy = true;
            counters.rx.add(n as u64);
            let in_counters = counters.port(owned.id);
            in_counters.rx_packets.add(n as u64);
            process_batch(
                &mut self.pipeline,
                &mut self.tx,
                &ctx,
                owned.id,
                &mut self.frames[..n],
                armed.as_ref(),
                self.cfg.id,
            );
            if let Some(host) = chase_host(
                &mut self.owned,
                &self.slot_of,
                &mut self.frames,
                &mut self.pipeline,
                &mut self.tx,
                &ctx,
                armed.as_ref(),
                self.cfg.id,
            ) {
                self.stale_edge = Some(host);
            }
        }
        self.tx.flush(&ports, counters);
        if busy {
            // A second clock read only in rounds that did work.
            counters
                .busy_ns
                .add(crate::clock::now_ns().saturating_sub(started_ns));
        }
        busy
    }
}

/// Runs one received batch from `ingress` through the pipeline and pushes
/// what it forwards (not flushed: the round flushes at its end, and
/// [`chase_host`] before it reads the host port).
#[inline]
fn process_batch(
    pipeline: &mut Pipeline,
    tx: &mut TxQueues,
    ctx: &BatchContext<'_>,
    ingress: PortId,
    frames: &mut [Frame],
    armed: Option<&Armed>,
    worker: usize,
) {
    let counters = ctx.counters;
    // The batch's FIB reads start together, before the first frame
    // needs its own (they overlap instead of queueing).
    ctx.fib
        .prefetch(frames.iter().filter_map(|f| ipv4_destination(f.data())));
    if let Some(armed) = armed {
        tapped_batch(pipeline, tx, ctx, ingress, frames, armed, worker);
        return;
    }
    let in_counters = counters.port(ingress);
    for frame in frames {
        in_counters.rx_bytes.add(frame.len() as u64);
        match pipeline.process(ctx, ingress, frame) {
            Verdict::Forward { port, tunnel } => {
                tx.push(ctx, port, frame, tunnel);
            }
            Verdict::Drop(reason) => {
                counters.drop(reason);
                in_counters.drops.incr();
            }
        }
    }
}

/// At most this many reads of the host port follow one batch's writes to
/// it ([`chase_host`]); a chain longer than that waits for the next round.
const HOST_CHASE_READS: usize = 8;

/// Reads back what the node's stack sent out of the host port while the
/// worker wrote a batch to it, right after that batch. A write to a TAP
/// runs the receiving stack inside the syscall: a frame the worker writes to
/// `podrouter0` goes through the node's netfilter and routing there, and
/// what the node sends back out of `podrouter0` (kube-proxy's DNATed
/// packet on its way to a backend, the un-NATed reply on its way to the
/// client) is on the TAP's queue when the write returns. Without this the
/// worker finds it only after another `epoll_wait` and a read that ends
/// at `EAGAIN`; here it reads at most as many frames as it wrote (one
/// `readv` each, none that ends at `EAGAIN` unless the queue held fewer),
/// processes them like any batch from the host port and, if that wrote to
/// the host port again, repeats, at most [`HOST_CHASE_READS`] times.
///
/// Readiness stays sound: a read here consumes frames but no epoll edge,
/// so the port is marked drained only when the read came back short (the
/// TAP said `EAGAIN`); any frame left behind has its edge still pending
/// (the worker may later read the port once to find it empty, off the
/// path of the frame it chased). A frame the node answers only later (a
/// datagram to a process on the node) brings nothing back inline: that
/// costs one read that finds `EAGAIN`. Returns the host
/// port's index in `owned` if any frame was read.
#[allow(clippy::too_many_arguments)]
fn chase_host(
    owned: &mut [OwnedPort],
    slot_of: &[u32],
    frames: &mut [Frame],
    pipeline: &mut Pipeline,
    tx: &mut TxQueues,
    ctx: &BatchContext<'_>,
    armed: Option<&Armed>,
    worker: usize,
) -> Option<usize> {
    let mut found = None;
    for _ in 0..HOST_CHASE_READS {
        let (Some(host), written) = tx.take_host_sent() else {
            break;
        };
        if written == 0 {
            break;
        }
        let Some((i, p)) = slot_of.get(host.0 as usize).and_then(|&i| {
            let i = i as usize;
            Some((i, owned.get_mut(i)?))
        }) else {
            break; // another worker reads the host port
        };
        if p.failed || !p.short_recv_drains || p.port.readiness_fd().is_none() {
            break;
        }
        // What the batch queued goes out first (a TAP's writes are done
        // already; a port that queues until the flush sends now).
        tx.flush(ctx.ports, ctx.counters);
        let want = written.min(frames.len());
        let n = match p.port.recv(&mut frames[..want]) {
            Ok(n) => n,
            // Errors are the next round's to see and count.
            Err(_) => break,
        };
        if n < want {
            // Stopped at EAGAIN: drained, the next frame brings an edge.
            p.ready = false;
        }
        if n == 0 {
            break;
        }
        found = Some(i);
        ctx.counters.host_inline.add(n as u64);
        ctx.counters.rx.add(n as u64);
        ctx.counters.port(host).rx_packets.add(n as u64);
        process_batch(pipeline, tx, ctx, host, &mut frames[..n], armed, worker);
    }
    found
}

/// The calling worker thread's involuntary context switches, for
/// [`BusyPoll`] (asked when a spin begins and at a long gap only).
fn involuntary_switches() -> Option<u64> {
    crate::sys::current_thread_involuntary_switches().ok()
}

/// The IPv4 destination of an Ethernet frame carrying IPv4 (for the FIB
/// prefetch; the pipeline validates the frame itself).
fn ipv4_destination(frame: &[u8]) -> Option<std::net::Ipv4Addr> {
    use crate::wire::{field, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4};
    if frame.get(field::ethernet::ETHERTYPE)? != &ETHERTYPE_IPV4.to_be_bytes()[..] {
        return None;
    }
    let dst = frame
        .get(ETHERNET_HEADER_LEN..)?
        .get(field::ipv4::DST_ADDR)?;
    Some(std::net::Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]))
}

/// A batch while a capture or trace is armed: the frames of the untapped
/// loop in [`process_batch`], plus copies of captured frames (as
/// received, as sent, or dropped with `--drops`) and the instrumented
/// pipeline path for traced frames.
#[inline(never)]
fn tapped_batch(
    pipeline: &mut Pipeline,
    tx: &mut TxQueues,
    ctx: &BatchContext<'_>,
    ingress: PortId,
    frames: &mut [Frame],
    armed: &Armed,
    worker: usize,
) {
    let counters = ctx.counters;
    let in_counters = counters.port(ingress);
    let capture = armed.capture.as_deref();
    let capture_in = capture.filter(|c| c.spec.port == ingress);
    for frame in frames {
        in_counters.rx_bytes.add(frame.len() as u64);
        let received =
            capture_in.and_then(|c| c.copy(worker, frame.data(), ctx.now_ns, Direction::In));
        let traced = armed
            .trace
            .as_deref()
            .and_then(|t| Some((t, t.claim(worker, ingress, frame.data(), ctx.now_ns)?)));
        let verdict = match traced {
            Some((session, mut record)) => {
                let v = crate::capture::trace::process_traced(
                    pipeline,
                    ctx,
                    ingress,
                    frame,
                    &mut record,
                );
                session.commit(worker, record);
                v
            }
            None => pipeline.process(ctx, ingress, frame),
        };
        match verdict {
            Verdict::Forward { port, tunnel } => {
                if let (Some(c), Some(r)) = (capture, received) {
                    c.commit(worker, r);
                }
                if let Some(c) = capture.filter(|c| c.spec.port == port) {
                    if let Some(r) = c.copy(worker, frame.data(), ctx.now_ns, Direction::Out) {
                        c.commit(worker, r);
                    }
                }
                tx.push(ctx, port, frame, tunnel);
            }
            Verdict::Drop(reason) => {
                counters.drop(reason);
                in_counters.drops.incr();
                if let (Some(c), Some(mut r)) = (capture, received) {
                    if c.spec.drops {
                        r.drop = Some(reason);
                        c.commit(worker, r);
                    } else {
                        c.give_back(worker, r);
                    }
                }
            }
        }
    }
}

/// One worker's transmit queue for one port id.
struct TxSlot {
    /// The table generation of the port the queue was made by.
    generation: u64,
    queue: TxQueue,
    /// Pushed to in the current batch (listed in `TxQueues::touched`).
    touched: bool,
}

/// A worker's transmit queues, indexed by port id.
#[derive(Default)]
struct TxQueues {
    slots: Vec<Option<TxSlot>>,
    /// Ports pushed to in the current batch, flushed at its end.
    touched: Vec<PortId>,
    /// The table snapshot the queues were last checked against.
    table: usize,
    /// Tunnel counter slots of the nodes frames went to lately.
    node_slots: NodeSlotCache,
    /// The host port of the table snapshot followed.
    host: Option<PortId>,
    /// Frames written to the host port since [`TxQueues::take_host_sent`]
    /// (or the round's start), for [`chase_host`].
    host_sent: usize,
}

/// A worker's memory of the FIB's tunnel counter slots, so a frame to the
/// tunnel costs an array read and compare, not a probe of the node table:
/// direct-mapped by the node address's low bits (nodes of one underlay
/// subnet differ there), filled from [`crate::fib::FibTable::node_slot`]
/// on a miss. Never stale: the FIB keeps a node's slot for its whole life,
/// and a worker follows one FIB.
struct NodeSlotCache([(u32, u16); NodeSlotCache::LEN]);

impl Default for NodeSlotCache {
    fn default() -> Self {
        // Address 0 is never a node, so the empty entries never match.
        NodeSlotCache([(0, 0); NodeSlotCache::LEN])
    }
}

impl NodeSlotCache {
    const LEN: usize = 64;

    /// The slot of `node`, if the batch's FIB knows it.
    #[inline]
    fn slot(&mut self, ctx: &BatchContext<'_>, node: Ipv4Addr) -> Option<u16> {
        let key = u32::from(node);
        let entry = &mut self.0[key as usize % Self::LEN];
        if entry.0 == key && key != 0 {
            return Some(entry.1);
        }
        let slot = ctx.fib.node_slot(node)?;
        *entry = (key, slot);
        Some(slot)
    }
}

impl TxQueues {
    /// Drops the queues of ports no longer in `ports` (or replaced), when
    /// `ports` is a snapshot not seen before: a queue may hold a send ring,
    /// and the next port at that id needs its own.
    fn follow(&mut self, ports: &Arc<PortTable>) {
        self.host_sent = 0;
        let table = Arc::as_ptr(ports) as usize;
        if table == self.table {
            return;
        }
        self.table = table;
        self.host = ports.host_port();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot
                .as_ref()
                .is_some_and(|s| s.generation != ports.generation(PortId(i as u32)))
            {
                *slot = None;
            }
        }
    }

    /// Sends (or queues) one frame out of `out`, counting it.
    fn push(
        &mut self,
        ctx: &BatchContext<'_>,
        out: PortId,
        frame: &Frame,
        tunnel: Option<Ipv4Addr>,
    ) {
        let Some((egress, generation)) = ctx.ports.get_with_generation(out) else {
            ctx.counters.drop(DropReason::NoPort);
            return;
        };
        let i = out.0 as usize;
        if self.slots.len() <= i {
            // Once per port id this worker sends to.
            self.slots.resize_with(i + 1, || None);
        }
        let slot = match &mut self.slots[i] {
            Some(s) if s.generation == generation => s,
            // First frame to this port (or to a new port at this id).
            other => other.insert(TxSlot {
                generation,
                queue: egress.port.tx_queue(),
                touched: false,
            }),
        };
        match egress.port.push(&mut slot.queue, frame, tunnel) {
            Ok(()) => {
                ctx.counters.tx.incr();
                let c = ctx.counters.port(out);
                c.tx_packets.incr();
                c.tx_bytes.add(frame.len() as u64);
                if let Some(node_slot) = tunnel.and_then(|n| self.node_slots.slot(ctx, n)) {
                    // The inner packet behind its Ethernet header.
                    let t = ctx.counters.tunnel(node_slot);
                    t.tx_packets.incr();
                    t.tx_bytes
                        .add(frame.len().saturating_sub(crate::wire::ETHERNET_HEADER_LEN) as u64);
                }
                if !slot.touched {
                    slot.touched = true;
                    self.touched.push(out);
                }
                if self.host == Some(out) {
                    self.host_sent += 1;
                }
            }
            Err(_) => {
                ctx.counters.drop(DropReason::TxError);
                ctx.counters.port(out).drops.incr();
            }
        }
    }

    /// The host port and the frames written to it since the last call.
    fn take_host_sent(&mut self) -> (Option<PortId>, usize) {
        (self.host, std::mem::take(&mut self.host_sent))
    }

    /// Flushes every queue pushed to in this batch.
    fn flush(&mut self, ports: &PortTable, counters: &WorkerCounters) {
        for id in self.touched.drain(..) {
            let Some(slot) = self.slots.get_mut(id.0 as usize).and_then(|s| s.as_mut()) else {
                continue;
            };
            slot.touched = false;
            let Some(e) = ports.get(id) else {
                continue;
            };
            if let Err(err) = e.port.flush(&mut slot.queue) {
                // Frames queued by push() were lost (the port keeps the
                // exact count itself): count the failed flush.
                counters.drop(DropReason::TxError);
                log::debug!("port {} flush failed: {err}", id.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::SharedCounters;
    use crate::fib::Fib;
    use crate::port::{MemPort, PortEntry, PortInfo, PortRole};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// A worker's configuration for tests: no rate limits, empty tables.
    /// A worker on no thread of its own, for driving `poll_round` by hand:
    /// batches of `batch`, the given FIB, port table, owned ports and
    /// port-to-slot map.
    fn test_worker(
        batch: usize,
        fib: Fib,
        table: PortTable,
        owned: Vec<OwnedPort>,
        slot_of: Vec<u32>,
    ) -> Worker {
        let cfg = test_config(batch);
        Worker {
            pipeline: Pipeline::new(cfg.pipeline.clone()),
            frames: (0..batch).map(|_| Frame::new()).collect(),
            cfg,
            fib: Arc::new(fib),
            ports: Arc::new(ArcSwap::from_pointee(table)),
            poll: Poll::new().unwrap(),
            commands: mpsc::channel().1,
            stop: Arc::new(AtomicBool::new(false)),
            paused: false,
            counters: Arc::new(SharedCounters::default()),
            owned,
            tx: TxQueues::default(),
            slot_of,
            stale_edge: None,
        }
    }

    fn test_config(batch_size: usize) -> WorkerConfig {
        WorkerConfig {
            id: 0,
            core: None,
            batch_size,
            pipeline: PipelineConfig {
                router_mac: crate::ROUTER_MAC,
                node_ip: Ipv4Addr::new(192, 168, 0, 2),
                icmp_rate_per_sec: 0,
                icmp_burst: 0,
                arp_rate_per_sec: 0,
                arp_burst: 0,
            },
            flows: Arc::new(FlowTable::new(8, Default::default())),
            policies: Arc::new(crate::policy::Policies::new()),
            services: Arc::new(crate::service::Services::new()),
            taps: Arc::new(Taps::new()),
            path_mtus: Arc::new(crate::pmtu::PathMtus::new()),
            busy_poll: Duration::ZERO,
            busy_poll_max: Duration::ZERO,
            slice: Duration::ZERO,
            rt_priority: 0,
        }
    }

    /// A port whose queue collects frames (with their tunnel) until flush,
    /// which moves them to `sent`; it counts the queues it made.
    #[derive(Default)]
    struct QueuedPort {
        queues_made: AtomicUsize,
        sent: Mutex<Vec<(usize, Option<Ipv4Addr>)>>,
    }

    impl Port for QueuedPort {
        fn recv(&self, _: &mut [Frame]) -> io::Result<usize> {
            Ok(0)
        }
        fn readiness_fd(&self) -> Option<RawFd> {
            None
        }
        fn tx_queue(&self) -> TxQueue {
            self.queues_made.fetch_add(1, Ordering::Relaxed);
            TxQueue::new(Vec::<(usize, Option<Ipv4Addr>)>::with_capacity(8))
        }
        fn push(&self, q: &mut TxQueue, f: &Frame, tunnel: Option<Ipv4Addr>) -> io::Result<()> {
            let q = q
                .state::<Vec<(usize, Option<Ipv4Addr>)>>()
                .ok_or_else(crate::port::foreign_queue)?;
            q.push((f.len(), tunnel));
            Ok(())
        }
        fn flush(&self, q: &mut TxQueue) -> io::Result<()> {
            let q = q
                .state::<Vec<(usize, Option<Ipv4Addr>)>>()
                .ok_or_else(crate::port::foreign_queue)?;
            self.sent.lock().unwrap().append(q);
            Ok(())
        }
    }

    fn table_with(id: PortId, port: Arc<QueuedPort>) -> Arc<PortTable> {
        let entry = PortEntry {
            info: PortInfo {
                name: "q".into(),
                role: PortRole::Host { mac: [2; 6] },
                mtu: 1500,
            },
            port,
        };
        Arc::new(PortTable::default().with(id, entry))
    }

    #[test]
    fn the_prefetch_reads_ipv4_destinations_only() {
        let mut f = [0u8; 34];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[30..34].copy_from_slice(&[10, 244, 1, 7]);
        assert_eq!(
            super::ipv4_destination(&f),
            Some(std::net::Ipv4Addr::new(10, 244, 1, 7))
        );
        assert_eq!(super::ipv4_destination(&f[..33]), None, "truncated");
        f[13] = 0x06; // ARP
        assert_eq!(super::ipv4_destination(&f), None);
        assert_eq!(super::ipv4_destination(&[]), None);
    }

    /// A flooding port gets one batch per round, like every other port:
    /// its backlog waits for later rounds, not its neighbours.
    #[test]
    fn a_round_takes_at_most_one_batch_from_each_port() {
        let batch = 8;
        let (flood_id, quiet_id) = (PortId(0), PortId(1));
        let (flood, quiet) = (Arc::new(MemPort::new()), Arc::new(MemPort::new()));
        let pod = |ip| PortRole::Pod {
            ip,
            mac: [2, 0, 0, 0, 0, 1],
        };
        let entry = |port: &Arc<MemPort>, role| PortEntry {
            info: PortInfo {
                name: "p".into(),
                role,
                mtu: 1500,
            },
            port: port.clone(),
        };
        let table = PortTable::default()
            .with(flood_id, entry(&flood, pod(Ipv4Addr::new(10, 0, 0, 1))))
            .with(quiet_id, entry(&quiet, pod(Ipv4Addr::new(10, 0, 0, 2))));
        for _ in 0..3 * batch {
            flood.inject(&[0; 60]);
        }
        quiet.inject(&[0; 60]);
        let owned = |id, port: &Arc<MemPort>| OwnedPort {
            id,
            port: port.clone(),
            failed: false,
            ready: true,
            short_recv_drains: false,
        };
        let mut worker = test_worker(
            batch,
            Fib::new(),
            table,
            vec![owned(flood_id, &flood), owned(quiet_id, &quiet)],
            Vec::new(),
        );
        assert!(worker.poll_round(crate::clock::now_ns()));
        let rx = |id| worker.counters.port(id).rx_packets.get();
        assert_eq!((rx(flood_id), rx(quiet_id)), (batch as u64, 1));
        assert!(worker.poll_round(crate::clock::now_ns()));
        let rx = |id| worker.counters.port(id).rx_packets.get();
        assert_eq!((rx(flood_id), rx(quiet_id)), (2 * batch as u64, 1));
    }

    /// A test port's receive: moves as many queued frames as fit into
    /// `frames`, oldest first, and says how many.
    fn hand_out(queued: &Mutex<Vec<Vec<u8>>>, frames: &mut [Frame]) -> usize {
        let mut q = queued.lock().unwrap();
        let n = q.len().min(frames.len());
        for (f, data) in frames.iter_mut().zip(q.drain(..n)) {
            f.rx_buffer()[..data.len()].copy_from_slice(&data);
            f.set_len(data.len());
        }
        n
    }

    /// A port with a readiness fd (a socket standing in for the device)
    /// that hands out what was injected and counts its receives.
    struct EdgePort {
        fd: std::os::unix::net::UnixStream,
        frames: Mutex<Vec<Vec<u8>>>,
        recvs: AtomicUsize,
        drains: bool,
    }

    impl Port for EdgePort {
        fn recv(&self, frames: &mut [Frame]) -> io::Result<usize> {
            self.recvs.fetch_add(1, Ordering::Relaxed);
            Ok(hand_out(&self.frames, frames))
        }
        fn readiness_fd(&self) -> Option<RawFd> {
            Some(std::os::fd::AsRawFd::as_raw_fd(&self.fd))
        }
        fn push(&self, _: &mut TxQueue, _: &Frame, _: Option<Ipv4Addr>) -> io::Result<()> {
            Ok(())
        }
        fn short_recv_drains(&self) -> bool {
            self.drains
        }
    }

    /// A port whose short receive drains it is received from once per
    /// wake-up with frames, not a second time to find it empty; any other
    /// port is, and neither leaves a frame behind.
    #[test]
    fn a_short_receive_from_a_draining_port_ends_its_turn() {
        for drains in [true, false] {
            let (fd, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let port = Arc::new(EdgePort {
                fd,
                frames: Mutex::new(vec![vec![0; 60]]),
                recvs: AtomicUsize::new(0),
                drains,
            });
            let mut worker = test_worker(
                8,
                Fib::new(),
                PortTable::default(),
                vec![OwnedPort {
                    id: PortId(0),
                    port: port.clone(),
                    failed: false,
                    ready: true,
                    short_recv_drains: drains,
                }],
                Vec::new(),
            );
            assert!(worker.poll_round(crate::clock::now_ns()));
            worker.poll_round(crate::clock::now_ns());
            worker.poll_round(crate::clock::now_ns());
            let recvs = port.recvs.load(Ordering::Relaxed);
            assert_eq!(recvs, if drains { 1 } else { 2 }, "drains: {drains}");
            assert_eq!(worker.counters.rx.get(), 1);
            assert!(!worker.owned[0].ready);
            // Another frame and its edge: received.
            port.frames.lock().unwrap().push(vec![0; 60]);
            worker.owned[0].ready = true;
            assert!(worker.poll_round(crate::clock::now_ns()));
            assert_eq!(worker.counters.rx.get(), 2);
        }
    }

    const POD_A_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const POD_B_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
    const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

    /// An Ethernet frame to the router carrying a UDP datagram.
    fn udp_frame(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[..6].copy_from_slice(&crate::ROUTER_MAC);
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&32u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&53u16.to_be_bytes());
        ip[24..26].copy_from_slice(&12u16.to_be_bytes());
        crate::wire::Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
        f
    }

    /// A host port like a TAP to a node with kube-proxy's DNAT: what is
    /// written to it is on its receive queue when the write returns (the
    /// node's stack ran inside the write), addressed to pod B instead of
    /// the ClusterIP, if `answers`. Records the buffer count of each
    /// receive.
    struct InlineHost {
        fd: std::os::unix::net::UnixStream,
        answers: bool,
        queued: Mutex<Vec<Vec<u8>>>,
        recvs: Mutex<Vec<usize>>,
    }

    impl Port for InlineHost {
        fn recv(&self, frames: &mut [Frame]) -> io::Result<usize> {
            self.recvs.lock().unwrap().push(frames.len());
            Ok(hand_out(&self.queued, frames))
        }
        fn readiness_fd(&self) -> Option<RawFd> {
            Some(std::os::fd::AsRawFd::as_raw_fd(&self.fd))
        }
        fn push(&self, _: &mut TxQueue, f: &Frame, _: Option<Ipv4Addr>) -> io::Result<()> {
            let d = f.data();
            assert_eq!(&d[30..34], &CLUSTER_IP.octets(), "to the node: {d:?}");
            if self.answers {
                let src = Ipv4Addr::new(d[26], d[27], d[28], d[29]);
                let back = udp_frame(HOST_MAC, src, POD_B_IP);
                self.queued.lock().unwrap().push(back);
            }
            Ok(())
        }
        fn short_recv_drains(&self) -> bool {
            true
        }
    }

    /// Pod A's datagram to a ClusterIP goes to the host port; the node's
    /// answer (the DNATed datagram, queued on the host port inside the
    /// write) reaches pod B in the same round, read with one single-frame
    /// receive (none that ends at EAGAIN), and the next round receives
    /// from the host port last. A host port that answers nothing costs
    /// one receive that comes back empty and marks it drained.
    #[test]
    fn what_the_node_sends_back_inline_is_read_in_the_same_round() {
        for answers in [true, false] {
            let (a_id, b_id, host_id) = (PortId(0), PortId(1), PortId(2));
            let (a, b) = (Arc::new(MemPort::new()), Arc::new(MemPort::new()));
            let (fd, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let host = Arc::new(InlineHost {
                fd,
                answers,
                queued: Mutex::new(Vec::new()),
                recvs: Mutex::new(Vec::new()),
            });
            let pod = |name: &str, port: &Arc<MemPort>, ip, mac| PortEntry {
                info: PortInfo {
                    name: name.into(),
                    role: PortRole::Pod { ip, mac },
                    mtu: 1500,
                },
                port: port.clone() as Arc<dyn Port>,
            };
            let a_mac = [2, 0x42, 10, 244, 1, 2];
            let table = PortTable::default()
                .with(a_id, pod("a", &a, POD_A_IP, a_mac))
                .with(b_id, pod("b", &b, POD_B_IP, [2, 0x42, 10, 244, 1, 3]))
                .with(
                    host_id,
                    PortEntry {
                        info: PortInfo {
                            name: "podrouter0".into(),
                            role: PortRole::Host { mac: HOST_MAC },
                            mtu: 1500,
                        },
                        port: host.clone(),
                    },
                );
            let fib = Fib::new();
            let net = |a, len| crate::fib::Prefix::new(a, len).unwrap();
            fib.update(&[
                crate::fib::FibChange::Insert(net(POD_A_IP, 32), crate::fib::NextHop::Local(a_id)),
                crate::fib::FibChange::Insert(net(POD_B_IP, 32), crate::fib::NextHop::Local(b_id)),
                crate::fib::FibChange::Insert(
                    net(Ipv4Addr::new(10, 96, 0, 0), 12),
                    crate::fib::NextHop::Host,
                ),
            ]);
            a.inject(&udp_frame(a_mac, POD_A_IP, CLUSTER_IP));
            let owned = |id, port: Arc<dyn Port>, ready| OwnedPort {
                id,
                short_recv_drains: port.short_recv_drains(),
                port,
                failed: false,
                ready,
            };
            let mut worker = test_worker(
                8,
                fib,
                table,
                vec![
                    owned(host_id, host.clone(), false),
                    owned(a_id, a.clone(), true),
                ],
                vec![1, u32::MAX, 0],
            );
            assert!(worker.poll_round(crate::clock::now_ns()));
            let sent = b.take_sent();
            let recvs = host.recvs.lock().unwrap().clone();
            let inline = worker.counters.host_inline.get();
            if answers {
                assert_eq!(
                    sent.len(),
                    1,
                    "pod B got the node's answer in the same round"
                );
                assert_eq!(&sent[0].1[30..34], &POD_B_IP.octets());
                assert_eq!(recvs, [1], "one single-frame receive from the host port");
                assert_eq!(inline, 1);
                assert_eq!(worker.stale_edge, Some(0), "host port read inline");
                assert!(!worker.owned[0].ready, "the chase does not mark it ready");
                // Its edge comes; pod A is ready too: A is received first.
                worker.owned[0].ready = true;
                worker.owned[1].ready = true;
                a.inject(&udp_frame(a_mac, POD_A_IP, CLUSTER_IP));
                assert!(worker.poll_round(crate::clock::now_ns()));
                let recvs = host.recvs.lock().unwrap().clone();
                // A's frame was chased first (1), then the stale edge's
                // full-batch receive found nothing (8).
                assert_eq!(recvs, [1, 1, 8]);
                assert_eq!(b.take_sent().len(), 1);
                assert!(!worker.owned[0].ready);
            } else {
                assert!(sent.is_empty());
                assert_eq!(recvs, [1], "one receive that found nothing");
                assert_eq!(inline, 0);
                assert_eq!(worker.stale_edge, None);
                assert!(!worker.owned[0].ready);
            }
        }
    }

    /// A paused worker receives nothing, from ports it had and ports added
    /// meanwhile; what waited is received once it is resumed.
    #[test]
    fn a_paused_worker_receives_nothing_until_resumed() {
        let cfg = test_config(8);
        let ports = Arc::new(ArcSwap::from_pointee(PortTable::default()));
        let mut w = WorkerHandle::spawn(cfg, Arc::new(Fib::new()), ports).unwrap();
        let (a, b) = (Arc::new(MemPort::new()), Arc::new(MemPort::new()));
        w.add_port(PortId(0), a.clone()).unwrap();
        w.pause().unwrap().wait().unwrap();
        w.add_port(PortId(1), b.clone()).unwrap();
        a.inject(&[0; 60]);
        b.inject(&[0; 60]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(w.counters.rx.get(), 0, "a paused worker received");
        w.resume().unwrap();
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        while w.counters.rx.get() < 2 && std::time::Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(w.counters.rx.get(), 2);
        w.stop();
    }

    #[test]
    fn frames_to_the_tunnel_count_under_their_node() {
        let fib = Fib::new();
        let (near, far) = (Ipv4Addr::new(192, 168, 0, 2), Ipv4Addr::new(192, 168, 0, 3));
        let block = |a: [u8; 4]| crate::fib::Prefix::new(Ipv4Addr::from(a), 26).unwrap();
        fib.update(&[
            crate::fib::FibChange::Insert(block([10, 244, 1, 0]), crate::fib::NextHop::Node(near)),
            crate::fib::FibChange::Insert(block([10, 244, 2, 0]), crate::fib::NextHop::Node(far)),
        ]);
        let fib = fib.load();
        let counters = SharedCounters::default();
        let id = PortId(3);
        let ports = table_with(id, Arc::new(QueuedPort::default()));
        let flows = FlowTable::new(8, Default::default());
        let mut tx = TxQueues::default();
        tx.follow(&ports);
        let ctx = BatchContext::new(&fib, &ports, &counters, &flows, 0);
        // Ethernet header + 84-byte inner packet (a ping of 56 bytes).
        for _ in 0..3 {
            tx.push(&ctx, id, &Frame::from_bytes(&[0; 98]), Some(near));
        }
        tx.push(&ctx, id, &Frame::from_bytes(&[0; 114]), Some(far));
        tx.push(&ctx, id, &Frame::from_bytes(&[0; 60]), None);
        // A node this snapshot does not know has no slot: not counted.
        tx.push(
            &ctx,
            id,
            &Frame::from_bytes(&[0; 60]),
            Some(Ipv4Addr::new(192, 168, 0, 9)),
        );
        tx.flush(&ports, &counters);
        let sent = |n| {
            let t = counters.tunnel(fib.node_slot(n).unwrap());
            (t.tx_packets.get(), t.tx_bytes.get(), t.rx_packets.get())
        };
        assert_eq!(sent(near), (3, 3 * 84, 0));
        assert_eq!(sent(far), (1, 100, 0));
        assert_eq!(counters.port(id).tx_packets.get(), 6, "port counts all");
    }

    #[test]
    fn a_worker_keeps_one_queue_per_port_and_flushes_it_per_batch() {
        let fib = Fib::new();
        let fib = fib.load();
        let counters = SharedCounters::default();
        let id = PortId(3);
        let port = Arc::new(QueuedPort::default());
        let ports = table_with(id, port.clone());
        let mut tx = TxQueues::default();
        let flows = FlowTable::new(8, Default::default());
        let node = Some(Ipv4Addr::new(192, 168, 0, 2));
        for batch in 0..3 {
            tx.follow(&ports);
            let ctx = BatchContext::new(&fib, &ports, &counters, &flows, 0);
            for len in [60, 70] {
                tx.push(&ctx, id, &Frame::from_bytes(&vec![0; len]), node);
            }
            tx.push(&ctx, PortId(9), &Frame::from_bytes(&[0; 60]), None);
            assert!(
                port.sent.lock().unwrap().len() == batch * 2,
                "queued until the flush"
            );
            tx.flush(&ports, &counters);
            assert_eq!(port.sent.lock().unwrap().len(), (batch + 1) * 2);
        }
        assert_eq!(port.queues_made.load(Ordering::Relaxed), 1, "made once");
        assert_eq!(port.sent.lock().unwrap()[..2], [(60, node), (70, node)]);
        assert_eq!(counters.tx.get(), 6);
        assert_eq!(counters.port(id).tx_packets.get(), 6);
        assert_eq!(counters.drops(DropReason::NoPort), 3);

        // Another port at the same id gets a queue of its own; the old
        // queue goes as soon as the worker sees the new table.
        let other = Arc::new(QueuedPort::default());
        let ports = table_with(id, other.clone());
        tx.follow(&ports);
        assert!(tx.slots[3].is_none(), "stale queue dropped");
        let ctx = BatchContext::new(&fib, &ports, &counters, &flows, 0);
        tx.push(&ctx, id, &Frame::from_bytes(&[0; 60]), None);
        tx.flush(&ports, &counters);
        assert_eq!(other.queues_made.load(Ordering::Relaxed), 1);
        assert_eq!(other.sent.lock().unwrap().len(), 1);
        assert_eq!(port.sent.lock().unwrap().len(), 6);
    }
}
