//! Group commit of accepted payments on SQLite: acceptances running at the same time share
//! one transaction, so one WAL fsync makes several of them durable.
//!
//! Why: with `synchronous = FULL` every commit waits for its fsync (~0.9 ms here), and SQLite
//! has one writer at a time, so one commit per acceptance caps a gateway at about a thousand
//! tokens per second however many clients wait, and concurrent writers that find the
//! database busy sleep in SQLite's busy handler (1, 2, 5, 10 ... ms). One task here is the
//! acceptances' only writer: it takes every insert waiting (up to [`MAX_GROUP`]), runs them
//! in one transaction and answers each after the COMMIT, never before, so a token still never
//! exists without its durable payment row. An insert refused by a unique key (`Duplicate`)
//! fails alone: SQLite rolls back that statement, not the transaction. A failed COMMIT fails
//! every insert of the group (none of them is stored; each caller's retry is safe).
//!
//! Postgres needs none of this: each acceptance commits its own transaction, which holds the
//! payer's advisory lock, and Postgres commits concurrent transactions together by itself.

use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::{insert_payment, AcceptExtras, NewPayment};
use crate::error::StoreError;

/// Inserts per transaction at most.
pub(crate) const MAX_GROUP: usize = 64;
/// Inserts waiting for the writer at most (then callers wait to queue).
const QUEUE: usize = 1024;

struct Job {
    payment: NewPayment,
    extras: AcceptExtras,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle acceptances send their inserts through (cheap to clone).
#[derive(Clone)]
pub(crate) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the writer task on `pool` (it ends when every handle is dropped).
    pub(crate) fn start(pool: AnyPool) -> GroupCommit {
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(pool, rx));
        GroupCommit { jobs }
    }

    /// Inserts `payment` durably (answered after the COMMIT of its group).
    pub(crate) async fn insert(
        &self,
        payment: &NewPayment,
        extras: &AcceptExtras,
    ) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        let job = Job {
            payment: payment.clone(),
            extras: extras.clone(),
            done,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolClosed))?
    }
}

async fn writer(pool: AnyPool, mut rx: mpsc::Receiver<Job>) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let results = commit_group(&pool, &group).await;
        metrics::histogram!(crate::metrics::SQLITE_GROUP_SIZE).record(group.len() as f64);
        for (job, result) in group.drain(..).zip(results) {
            // The caller may have given up (its request dropped): the row stands anyway,
            // and its retry is answered from it.
            let _ = job.done.send(result);
        }
    }
}

/// One transaction for `group`: each insert's own result, or the COMMIT's error for all.
async fn commit_group(pool: &AnyPool, group: &[Job]) -> Vec<Result<(), StoreError>> {
    // sqlx errors do not clone: every caller gets the text (as a database error: 503).
    let all_fail = |e: StoreError| -> Vec<Result<(), StoreError>> {
        let msg = e.to_string();
        group
            .iter()
            .map(|_| Err(StoreError::Db(sqlx::Error::Protocol(msg.clone()))))
            .collect()
    };
    // One alone: its INSERT commits by itself (one statement to SQLite's thread instead of
    // BEGIN, INSERT, COMMIT).
    if let [job] = group {
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => return all_fail(e.into()),
        };
        return vec![insert_payment(&mut conn, &job.payment, &job.extras).await];
    }
    let mut tx = match pool.begin().await {
        Ok(t) => t,
        Err(e) => return all_fail(e.into()),
    };
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        results.push(insert_payment(&mut tx, &job.payment, &job.extras).await);
    }
    if results.iter().all(Result::is_err) {
        // Nothing to make durable.
        let _ = tx.rollback().await;
        return results;
    }
    match tx.commit().await {
        Ok(()) => results,
        Err(e) => all_fail(e.into()),
    }
}
