//! Workers: one thread per configured core that polls its ports in
//! batches, runs each frame through the pipeline and sends it on.
//!
//! Invariants: a port is received from by exactly one worker (the one it
//! was added to); the FIB and port table are loaded once per batch; a round
//! receives only from ports epoll reported readable (edge-triggered, through
//! mio) since they were last drained, so a worker with a thousand idle pods
//! makes no syscall for them; a port leaves the ready set only when a
//! receive returned nothing, so no frame is left behind an edge; ports
//! without an fd are polled every round; nothing on
//! the per-frame path allocates, locks or logs.
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

use crate::conntrack::FlowTable;
use crate::counters::{DropReason, SharedCounters, WorkerCounters};
use crate::fib::Fib;
use crate::frame::Frame;
use crate::pipeline::{BatchContext, Pipeline, PipelineConfig, Verdict};
use crate::port::{Port, PortId, PortTable};

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
}

enum Command {
    AddPort(PortId, Arc<dyn Port>),
    /// Stop receiving from the port; the sender is told when done.
    RemovePort(PortId, Sender<()>),
}

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
            counters: counters.clone(),
            owned: Vec::new(),
            touched: Vec::new(),
            slot_of: Vec::new(),
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

    /// Takes a port away and waits (bounded) until the worker has let go.
    pub fn remove_port(&mut self, id: PortId) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::RemovePort(id, tx))?;
        self.ports = self.ports.saturating_sub(1);
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "worker did not release the port"))
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
    /// came back empty. Ports without an fd are always treated as ready.
    ready: bool,
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
    counters: Arc<SharedCounters>,
    owned: Vec<OwnedPort>,
    /// Egress ports used in the current batch, flushed at its end.
    touched: Vec<PortId>,
    /// Index in `owned` of each port id (the epoll token), `u32::MAX` if
    /// not owned.
    slot_of: Vec<u32>,
}

impl Worker {
    fn run(mut self) {
        if let Some(core) = self.cfg.core {
            match crate::sys::pin_current_thread_to_core(core) {
                Ok(()) => log::info!("worker {} pinned to core {core}", self.cfg.id),
                Err(e) => log::warn!("worker {}: cannot pin to core {core}: {e}", self.cfg.id),
            }
        }
        let mut events = Events::with_capacity(256);
        let mut idle_rounds = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            if self.apply_commands().is_err() {
                break; // control thread is gone
            }
            let timeout = if self.poll_round() {
                idle_rounds = 0;
                Some(Duration::ZERO)
            } else {
                idle_rounds += 1;
                if idle_rounds < IDLE_ROUNDS_BEFORE_SLEEP {
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

    /// One pass over every owned port; true if any frame was received.
    fn poll_round(&mut self) -> bool {
        let fib = self.fib.load();
        let ports = self.ports.load();
        let policy = self.cfg.policies.load();
        let counters: &WorkerCounters = &self.counters;
        let ctx = BatchContext {
            fib: &fib,
            ports: &ports,
            counters,
            flows: &self.cfg.flows,
            policy: &policy,
            now_ns: crate::clock::now_ns(),
        };
        let mut busy = false;
        for owned in self.owned.iter_mut().filter(|p| p.ready && !p.failed) {
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
            busy = true;
            counters.rx.add(n as u64);
            let in_counters = counters.port(owned.id);
            in_counters.rx_packets.add(n as u64);
            for frame in &mut self.frames[..n] {
                in_counters.rx_bytes.add(frame.len() as u64);
                match self.pipeline.process(&ctx, owned.id, frame) {
                    Verdict::Forward(out) => {
                        forward(&ctx, out, frame, &mut self.touched);
                    }
                    Verdict::Drop(reason) => {
                        counters.drop(reason);
                        in_counters.drops.incr();
                    }
                }
            }
        }
        for id in self.touched.drain(..) {
            if let Some(e) = ports.get(id) {
                if let Err(err) = e.port.flush() {
                    // Frames queued by send() were lost (the uplink keeps
                    // the exact count itself): count the failed flush.
                    counters.drop(DropReason::TxError);
                    log::debug!("port {} flush failed: {err}", id.0);
                }
            }
        }
        busy
    }
}

/// Sends one frame out of `out`, counting it.
fn forward(ctx: &BatchContext<'_>, out: PortId, frame: &Frame, touched: &mut Vec<PortId>) {
    let Some(egress) = ctx.ports.get(out) else {
        ctx.counters.drop(DropReason::NoPort);
        return;
    };
    match egress.port.send(frame) {
        Ok(()) => {
            ctx.counters.tx.incr();
            let c = ctx.counters.port(out);
            c.tx_packets.incr();
            c.tx_bytes.add(frame.len() as u64);
            if !touched.contains(&out) {
                touched.push(out);
            }
        }
        Err(_) => {
            ctx.counters.drop(DropReason::TxError);
            ctx.counters.port(out).drops.incr();
        }
    }
}
