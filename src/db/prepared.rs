//! Keeping hot statements prepared.
//!
//! diesel keeps a statement in its per-connection prepared-statement cache
//! only when it can prove that the statement's SQL text never varies for one
//! Rust type. It refuses every `UPDATE` (a changeset may skip `None`
//! fields), every `sql_query`, and inserts whose values may render as
//! `DEFAULT`. Such statements are parsed and planned again on each call (on
//! PostgreSQL: one more round trip for the unnamed prepare).
//!
//! [`Prepared`] marks a statement whose text is fixed by construction as
//! cacheable. The cache then keys it by its SQL text and bind types (never by
//! its Rust type), so even a statement whose text did vary would only take
//! one cache entry per distinct text, never a wrong one.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::{QueryResult, RunQueryDsl};

/// A statement that diesel keeps prepared; see the module docs. Use it only
/// for statements with a bounded set of SQL texts (no `IN` lists of
/// varying length).
///
/// Run it with `get_result`/`load` (add a `RETURNING` if need be):
/// `execute` hands the statement to the multi-backend connection by
/// reference, and diesel's blanket `QueryFragment for &T` does not forward
/// [`QueryFragment::is_safe_to_cache_prepared`], so it would run unprepared.
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(pub Q);

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    // Keyed by SQL text, not by type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

impl<Q, DB> QueryFragment<DB> for Prepared<Q>
where
    DB: Backend,
    Q: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q, Conn> RunQueryDsl<Conn> for Prepared<Q> {}
