//! CSV export of a wallet's history, streamed: the caller's access and the
//! first page are read before anything is answered (so a refusal is still
//! a clean 4xx), then each further page is read with a pooled connection
//! taken for that page only. No connection is held between pages and
//! memory holds one page, however long the history. Exports run at most
//! `TALLY_MAX_CONCURRENT_EXPORTS` at a time per instance; the permit lives
//! in the stream, so it comes back when the stream ends, fails, or is
//! dropped because the client went away. Pages are read one at a time per
//! instance, whichever export they belong to: exports are bulk work, and
//! together they take at most one connection and about one core, so that
//! everyone else's requests keep theirs.
//!
//! An export is not one snapshot: each page is its own read. The keyset
//! (the posting id, strictly decreasing) means no row appears twice and a
//! row written during the export appears at most once (rows newer than
//! the first page never do).
//!
//! With a read replica, an export reads where its first page was read:
//! every page from the replica, or every page from the primary (also once
//! a replica page failed), never the replica after the primary, whose
//! older rows the replica might not have replayed yet.

use std::sync::Arc;

use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::Runtime;
use crate::ledger::AccountRef;
use crate::services::history::{self, HistoryQuery};
use crate::services::{wallets, Caller, ErrorCode, ServiceError, ServiceResult};

/// What a refused export is told to wait before it retries, in seconds: an
/// export of a long history takes seconds.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The exports of one instance: a permit per export that may run
/// (`TALLY_MAX_CONCURRENT_EXPORTS`), and the one lane their pages are read
/// in, in turn.
pub struct ExportSlots {
    running: Arc<Semaphore>,
    lane: Semaphore,
    max: usize,
}

impl ExportSlots {
    pub fn new(max: usize) -> Self {
        ExportSlots { running: Arc::new(Semaphore::new(max)), lane: Semaphore::new(1), max }
    }

    /// A running export's permit, or a 429 `too_many_exports`.
    fn start(&self) -> ServiceResult<OwnedSemaphorePermit> {
        self.running.clone().try_acquire_owned().map_err(|_| ServiceError::Busy {
            kind: ErrorCode::TooManyExports,
            message: format!(
                "{} exports are already running on this instance; retry in a few seconds",
                self.max
            ),
            retry_after_secs: RETRY_AFTER_SECS,
        })
    }

    /// Reads one page of an export at its turn in the lane: on the
    /// replica if `replica` and it answers ([`Runtime::read_replica`]), else
    /// on the primary; also says whether the replica answered.
    async fn read_page<T, F>(&self, rt: &Arc<Runtime>, replica: bool, read: F) -> ServiceResult<(T, bool)>
    where
        F: Fn(&mut crate::db::DbConn) -> ServiceResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let _turn =
            self.lane.acquire().await.map_err(|e| ServiceError::Internal(format!("export lane: {e}")))?;
        rt.blocking(move |rt| rt.replica_or_primary(replica, &|conn, _| read(conn))).await
    }
}

/// The CSV of a wallet's history, chunk by chunk (the header and the
/// first page, then a page per chunk). A page that fails ends the stream
/// with its error (logged here), so the client sees a truncated body
/// rather than a short file that looks whole.
pub async fn wallet_history(
    rt: &Arc<Runtime>,
    caller: Caller,
    wallet_id: String,
    q: HistoryQuery,
) -> ServiceResult<impl Stream<Item = ServiceResult<Vec<u8>>> + 'static> {
    let permit = rt.exports.start()?;
    let q = Arc::new(q);
    let first_q = q.clone();
    let ((account, first), replica) = rt
        .exports
        .read_page(rt, true, move |conn| {
            let account = wallets::export_account(conn, &caller, &wallet_id)?;
            Ok((account, history::export_page(conn, account, &first_q, None)?))
        })
        .await?;
    let mut head = history::export_header()?;
    head.extend_from_slice(&first.csv);
    let rest = Pages {
        rt: rt.clone(),
        account,
        q,
        next: first.next,
        replica,
        pages_sent: 1,
        span: tracing::Span::current(),
        _permit: permit,
    };
    Ok(stream::once(async move { Ok(head) }).chain(stream::unfold(rest, Pages::next_page)))
}

/// The pages still to send, and the export's permit.
struct Pages {
    rt: Arc<Runtime>,
    account: AccountRef,
    q: Arc<HistoryQuery>,
    /// The cursor of the next page; none when the history is all sent.
    next: Option<String>,
    /// The pages are read from the replica (the first one was, and every
    /// one since).
    replica: bool,
    /// Pages sent so far, for the log of a failure.
    pages_sent: u64,
    /// The request's span: the pages are read after the handler returned.
    span: tracing::Span,
    _permit: OwnedSemaphorePermit,
}

impl Pages {
    /// The next page, or the end of the stream (dropping `self` and so the
    /// permit) after the last page or after a failed one.
    async fn next_page(mut self) -> Option<(ServiceResult<Vec<u8>>, Pages)> {
        let cursor = self.next.take()?;
        let (account, q) = (self.account, self.q.clone());
        let span = self.span.clone();
        let read = self.rt.exports.read_page(&self.rt, self.replica, move |conn| {
            history::export_page(conn, account, &q, Some(cursor.clone()))
        });
        match read.instrument(span).await {
            Ok((page, replica)) => {
                self.replica = replica;
                self.next = page.next;
                self.pages_sent = self.pages_sent.saturating_add(1);
                Some((Ok(page.csv), self))
            }
            Err(e) => {
                self.span.in_scope(|| {
                    tracing::error!(
                        error = %e,
                        pages_sent = self.pages_sent,
                        "CSV export failed mid-stream: the body is cut short"
                    )
                });
                // The failure is the stream's last item: `next` is empty.
                Some((Err(e), self))
            }
        }
    }
}
