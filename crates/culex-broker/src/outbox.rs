//! A connection's outbox: the bounded queue from the router to one connection task.
//!
//! It does what a bounded `tokio::sync::mpsc` channel would (the router only ever uses
//! [`Outbox::try_send`]; the connection awaits [`OutboxReceiver::recv`]), but an idle connection
//! pays for it with one small allocation. A tokio channel allocates its state (~0.5 KB) and a
//! first block of 32 slots (~1 KB) when it is created, which was 40 % of an idle connection's
//! memory; this queue allocates item storage only when items arrive, and gives it back when the
//! connection asks ([`OutboxReceiver::shrink`]).
//!
//! The lock is held only to push one item, or to take every queued item at once: the receiver
//! swaps the shared queue with its own (empty) one and then pops without locking. The count of
//! items not yet received is an atomic, so the capacity the router sees is exactly that of a
//! channel of the same size: an item counts until the connection has taken it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use culex_proto::ReasonCode;

use crate::api::Outbound;

/// The message bytes an item holds: a delivery's message, nothing for control items.
fn item_bytes(item: &Outbound) -> u64 {
    match item {
        Outbound::Deliver(d) => d.message.size(),
        _ => 0,
    }
}

/// Creates an outbox that holds at most `capacity` items not yet received.
pub fn outbox(capacity: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        capacity,
        len: AtomicUsize::new(0),
        bytes: AtomicU64::new(0),
        want_free: AtomicU32::new(0),
        closing: AtomicBool::new(false),
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            senders: 1,
            closed: false,
            close: None,
        }),
    });
    (
        Outbox {
            shared: Arc::clone(&shared),
        },
        OutboxReceiver {
            shared,
            taken: VecDeque::new(),
        },
    )
}

/// What the router and the connection share.
struct Shared {
    /// Most items not yet received.
    capacity: usize,
    /// Items sent and not yet received (queued here or in the receiver's `taken`).
    len: AtomicUsize,
    /// Message bytes ([`Message::size`](crate::Message::size)) of the deliveries counted in
    /// `len`: what the outbox adds to a client's queued bytes.
    bytes: AtomicU64,
    /// Free slots the router waits for ([`Outbox::want_space`]); 0 = none wanted. (This and
    /// `State::senders` are 32 bits so that `Shared` stays at 96 bytes: one per connection.)
    want_free: AtomicU32,
    /// Set with `State::close`: lets the receiver see a close before popping what it took
    /// earlier, without the lock.
    closing: AtomicBool,
    state: Mutex<State>,
}

struct State {
    /// Items the receiver has not taken yet.
    queue: VecDeque<Outbound>,
    /// The receiver waiting for an item.
    waker: Option<Waker>,
    /// Live [`Outbox`] handles; at 0 the receiver sees the end.
    senders: u32,
    /// The receiver is gone: sends fail.
    closed: bool,
    /// The router asked the connection to close, with this reason.
    close: Option<ReasonCode>,
}

/// Shows the counts, never the queued items (a busy outbox holds thousands).
impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("capacity", &self.capacity)
            .field("len", &self.len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The state, also after a panic elsewhere (it holds no invariant a panic could break
    /// halfway: every change is one push, one swap or one flag).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why [`Outbox::try_send`] did not queue an item; the item comes back.
#[derive(Debug)]
pub enum TrySendError {
    /// The outbox holds `capacity` items.
    Full(Outbound),
    /// The connection is gone.
    Closed(Outbound),
}

/// Why [`OutboxReceiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing queued now.
    Empty,
    /// Nothing queued, and every [`Outbox`] handle is gone.
    Closed,
}

/// The router's side of a connection's bounded outbox. The router only ever uses
/// [`Outbox::try_send`]; it keeps the in-flight window and the QoS 0 budget within the
/// capacity, so a send never has to wait.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Queues `item` unless the outbox is full or the connection is gone.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError> {
        let waker = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(TrySendError::Closed(item));
            }
            if self.shared.len.load(Ordering::Acquire) >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            self.shared
                .bytes
                .fetch_add(item_bytes(&item), Ordering::AcqRel);
            state.queue.push_back(item);
            self.shared.len.fetch_add(1, Ordering::AcqRel);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Asks the connection to close with `reason` (it sends DISCONNECT with it to an MQTT 5
    /// client) at once: the receiver's next item is the close, and what is still queued is
    /// not written. Those are QoS 0 messages, which a closing connection loses anyway, and
    /// QoS 1/2 deliveries and acknowledgements, which the session sends again (or the client
    /// retransmits for) on the next connection; a client that has stopped reading cannot hold
    /// the close back. Needs no slot, so it cannot fail for a full outbox; the
    /// first reason given wins.
    pub fn close(&self, reason: ReasonCode) {
        let waker = {
            let mut state = self.shared.lock();
            if state.closed || state.close.is_some() {
                return;
            }
            state.close = Some(reason);
            self.shared.closing.store(true, Ordering::Release);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Free slots now.
    pub fn capacity(&self) -> usize {
        self.shared
            .capacity
            .saturating_sub(self.shared.len.load(Ordering::Acquire))
    }

    /// Asks the connection to report ([`OutboxReceiver::space_wanted`]) once at least `free`
    /// slots are free again. Returns true when they already are: then no report comes, and
    /// the router carries on at once.
    pub fn want_space(&self, free: usize) -> bool {
        let free = free.clamp(1, self.shared.capacity);
        let want = u32::try_from(free).unwrap_or(u32::MAX);
        self.shared.want_free.store(want, Ordering::SeqCst);
        // The receiver may have freed the room just before the store: look again, and take
        // the request back if it did (unless the receiver took it, and reports).
        self.capacity() >= free && self.shared.want_free.swap(0, Ordering::SeqCst) != 0
    }

    /// Items not yet received.
    pub fn len(&self) -> usize {
        self.shared.len.load(Ordering::Acquire)
    }

    /// True if every item was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Message bytes of the deliveries not yet received.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Acquire)
    }

    /// True once the connection has dropped its receiver.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Outbox {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The connection's side of its outbox.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
    /// Items taken from the shared queue in one swap, received one by one without the lock.
    taken: VecDeque<Outbound>,
}

impl std::fmt::Debug for OutboxReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

impl OutboxReceiver {
    /// The next item; `None` once every [`Outbox`] handle is gone and nothing is left. After
    /// [`Outbox::close`], always [`Outbound::Close`] with its reason.
    /// Cancel-safe: an item is removed only when it is returned.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item, if one is queued now.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        if self.shared.closing.load(Ordering::Acquire) {
            if let Some(reason) = self.shared.lock().close {
                return Ok(Outbound::Close(reason));
            }
        }
        if let Some(item) = self.pop() {
            return Ok(item);
        }
        let mut state = self.shared.lock();
        if let Some(reason) = state.close {
            return Ok(Outbound::Close(reason));
        }
        if state.queue.is_empty() {
            return Err(if state.senders == 0 {
                TryRecvError::Closed
            } else {
                TryRecvError::Empty
            });
        }
        std::mem::swap(&mut state.queue, &mut self.taken);
        drop(state);
        self.pop().ok_or(TryRecvError::Empty)
    }

    /// Polls for the next item, registering the task to be woken when one arrives.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        match self.try_recv() {
            Ok(item) => Poll::Ready(Some(item)),
            Err(TryRecvError::Closed) => Poll::Ready(None),
            Err(TryRecvError::Empty) => {
                let mut state = self.shared.lock();
                if let Some(reason) = state.close {
                    return Poll::Ready(Some(Outbound::Close(reason)));
                }
                // Sent between `try_recv` and taking the lock again: take it now.
                if !state.queue.is_empty() {
                    std::mem::swap(&mut state.queue, &mut self.taken);
                    drop(state);
                    return Poll::Ready(self.pop());
                }
                if state.senders == 0 {
                    return Poll::Ready(None);
                }
                match &state.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => state.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// True once, when the router asked for free room ([`Outbox::want_space`]) and the
    /// outbox now has it: the connection then tells the router. Call after taking items.
    pub fn space_wanted(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        let want = self.shared.want_free.load(Ordering::SeqCst) as usize;
        want != 0
            && self
                .shared
                .capacity
                .saturating_sub(self.shared.len.load(Ordering::SeqCst))
                >= want
            && self.shared.want_free.swap(0, Ordering::SeqCst) != 0
    }

    /// Gives back the storage of both queues if they are empty (a burst grows them).
    pub fn shrink(&mut self) {
        if self.taken.is_empty() {
            self.taken = VecDeque::new();
        }
        let mut state = self.shared.lock();
        if state.queue.is_empty() {
            state.queue = VecDeque::new();
        }
    }

    /// Pops a taken item and stops counting it.
    fn pop(&mut self) -> Option<Outbound> {
        let item = self.taken.pop_front()?;
        self.shared
            .bytes
            .fetch_sub(item_bytes(&item), Ordering::AcqRel);
        self.shared.len.fetch_sub(1, Ordering::AcqRel);
        Some(item)
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.queue)
        };
        // Dropped outside the lock: items may hold the last reference to large payloads.
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> Outbound {
        Outbound::Close(ReasonCode::Success)
    }

    #[test]
    fn bounded_by_items_not_yet_received() {
        let (tx, mut rx) = outbox(2);
        assert_eq!(tx.capacity(), 2);
        tx.try_send(item()).unwrap();
        tx.try_send(item()).unwrap();
        assert!(matches!(tx.try_send(item()), Err(TrySendError::Full(_))));
        assert_eq!(tx.capacity(), 0);
        // Both are taken from the shared queue in one swap; each counts until received.
        assert!(rx.try_recv().is_ok());
        assert_eq!(tx.capacity(), 1);
        tx.try_send(item()).unwrap();
        assert!(matches!(tx.try_send(item()), Err(TrySendError::Full(_))));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        assert_eq!(tx.capacity(), 2);
    }

    #[test]
    fn order_is_kept_across_swaps() {
        let (tx, mut rx) = outbox(64);
        let code = |i: u8| Outbound::Close(ReasonCode::from_u8(i).unwrap_or(ReasonCode::Success));
        let reason = |o: Outbound| match o {
            Outbound::Close(c) => c.as_u8(),
            _ => u8::MAX,
        };
        let codes = [0x00, 0x04, 0x80, 0x83, 0x87, 0x8b, 0x8d, 0x8e];
        let mut got = Vec::new();
        // Receive one after every second send, so items arrive in several swaps.
        for (i, c) in codes.iter().enumerate() {
            tx.try_send(code(*c)).unwrap();
            if i % 2 == 1 {
                got.push(reason(rx.try_recv().unwrap()));
            }
        }
        while let Ok(x) = rx.try_recv() {
            got.push(reason(x));
        }
        let want: Vec<u8> = codes.iter().map(|c| reason(code(*c))).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn ends_when_senders_are_gone_and_refuses_when_receiver_is_gone() {
        let (tx, mut rx) = outbox(4);
        let tx2 = tx.clone();
        tx.try_send(item()).unwrap();
        drop(tx);
        assert!(rx.try_recv().is_ok());
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        drop(tx2);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Closed);

        let (tx, rx) = outbox(4);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(item()), Err(TrySendError::Closed(_))));
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_on_last_sender_dropped() {
        let (tx, mut rx) = outbox(4);
        let task = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first.is_some(), end.is_none())
        });
        tokio::task::yield_now().await;
        tx.try_send(item()).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(task.await.unwrap(), (true, true));
    }

    #[test]
    fn close_goes_before_the_queue_and_needs_no_slot() {
        let (tx, mut rx) = outbox(2);
        tx.try_send(Outbound::Close(ReasonCode::Success)).unwrap();
        tx.try_send(Outbound::Close(ReasonCode::Success)).unwrap();
        // One item already taken into the receiver's own queue, one still shared.
        assert!(rx.try_recv().is_ok());
        tx.try_send(Outbound::Close(ReasonCode::Success)).unwrap();
        // Full, yet the close gets through; the first reason wins.
        tx.close(ReasonCode::ServerShuttingDown);
        tx.close(ReasonCode::SessionTakenOver);
        drop(tx);
        let reason = |o: Outbound| match o {
            Outbound::Close(c) => Some(c),
            _ => None,
        };
        for _ in 0..3 {
            assert_eq!(
                reason(rx.try_recv().unwrap()),
                Some(ReasonCode::ServerShuttingDown)
            );
        }
    }

    #[tokio::test]
    async fn close_wakes_a_waiting_receiver() {
        let (tx, mut rx) = outbox(4);
        let task = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.close(ReasonCode::SessionTakenOver);
        assert!(matches!(
            task.await.unwrap(),
            Some(Outbound::Close(ReasonCode::SessionTakenOver))
        ));
    }

    #[test]
    fn debug_shows_counts_not_items() {
        let (tx, rx) = outbox(8);
        tx.try_send(Outbound::Close(ReasonCode::SessionTakenOver))
            .unwrap();
        let shown = format!("{tx:?} {rx:?}");
        assert!(
            shown.contains("capacity: 8") && shown.contains("len: 1"),
            "{shown}"
        );
        assert!(!shown.contains("SessionTakenOver"), "{shown}");
    }

    #[test]
    fn shrink_gives_back_storage() {
        let (tx, mut rx) = outbox(1000);
        for _ in 0..500 {
            tx.try_send(item()).unwrap();
        }
        for _ in 0..250 {
            rx.try_recv().unwrap();
        }
        rx.shrink();
        // Still holding 250: nothing lost.
        assert_eq!(tx.capacity(), 750);
        for _ in 0..250 {
            rx.try_recv().unwrap();
        }
        rx.shrink();
        assert_eq!(rx.taken.capacity(), 0);
        assert_eq!(rx.shared.lock().queue.capacity(), 0);
    }

    #[test]
    fn space_is_reported_once_when_wanted() {
        let (tx, mut rx) = outbox(8);
        for _ in 0..8 {
            tx.try_send(item()).unwrap();
        }
        assert!(!rx.space_wanted(), "nothing was asked");
        assert!(!tx.want_space(4), "the outbox is full");
        for _ in 0..3 {
            rx.try_recv().unwrap();
        }
        assert!(!rx.space_wanted(), "3 free, 4 wanted");
        rx.try_recv().unwrap();
        assert!(rx.space_wanted(), "4 free");
        assert!(!rx.space_wanted(), "reported once");
        // Room that is already there is answered at once, and then not reported.
        assert!(tx.want_space(4));
        assert!(!rx.space_wanted());
    }
}
