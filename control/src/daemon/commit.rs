//! Group commit: the control thread answers a batch of API calls (every
//! call queued when it gets to them) in memory, then makes their changes
//! durable with one write of the state file (and at most one of the
//! policy file, for the pods' identities), and only then lets the
//! answers go. 20 concurrent attaches wait for one or two fsyncs instead
//! of twenty.
//!
//! Invariants:
//! - No answer leaves before the state it reports is on disk: a caller
//!   takes [`Uncommitted::response`] only after [`Daemon::commit`] ran
//!   for its batch. A pod whose attach was answered with success is in
//!   the state file, so a crash (kill -9) at any point after the answer
//!   finds it at the next start.
//! - A failed write fails every attach of the batch: each is undone (port,
//!   worker, FIB, host route, interface, address: what a refused attach
//!   leaves) and answered with the error; the file is then written again
//!   without them. Undoing only ever removes pods, so the state in memory
//!   is again what the old file said, minus the batch's detaches.
//! - A detach is never undone: its pod left the data plane when it was
//!   handled. If the write fails, it is answered with that error (the
//!   caller retries: the pod is gone, and a CNI DEL with netns and ifname
//!   then succeeds); the file still lists the pod until the next
//!   successful write, and a crash before that brings the pod back if its
//!   interface is still there, for the retried detach to take it, or
//!   forgets it if not. The state stays marked unwritten, so the next
//!   commit writes it.
//! - A detach's interface removal runs after its answer (see
//!   [`super::removal`]), so after the commit; were it to run before, a
//!   crash in between would find a pod in the old file whose interface is
//!   gone, forget it and free its address at start: what the detach
//!   asked for.
//! - Changes reach the file in the order the calls were handled, and a
//!   batch is written whole: a crash leaves the file of the last commit
//!   or of this one, never a part of a batch.
use std::time::Instant;

use podrouter_api::{Call, PodIdentity, Reply, Response};

use super::{Daemon, InterfaceRemoval};
use crate::call_error::CallError;
use crate::state::PodRecord;

/// A call answered in memory whose changes are not durable yet.
#[must_use = "the answer may go out only after Daemon::commit"]
pub struct Uncommitted {
    response: Response,
    removal: Option<InterfaceRemoval>,
    /// The pod an attach added: undone if the batch's write fails.
    attached: Option<PodRecord>,
    /// The pod a detach took out: its answer says so if the write fails.
    detached: Option<String>,
    /// An attach or a detach, and when it arrived: counted at the commit
    /// (its latency includes the write).
    timed: Option<(Op, Instant)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Attach,
    Detach,
}

impl Uncommitted {
    /// A detach's interface removal, to hand to the thread that runs it
    /// (the connection's, once the answer is written). Running it before
    /// the state without the pod is durable would be safe too (see the
    /// module's invariants).
    pub fn take_removal(&mut self) -> Option<InterfaceRemoval> {
        self.removal.take()
    }

    /// The answer, once [`Daemon::commit`] has run for the batch; a
    /// removal not taken before goes with it.
    pub fn finish(self) -> (Response, Option<InterfaceRemoval>) {
        (self.response, self.removal)
    }

    /// The answer, to fill in what the server adds (status).
    pub fn response_mut(&mut self) -> &mut Response {
        &mut self.response
    }
}

/// What a batch changed beside the pods themselves, until its commit.
#[derive(Default)]
pub(super) struct Unwritten {
    /// The pods changed since the state file was last written.
    pub(super) state: bool,
    /// Identities to record (`None`: forget), in call order.
    pub(super) identities: Vec<(String, Option<PodIdentity>)>,
    /// The compiled policy no longer matches the pods.
    pub(super) policy: bool,
}

impl Daemon {
    /// Handles `call` in memory, leaving its durable part to
    /// [`Daemon::commit`] (with the other calls of its batch).
    pub fn call_uncommitted(&mut self, call: Call) -> Uncommitted {
        let op = match call {
            Call::Attach(_) => Some(Op::Attach),
            Call::Detach(_) => Some(Op::Detach),
            _ => None,
        };
        let timed = op.map(|op| (op, Instant::now()));
        let (response, removal) = self.handle_in_memory(call);
        let attached = match (&response.result, op) {
            (Some(Reply::Pod(info)), Some(Op::Attach)) => {
                self.pods.get(&info.id).map(|p| p.record.clone())
            }
            _ => None,
        };
        // A detach of a known pod leaves its interface's removal.
        let detached = match (&response.result, &removal) {
            (Some(Reply::Detached { id }), Some(_)) => Some(id.clone()),
            _ => None,
        };
        Uncommitted {
            response,
            removal,
            attached,
            detached,
            timed,
        }
    }

    /// Makes the changes of `batch` (every call handled since the last
    /// commit) durable: one write of the state file if any pod changed,
    /// one of the policy file if any identity did, then the compiled
    /// policy is published. On a failed write the batch's attaches are
    /// undone and their answers say why.
    pub fn commit(&mut self, batch: &mut [Uncommitted]) {
        let mut identities = std::mem::take(&mut self.unwritten.identities);
        if self.unwritten.state {
            let start = Instant::now();
            match self.store.save(&self.records()) {
                Ok(()) => {
                    self.unwritten.state = false;
                    log::info!(
                        "state written: {} call(s) in the batch, {} pod(s), {:.2} ms",
                        batch.len(),
                        self.pods.len(),
                        super::ms(start.elapsed())
                    );
                }
                Err(e) => {
                    let undone = self.undo_attaches(batch, |id| CallError::NotSaved {
                        id,
                        source: e.duplicate(),
                    });
                    log::error!("state file not written: {e}; {undone} attach(es) undone");
                    if !self.rewrite_state() {
                        // The detaches are not durable either.
                        for u in batch.iter_mut() {
                            if let Some(id) = u.detached.take() {
                                u.response = CallError::DetachNotSaved {
                                    id,
                                    source: e.duplicate(),
                                }
                                .response();
                            }
                        }
                    }
                    // The undone pods' identities are not recorded.
                    identities.retain(|(id, i)| i.is_none() || self.pods.contains_key(id));
                }
            }
        }
        if let Err(e) = self.policy_store.set_identities(&identities) {
            let undone = self.undo_attaches(batch, |id| CallError::Identity {
                id,
                source: e.clone(),
            });
            log::error!("pod identities not saved: {e}; {undone} attach(es) undone");
            if undone > 0 {
                self.rewrite_state();
            }
        }
        if std::mem::take(&mut self.unwritten.policy) {
            self.publish_policy();
        }
        for u in batch.iter() {
            let ok = u.response.error.is_none();
            match u.timed {
                Some((Op::Attach, t)) => self.attach_stats.record(t.elapsed(), ok),
                Some((Op::Detach, t)) => self.detach_stats.record(t.elapsed(), ok),
                None => {}
            }
        }
    }

    /// Handles `call` and commits it alone.
    pub(super) fn call_committed(&mut self, call: Call) -> (Response, Option<InterfaceRemoval>) {
        let mut batch = [self.call_uncommitted(call)];
        self.commit(&mut batch);
        let [u] = batch;
        u.finish()
    }

    /// Undoes every attach of `batch` that still stands, last first, and
    /// answers it with `why`; returns how many.
    fn undo_attaches(
        &mut self,
        batch: &mut [Uncommitted],
        why: impl Fn(String) -> CallError,
    ) -> usize {
        let mut undone = 0;
        for u in batch.iter_mut().rev() {
            let Some(r) = u.attached.take() else { continue };
            // A detach later in the batch may have removed it already (its
            // own answer said so), or the id may now be another pod's.
            if self.pods.get(&r.id).map(|p| &p.record) != Some(&r) {
                continue;
            }
            self.uninstall(&r.id);
            self.discard_interface(&r);
            self.ipam.release(r.ip);
            self.unwritten.policy = true;
            u.response = why(r.id).response();
            undone += 1;
        }
        undone
    }

    /// Writes the state after undoing attaches (best effort: on failure
    /// it stays marked unwritten, for the next commit); whether it did.
    fn rewrite_state(&mut self) -> bool {
        match self.store.save(&self.records()) {
            Ok(()) => {
                self.unwritten.state = false;
                true
            }
            Err(e) => {
                log::error!("state file still not written: {e}; retried at the next call");
                false
            }
        }
    }
}

#[cfg(test)]
impl Daemon {
    /// How many times the state file was written since the start.
    pub(crate) fn state_writes(&self) -> u64 {
        self.store.writes()
    }
}

#[cfg(test)]
mod tests {
    use podrouter_api::{AttachParams, Call, ErrorCode};

    use super::super::tests::{detach_call, TestNode};
    use super::Uncommitted;

    fn attach_call(t: &TestNode, id: &str) -> Call {
        Call::Attach(AttachParams {
            id: id.into(),
            netns: t.netns(id),
            ifname: "eth0".into(),
            ip: None,
            mtu: None,
            identity: None,
        })
    }

    /// Eight attaches and a detach handled as one batch: nothing of them
    /// is on disk until the commit, which writes the state once.
    #[test]
    fn a_batch_is_written_once_at_its_commit() {
        let mut t = TestNode::new("batch");
        assert_eq!(t.attach("old").error, None);
        let writes = t.d().state_writes();
        let mut calls: Vec<Call> = (0..8).map(|i| attach_call(&t, &format!("p{i}"))).collect();
        calls.push(detach_call("old"));
        let mut batch: Vec<Uncommitted> = calls
            .into_iter()
            .map(|c| t.d().call_uncommitted(c))
            .collect();
        let handled = t.snapshot();
        assert_eq!(handled.pods.len(), 8);
        assert_eq!(handled.saved, vec!["old"], "written before the commit");
        assert_eq!(t.d().state_writes(), writes);
        t.d().commit(&mut batch);
        assert_eq!(t.d().state_writes(), writes + 1);
        let ids: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        assert_eq!(t.snapshot().saved, ids);
        for u in batch {
            let (resp, removal) = u.finish();
            assert_eq!(resp.error, None);
            if let Some(r) = removal {
                let done = r.run();
                t.d().removal_done(done);
            }
        }
        assert_eq!(t.snapshot().free, handled.free + 1);
    }

    /// A batch whose write fails: every attach in it is undone and told
    /// why; the detach stands (its pod is gone) but says the write
    /// failed; the file catches up at the next commit.
    #[test]
    fn a_failed_write_undoes_every_attach_of_the_batch() {
        let mut t = TestNode::new("batch-fail");
        assert_eq!(t.attach("old").error, None);
        let before = t.snapshot();
        // The store writes state.json.tmp first; a directory there fails it.
        let tmp = t.dir.join("state").join("state.json.tmp");
        std::fs::create_dir(&tmp).unwrap();
        let calls = vec![
            attach_call(&t, "a"),
            attach_call(&t, "b"),
            detach_call("old"),
            attach_call(&t, "c"),
        ];
        let mut batch: Vec<Uncommitted> = calls
            .into_iter()
            .map(|c| t.d().call_uncommitted(c))
            .collect();
        assert_eq!(t.snapshot().pods, vec!["a", "b", "c"]);
        t.d().commit(&mut batch);
        std::fs::remove_dir(&tmp).unwrap();
        let answers: Vec<_> = batch.into_iter().map(Uncommitted::finish).collect();
        for (i, id) in [(0, "a"), (1, "b"), (3, "c")] {
            let e = answers[i].0.error.as_ref().expect("undone");
            assert_eq!(e.code, ErrorCode::Internal);
            assert!(
                e.message.starts_with(&format!("pod {id}: not attached: ")),
                "{e:?}"
            );
        }
        let e = answers[2]
            .0
            .error
            .as_ref()
            .expect("the detach is not durable");
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(
            e.message
                .starts_with("pod old: detached, but the state file was not written"),
            "{e:?}"
        );
        let mut answers = answers;
        let removal = answers[2].1.take().expect("the detach's removal");
        let done = removal.run();
        t.d().removal_done(done);
        let after = t.snapshot();
        assert!(after.pods.is_empty());
        assert!(after.net.interfaces.is_empty(), "{:?}", after.net);
        assert_eq!(after.free, before.free + 1);
        // Neither the write nor its retry after the undo got through.
        assert_eq!(after.saved, vec!["old"]);
        t.d().commit(&mut []);
        assert!(t.snapshot().saved.is_empty());
    }
}
