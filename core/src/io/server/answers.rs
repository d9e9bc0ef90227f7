//! Connections waiting for the answer to a coordination question (a registration's
//! acknowledgement, a presence query): the coordinator names each question with a
//! [`Ticket`]; its answer arrives later through the shard's output loop.

use crate::coord::{Answer, Ticket};
use std::cell::RefCell;
use std::collections::HashMap;
use std::task::{Poll, Waker};

#[derive(Default)]
struct Slot {
    answer: Option<Answer>,
    waker: Option<Waker>,
}

/// The answers that arrived and the tasks that wait for them (shard-local).
#[derive(Default)]
pub(crate) struct Answers {
    slots: RefCell<HashMap<Ticket, Slot>>,
}

impl Answers {
    /// Records the answer to `ticket` and wakes its waiter.
    pub fn deliver(&self, ticket: Ticket, answer: Answer) {
        let mut slots = self.slots.borrow_mut();
        let slot = slots.entry(ticket).or_default();
        slot.answer = Some(answer);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }

    /// Waits for the answer to `ticket` (it may have arrived already). A waiter that is
    /// dropped first takes its slot with it.
    pub async fn wait(&self, ticket: Ticket) -> Answer {
        struct Forget<'a>(&'a Answers, Ticket);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.slots.borrow_mut().remove(&self.1);
            }
        }
        let _forget = Forget(self, ticket);
        std::future::poll_fn(|cx| {
            let mut slots = self.slots.borrow_mut();
            let slot = slots.entry(ticket).or_default();
            match slot.answer.take() {
                Some(answer) => Poll::Ready(answer),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}
