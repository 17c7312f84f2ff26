//! Idempotency keys (SPEC 9), kept in the database so that every instance
//! shares them.
//!
//! A request that touches only the database claims its key with the first
//! statement of the one write transaction that does the work, stores the
//! response and marks the key `done`: one commit, and the movement and its
//! recorded response commit together or not at all. On PostgreSQL the
//! charges and holds make that claim inside the statement of their first
//! read ([`execute_merging`]). A request that calls
//! Stripe between two transactions first *claims* its key in a short
//! transaction of its own (a row `in_flight` with a lease), and its last
//! transaction does the same as the one above. The
//! same key then replays the stored response byte for byte; with a different
//! request it is refused (422); while the first is in flight, 409. A failed
//! request (any error) releases its key, so a retry runs again: only
//! successful responses, which are the only ones that moved money, are kept.
//! A request whose process died leaves a claim whose lease runs out; a retry
//! then takes it over, and the lease token makes sure that only one of two
//! racing holders can commit.
//!
//! Keys are kept for a TTL (at least 24 h) and then purged; the same key
//! after that is a new request, as Stripe treats it. The rows a request
//! writes carry its [`RequestKey`], which the database keeps unique forever,
//! so the request key names one *generation* of a key: the caller, the key
//! and when the key was first claimed. A retry within the key's lifetime
//! (a replay, a takeover after a crash, a retry after a failed multi-step
//! request) keeps the generation and finds what the first attempt wrote; a
//! reuse after the purge starts a new one.

use std::time::Duration;

use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ServiceError, ServiceResult};
use crate::db::models::{IdempotencyRow, NewIdempotencyClaim};
use crate::db::schema::idempotency_keys as ik;
use crate::db::{self, DbConn, WriteTx};

/// The backend of [`DbConn`], for the statements written here by hand.
type MultiBackend = <DbConn as Connection>::Backend;

/// How long a claim holds before another request may take it over, unless
/// set (`TALLY_IDEMPOTENCY_LEASE`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const IN_FLIGHT: &str = "in_flight";
const DONE: &str = "done";
/// The lease token of a claim given back by a failed multi-step request
/// ([`give_back`]): the next request with the key takes it at once.
const GIVEN_BACK: &str = "";

/// The key of one request, unique per caller and per generation of its
/// idempotency key: stored on the journal entry it writes, so the database
/// itself refuses a second entry for one request.
#[derive(Clone, Debug)]
pub struct RequestKey(String, Option<PendingClaim>);

impl RequestKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of `req` first claimed at `now`, with its claim still to be
    /// made.
    fn claiming(req: &IdempotentRequest, now: chrono::NaiveDateTime) -> RequestKey {
        let claim = PendingClaim {
            scope: req.scope.clone(),
            key: req.key.clone(),
            fingerprint: req.fingerprint.clone(),
            token: uuid::Uuid::new_v4().simple().to_string(),
            locked_until: now + req.lease,
            created_at: now,
            made: std::cell::Cell::new(None),
        };
        RequestKey(req.request_key(now).0, Some(claim))
    }

    /// Whether the claim inserted the key (`None`: not made yet, or no claim).
    fn made(&self) -> Option<bool> {
        self.1.as_ref().and_then(|c| c.made.get())
    }

    /// The lease token of the claim (empty without one).
    fn token(&self) -> &str {
        self.1.as_ref().map_or("", |c| c.token.as_str())
    }

    /// The claim of this request's key still to be made, when the work is
    /// to make it in its first statement ([`execute_merging`], PostgreSQL):
    /// the statement puts [`Claiming`] around itself and tells the claim
    /// what came of it ([`PendingClaim::made`]).
    pub fn claim_to_merge(&self) -> Option<&PendingClaim> {
        self.1.as_ref().filter(|c| c.made.get().is_none())
    }

    /// Makes the claim still to be made on its own (a work whose first
    /// statement does not take it); nothing otherwise. Called before the
    /// work's first statement.
    pub fn claim_first(&self, conn: &mut DbConn) -> ServiceResult<()> {
        match self.claim_to_merge() {
            Some(claim) => {
                let claimed = crate::fixed!(ClaimInsert(claim)).get_result::<i32>(conn).optional()?;
                claim.made(claimed.is_some())
            }
            None => Ok(()),
        }
    }
}

/// The claim of a key that [`execute_merging`] leaves to the work's first
/// statement: one round trip fewer per request.
#[derive(Clone, Debug)]
pub struct PendingClaim {
    scope: String,
    key: String,
    fingerprint: String,
    token: String,
    locked_until: chrono::NaiveDateTime,
    created_at: chrono::NaiveDateTime,
    /// Whether the statement that carried the claim inserted the key:
    /// `None` until one ran and said so.
    made: std::cell::Cell<Option<bool>>,
}

impl PendingClaim {
    /// Records what the statement carrying the claim found: `claimed` when
    /// it inserted the key. A key already there (done, or held by another
    /// request) stops the work with `IdempotencyInFlight`, which
    /// [`execute_merging`] answers by looking at the key.
    pub fn made(&self, claimed: bool) -> ServiceResult<()> {
        self.made.set(Some(claimed));
        if claimed {
            Ok(())
        } else {
            Err(ServiceError::IdempotencyInFlight)
        }
    }

    /// The `claimed` column a statement carrying the claim selects (1 when
    /// it inserted the key, else 0), or the constant 1 without a claim.
    pub fn column(claim: Option<&PendingClaim>) -> &'static str {
        match claim {
            Some(_) => "(SELECT count(*) FROM claimed)",
            None => "1",
        }
    }
}

/// The claim's `INSERT ... ON CONFLICT DO NOTHING` with its binds.
fn push_claim_insert<'b>(claim: &'b PendingClaim, mut out: AstPass<'_, 'b, MultiBackend>) -> QueryResult<()> {
    use diesel::sql_types::{Text, Timestamp};
    out.push_sql(
        "INSERT INTO idempotency_keys \
         (scope, key, request_hash, state, lease_token, locked_until, created_at) VALUES (",
    );
    out.push_bind_param::<Text, _>(&claim.scope)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(&claim.key)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(&claim.fingerprint)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(IN_FLIGHT)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(&claim.token)?;
    out.push_sql(", ");
    out.push_bind_param::<Timestamp, _>(&claim.locked_until)?;
    out.push_sql(", ");
    out.push_bind_param::<Timestamp, _>(&claim.created_at)?;
    out.push_sql(") ON CONFLICT (scope, key) DO NOTHING RETURNING 1");
    Ok(())
}

/// The claim alone: one row when it inserted the key.
struct ClaimInsert<'a>(&'a PendingClaim);

impl Query for ClaimInsert<'_> {
    type SqlType = diesel::sql_types::Integer;
}

impl QueryFragment<MultiBackend> for ClaimInsert<'_> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, MultiBackend>) -> QueryResult<()> {
        push_claim_insert(self.0, out)
    }
}

/// `query` made with the claim of its request's key before it, as the
/// data-modifying `WITH claimed AS (INSERT ...)` that PostgreSQL runs
/// whatever the query reads: the query selects or returns
/// [`PendingClaim::column`] to learn whether the key was inserted. Run it
/// in [`crate::fixed!`], at a call site of its own (its text differs from
/// the query's alone).
pub struct Claiming<'a, Q>(pub &'a PendingClaim, pub Q);

impl<Q: Query> Query for Claiming<'_, Q> {
    type SqlType = Q::SqlType;
}

impl<Q: QueryFragment<MultiBackend>> QueryFragment<MultiBackend> for Claiming<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, MultiBackend>) -> QueryResult<()> {
        out.push_sql("WITH claimed AS (");
        push_claim_insert(self.0, out.reborrow())?;
        out.push_sql(") ");
        self.1.walk_ast(out.reborrow())
    }
}

/// A money-moving request under an `Idempotency-Key`.
#[derive(Clone, Debug)]
pub struct IdempotentRequest {
    /// Whose key it is (the caller's id): keys of different callers never meet.
    pub scope: String,
    pub key: String,
    /// SHA-256 of the method, path and canonical JSON body.
    pub fingerprint: String,
    /// How long this request's claim holds: longer than the request may
    /// take, short enough that a retry after a crash is not kept waiting.
    pub lease: Duration,
}

impl IdempotentRequest {
    /// Validates the key and fingerprints the request.
    pub fn new(
        scope: &str,
        key: &str,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> ServiceResult<Self> {
        if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ServiceError::Validation(
                "Idempotency-Key must be 1 to 255 printable ASCII characters".into(),
            ));
        }
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update(b" ");
        hasher.update(path.as_bytes());
        hasher.update(b"\n");
        hasher.update(canonical_json(body).as_bytes());
        Ok(IdempotentRequest {
            scope: scope.to_string(),
            key: key.to_string(),
            fingerprint: hex::encode(hasher.finalize()),
            lease: DEFAULT_LEASE,
        })
    }

    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The request key of this request in the generation of its key first
    /// claimed at `claimed_at`. Unambiguous: the time has a fixed width and
    /// no `:`, and the scope's length says where it ends (`op:a` + `b:c`
    /// and `op:a:b` + `c` differ).
    fn request_key(&self, claimed_at: chrono::NaiveDateTime) -> RequestKey {
        RequestKey(
            format!(
                "{}:{}:{}:{}",
                claimed_at.format("%Y%m%dT%H%M%S%.6f"),
                self.scope.len(),
                self.scope,
                self.key
            ),
            None,
        )
    }
}

/// A claim this request holds: the token proves it when completing, and the
/// request key is what its rows carry.
#[derive(Clone, Debug)]
pub struct Lease {
    pub token: String,
    pub request_key: RequestKey,
}

/// JSON with object keys sorted, so that key order and whitespace do not
/// make two equal bodies differ.
pub fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// A response as stored and replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// The JSON body, byte for byte as first sent.
    pub body: String,
    /// Extra headers of the first response (e.g. `X-Balance-Remaining`).
    pub headers: Vec<(String, String)>,
    /// True when this is a replay of an earlier response.
    pub replayed: bool,
}

/// The outcome of claiming a key.
pub enum Claim {
    /// The request runs under this lease.
    Fresh(Lease),
    /// The request already ran: answer with its response.
    Replay(StoredResponse),
}

/// A successful outcome: the body, and extra headers to send (and replay).
pub struct Outcome<T> {
    pub body: T,
    pub headers: Vec<(String, String)>,
}

impl<T> From<T> for Outcome<T> {
    fn from(body: T) -> Self {
        Outcome { body, headers: Vec::new() }
    }
}

/// Runs `work` at most once for this request; see the module docs.
///
/// A request that touches only the database commits once: its key is
/// claimed by the first statement of the transaction that does the work and
/// stores the response ([`in_one_transaction`]). Only when the key is
/// already held by a claim of its own (a multi-step request's, or one that
/// was given back) does it go through [`claim`] and [`complete`].
pub fn execute<T, F>(
    conn: &mut DbConn,
    req: &IdempotentRequest,
    status: u16,
    work: F,
) -> ServiceResult<StoredResponse>
where
    T: Serialize,
    F: FnOnce(&mut WriteTx<'_>, &RequestKey) -> ServiceResult<Outcome<T>>,
{
    let work = match in_one_transaction(conn, req, status, work)? {
        OneTransaction::Done(stored) => return Ok(stored),
        OneTransaction::Claimed(work) => work,
    };
    match claim(conn, req)? {
        Claim::Replay(stored) => Ok(stored),
        Claim::Fresh(lease) => complete(conn, req, &lease, status, work),
    }
}

/// [`execute`] for a work whose first statement makes the claim of the
/// key ([`RequestKey::claim_to_merge`] with [`Claiming`], or
/// [`RequestKey::claim_first`]): on PostgreSQL the claim is then not a
/// round trip of its own. `work` may run twice.
///
/// When the work succeeds its claim inserted the key, as with [`execute`].
/// When it fails without having inserted the key (the key was there: done,
/// or held by another request; or it refused before its first statement),
/// everything it wrote is rolled back: a key that is done replays its
/// stored response (or 422 for another request), and any other request
/// goes through [`execute`] as a whole (the 409 or wait that the key calls
/// for, and the work again if the key is free). A failure of the database
/// goes to the caller as it is. SQLite has no data-modifying `WITH`: there
/// this is [`execute`].
pub fn execute_merging<T, F>(
    conn: &mut DbConn,
    req: &IdempotentRequest,
    status: u16,
    work: F,
) -> ServiceResult<StoredResponse>
where
    T: Serialize,
    F: Fn(&mut WriteTx<'_>, &RequestKey) -> ServiceResult<Outcome<T>>,
{
    if !matches!(conn, DbConn::Pg(_)) {
        return execute(conn, req, status, work);
    }
    let key = RequestKey::claiming(req, db::now());
    let result = db::write_tx(conn, |tx| -> Result<StoredResponse, Merged> {
        let outcome = match work(tx, &key) {
            Ok(outcome) => outcome,
            // The key was there (done, or held by another request): the
            // statement that found it went through, so the transaction (to
            // be rolled back) can still read it.
            Err(_) if key.made() == Some(false) => {
                return Err(Merged::KeyThere(replay_of(tx, req).map_err(Merged::Failed)?));
            }
            // The work refused before its claim was made; a failure of the
            // database goes to the caller as it is (a group commit runs a
            // request that lost a lock cycle again alone).
            Err(e)
                if key.made().is_none()
                    && !matches!(e, ServiceError::Database(_) | ServiceError::Pool(_)) =>
            {
                return Err(Merged::Unclaimed);
            }
            Err(e) => return Err(Merged::Failed(e)),
        };
        if key.made() != Some(true) {
            return Err(Merged::Failed(ServiceError::Internal(
                "an idempotent work did not claim its key".into(),
            )));
        }
        store(tx, req, key.token(), status, outcome).map_err(Merged::Failed)
    });
    // Everything the work wrote is rolled back: a request that already ran
    // is replayed, any other goes the way of [`execute`].
    match result {
        Ok(stored) | Err(Merged::KeyThere(Some(stored))) => Ok(stored),
        Err(Merged::KeyThere(None)) => execute(conn, req, status, work),
        Err(Merged::Unclaimed) => match replay_of(conn, req)? {
            Some(stored) => Ok(stored),
            None => execute(conn, req, status, work),
        },
        Err(Merged::Failed(e)) => Err(e),
    }
}

/// Why [`execute_merging`]'s transaction ended without a response.
enum Merged {
    /// The key was there: its stored response, or `None` (held by a claim).
    KeyThere(Option<StoredResponse>),
    /// The work refused before its claim was made.
    Unclaimed,
    Failed(ServiceError),
}

impl From<diesel::result::Error> for Merged {
    fn from(e: diesel::result::Error) -> Self {
        Merged::Failed(e.into())
    }
}

/// What [`in_one_transaction`] did.
enum OneTransaction<F> {
    /// The work ran and committed with its response, or the stored
    /// response of an earlier run is replayed.
    Done(StoredResponse),
    /// The key is held by a claim of its own: the work has not run.
    Claimed(F),
}

/// One transaction: the key inserted as claimed (`ON CONFLICT DO NOTHING`),
/// the work, the response stored. A concurrent request with the same key
/// waits on the key's unique index until the first commits (then finds it
/// done and replays it) or rolls back (then runs itself). A key already
/// there is read in the same transaction: done with the same request, the
/// response is replayed; with another request, 422. A failure rolls the
/// claim back with the work, so a retry runs again.
fn in_one_transaction<T, F>(
    conn: &mut DbConn,
    req: &IdempotentRequest,
    status: u16,
    work: F,
) -> ServiceResult<OneTransaction<F>>
where
    T: Serialize,
    F: FnOnce(&mut WriteTx<'_>, &RequestKey) -> ServiceResult<Outcome<T>>,
{
    let mut work = Some(work);
    let done = db::write_tx(conn, |tx| -> ServiceResult<Option<StoredResponse>> {
        let key = RequestKey::claiming(req, db::now());
        match key.claim_first(tx) {
            Ok(()) => {}
            Err(_) if key.made() == Some(false) => return replay_of(tx, req),
            Err(e) => return Err(e),
        }
        let Some(work) = work.take() else {
            return Err(ServiceError::Internal("idempotent work ran twice".into()));
        };
        let outcome = work(tx, &key)?;
        store(tx, req, key.token(), status, outcome).map(Some)
    })?;
    match (done, work) {
        (Some(stored), _) => Ok(OneTransaction::Done(stored)),
        (None, Some(work)) => Ok(OneTransaction::Claimed(work)),
        (None, None) => Err(ServiceError::Internal("idempotent work ran without a response".into())),
    }
}

/// The stored response of the key's earlier run; 422 for another request
/// under the key; `None` when the key is held by a claim (in flight or
/// given back), which [`claim`] decides on.
fn replay_of(conn: &mut DbConn, req: &IdempotentRequest) -> ServiceResult<Option<StoredResponse>> {
    let Some(row) =
        ik::table.find((&req.scope, &req.key)).select(IdempotencyRow::as_select()).first(conn).optional()?
    else {
        return Ok(None);
    };
    if row.state != DONE {
        return Ok(None);
    }
    if row.request_hash != req.fingerprint {
        return Err(ServiceError::IdempotencyKeyReused);
    }
    Ok(Some(stored_of(row)))
}

fn stored_of(row: IdempotencyRow) -> StoredResponse {
    let headers =
        row.response_headers.as_deref().and_then(|h| serde_json::from_str(h).ok()).unwrap_or_default();
    StoredResponse {
        status: row.response_status.unwrap_or(200) as u16,
        body: row.response_body.unwrap_or_default(),
        headers,
        replayed: true,
    }
}

/// Stores the response and marks the key done, in the work's transaction;
/// refused when the claim under `token` is no longer this request's.
fn store<T: Serialize>(
    tx: &mut WriteTx<'_>,
    req: &IdempotentRequest,
    token: &str,
    status: u16,
    outcome: Outcome<T>,
) -> ServiceResult<StoredResponse> {
    let body = serde_json::to_string(&outcome.body)
        .map_err(|e| ServiceError::Internal(format!("cannot serialize response: {e}")))?;
    let headers = serde_json::to_string(&outcome.headers)
        .map_err(|e| ServiceError::Internal(format!("cannot serialize headers: {e}")))?;
    let marked = crate::fixed!(diesel::update(
        ik::table
            .find((&req.scope, &req.key))
            .filter(ik::lease_token.eq(token))
            .filter(ik::state.eq(IN_FLIGHT)),
    )
    .set((
        ik::state.eq(DONE),
        ik::response_status.eq(status as i32),
        ik::response_body.eq(&body),
        ik::response_headers.eq(&headers),
    ))
    .returning(ik::state),)
    .get_result::<String>(tx.conn())
    .optional()?;
    if marked.is_none() {
        // Our lease ran out and another request took the key over.
        return Err(ServiceError::IdempotencyInFlight);
    }
    Ok(StoredResponse { status, body, headers: outcome.headers, replayed: false })
}

/// Runs the final write transaction of a claimed request: `work`, then the
/// response stored and the key marked done, together. On any error the
/// claim is released.
pub fn complete<T, F>(
    conn: &mut DbConn,
    req: &IdempotentRequest,
    lease: &Lease,
    status: u16,
    work: F,
) -> ServiceResult<StoredResponse>
where
    T: Serialize,
    F: FnOnce(&mut WriteTx<'_>, &RequestKey) -> ServiceResult<Outcome<T>>,
{
    let (token, request_key) = (lease.token.as_str(), &lease.request_key);
    let result = db::write_tx(conn, |tx| -> ServiceResult<StoredResponse> {
        let outcome = work(tx, request_key)?;
        store(tx, req, token, status, outcome)
    });
    if result.is_err() {
        release(conn, req, lease);
    }
    result
}

/// Claims the key for this request (see the module docs).
pub fn claim(conn: &mut DbConn, req: &IdempotentRequest) -> ServiceResult<Claim> {
    for _ in 0..3 {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let now = db::now();
        let inserted = db::write_statement(conn, |conn| {
            diesel::insert_into(ik::table)
                .values(NewIdempotencyClaim {
                    scope: &req.scope,
                    key: &req.key,
                    request_hash: &req.fingerprint,
                    state: IN_FLIGHT,
                    lease_token: &token,
                    locked_until: now + req.lease,
                    created_at: now,
                })
                .execute(conn)
        });
        match inserted {
            Ok(_) => return Ok(Claim::Fresh(Lease { token, request_key: req.request_key(now) })),
            Err(e) if db::is_unique_violation(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(row) = ik::table
            .find((&req.scope, &req.key))
            .select(IdempotencyRow::as_select())
            .first(conn)
            .optional()?
        else {
            continue; // released meanwhile: claim again
        };
        if row.state == IN_FLIGHT && row.lease_token == GIVEN_BACK {
            // A failed request gave the key back: this one runs (whatever
            // its body, as if the key were new) in the same generation.
            let taken = diesel::update(
                ik::table
                    .find((&req.scope, &req.key))
                    .filter(ik::lease_token.eq(GIVEN_BACK))
                    .filter(ik::state.eq(IN_FLIGHT)),
            )
            .set((
                ik::lease_token.eq(&token),
                ik::locked_until.eq(now + req.lease),
                ik::request_hash.eq(&req.fingerprint),
            ))
            .execute(conn)?;
            if taken == 1 {
                return Ok(Claim::Fresh(Lease { token, request_key: req.request_key(row.created_at) }));
            }
            continue; // another request took it first: look again
        }
        if row.request_hash != req.fingerprint {
            return Err(ServiceError::IdempotencyKeyReused);
        }
        if row.state == DONE {
            return Ok(Claim::Replay(stored_of(row)));
        }
        if row.locked_until > now {
            return Err(ServiceError::IdempotencyInFlight);
        }
        // The holder's lease ran out (its process likely died): take over.
        let taken = diesel::update(
            ik::table
                .find((&req.scope, &req.key))
                .filter(ik::lease_token.eq(&row.lease_token))
                .filter(ik::state.eq(IN_FLIGHT)),
        )
        .set((ik::lease_token.eq(&token), ik::locked_until.eq(now + req.lease)))
        .execute(conn)?;
        return if taken == 1 {
            Ok(Claim::Fresh(Lease { token, request_key: req.request_key(row.created_at) }))
        } else {
            Err(ServiceError::IdempotencyInFlight)
        };
    }
    Err(ServiceError::IdempotencyInFlight)
}

/// Releases a claim after a failed request that wrote nothing under its
/// request key: the key is forgotten. If this fails the lease runs out.
pub fn release(conn: &mut DbConn, req: &IdempotentRequest, lease: &Lease) {
    let deleted = diesel::delete(
        ik::table
            .find((&req.scope, &req.key))
            .filter(ik::lease_token.eq(&lease.token))
            .filter(ik::state.eq(IN_FLIGHT)),
    )
    .execute(conn);
    if let Err(e) = deleted {
        tracing::warn!(error = %e, "could not release an idempotency key; its lease will run out");
    }
}

/// Gives a claim back after a failed step of a multi-step request, whose
/// earlier steps may have written rows under its request key (a top-up
/// order, a payout): the key stays, with its generation, so that a retry
/// runs at once and finds those rows. If this fails the lease runs out.
pub fn give_back(conn: &mut DbConn, req: &IdempotentRequest, lease: &Lease) {
    let given = diesel::update(
        ik::table
            .find((&req.scope, &req.key))
            .filter(ik::lease_token.eq(&lease.token))
            .filter(ik::state.eq(IN_FLIGHT)),
    )
    .set((ik::lease_token.eq(GIVEN_BACK), ik::locked_until.eq(db::now())))
    .execute(conn);
    if let Err(e) = given {
        tracing::warn!(error = %e, "could not give an idempotency key back; its lease will run out");
    }
}

/// Forgets keys older than `ttl` (at least 24 h outside tests) whose lease
/// has run out; returns how many. The same key is then a new request.
pub fn purge_older_than(conn: &mut DbConn, ttl: Duration) -> QueryResult<usize> {
    let cutoff = db::now() - ttl;
    diesel::delete(ik::table.filter(ik::created_at.lt(cutoff)).filter(ik::locked_until.lt(db::now())))
        .execute(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order_and_spacing() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
    }

    #[test]
    fn fingerprints_differ_by_body_and_path() {
        let body = serde_json::json!({"amount": "1"});
        let other = serde_json::json!({"amount": "2"});
        let a = IdempotentRequest::new("u", "k", "POST", "/x", &body).unwrap();
        let b = IdempotentRequest::new("u", "k", "POST", "/x", &other).unwrap();
        let c = IdempotentRequest::new("u", "k", "POST", "/y", &body).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
        assert!(IdempotentRequest::new("u", "", "POST", "/x", &body).is_err());
        assert!(IdempotentRequest::new("u", "has space", "POST", "/x", &body).is_err());
    }

    #[test]
    fn request_keys_tell_scopes_keys_and_generations_apart() {
        let body = serde_json::json!({});
        let at = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        let t = at("2026-11-27 03:04:05.000006");
        let a = IdempotentRequest::new("op:a", "b:c", "POST", "/x", &body).unwrap();
        let b = IdempotentRequest::new("op:a:b", "c", "POST", "/x", &body).unwrap();
        assert_eq!(a.request_key(t).as_str(), "20261127T030405.000006:4:op:a:b:c");
        assert_eq!(b.request_key(t).as_str(), "20261127T030405.000006:6:op:a:b:c");
        assert_ne!(a.request_key(t).as_str(), a.request_key(at("2026-11-28 03:04:05")).as_str());
    }
}
