//! Token-endpoint requests whose body is still being read, with a deadline each. The root
//! context's timer answers those past their deadline, so a request never hangs: neither on
//! a client that stops sending, nor on an Envoy whose wasm plugin lacks
//! `allow_on_headers_stop_iteration: true` (then the body never reaches the filter at all).

use crate::answer::HttpAnswer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub context_id: u32,
    pub deadline_ms: u64,
    /// Whether any body callback arrived for this request.
    pub body_seen: bool,
}

#[derive(Debug, Default)]
pub struct PendingBodies {
    entries: Vec<Pending>,
}

impl PendingBodies {
    pub fn add(&mut self, context_id: u32, deadline_ms: u64) {
        self.remove(context_id);
        self.entries.push(Pending {
            context_id,
            deadline_ms,
            body_seen: false,
        });
    }

    #[cfg(test)]
    pub fn contains(&self, context_id: u32) -> bool {
        self.entries.iter().any(|p| p.context_id == context_id)
    }

    /// Marks that a body callback arrived; `false` if the request is not waiting (any more).
    pub fn saw_body(&mut self, context_id: u32) -> bool {
        match self.entries.iter_mut().find(|p| p.context_id == context_id) {
            Some(p) => {
                p.body_seen = true;
                true
            }
            None => false,
        }
    }

    /// Removes the entry; `true` if it was there.
    pub fn remove(&mut self, context_id: u32) -> bool {
        let before = self.entries.len();
        self.entries.retain(|p| p.context_id != context_id);
        self.entries.len() != before
    }

    /// Takes out every entry whose deadline has passed.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<Pending> {
        let (expired, keep): (Vec<Pending>, Vec<Pending>) =
            self.entries.iter().partition(|p| p.deadline_ms <= now_ms);
        self.entries = keep;
        expired
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The answer for a request whose body did not arrive in time.
pub fn timeout_answer(p: &Pending) -> HttpAnswer {
    if p.body_seen {
        HttpAnswer::error(
            408,
            "request_timeout",
            "the request body did not arrive in time",
        )
    } else {
        HttpAnswer::error(
            500,
            "filter_misconfigured",
            "the x402 filter never received the request body; the Envoy wasm plugin needs allow_on_headers_stop_iteration: true",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let mut p = PendingBodies::default();
        p.add(1, 100);
        p.add(2, 200);
        assert!(p.saw_body(2));
        assert!(!p.saw_body(9));
        assert!(p.take_expired(99).is_empty());
        let e = p.take_expired(150);
        assert_eq!(
            e,
            vec![Pending {
                context_id: 1,
                deadline_ms: 100,
                body_seen: false
            }]
        );
        assert_eq!(timeout_answer(&e[0]).status, 500);
        assert!(!p.contains(1));
        assert!(p.contains(2));
        let e = p.take_expired(200);
        assert_eq!(timeout_answer(&e[0]).status, 408);
        assert!(p.is_empty());
        p.add(3, 1);
        assert!(p.remove(3));
        assert!(!p.remove(3));
    }
}
