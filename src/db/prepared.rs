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

/// A statement whose SQL text is fixed at its call site, kept prepared and
/// found again by a marker type of that site alone: on a hit diesel neither
/// builds nor hashes its text (what [`Prepared`] pays on every call; on the
/// busiest statements a tenth of the server's time). Made by [`fixed!`],
/// which declares the marker where it is called.
///
/// Use it only where one call site always renders one text on one
/// connection: a literal `sql_query`, or a DSL statement without optional
/// parts (no `Option` changesets, no `IN` lists, no filters added at run
/// time), outside generic code (a marker declared in a generic function is
/// one type for all its instances). Text that differs by backend is fine:
/// the cache belongs to one connection.
#[derive(Debug, Clone, Copy)]
pub struct Fixed<Q, Site>(pub Q, pub std::marker::PhantomData<Site>);

impl<Q, Site: 'static> QueryId for Fixed<Q, Site> {
    type QueryId = Site;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<Q: Query, Site> Query for Fixed<Q, Site> {
    type SqlType = Q::SqlType;
}

impl<Q, Site, DB> QueryFragment<DB> for Fixed<Q, Site>
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

impl<Q, Site, Conn> RunQueryDsl<Conn> for Fixed<Q, Site> {}

/// `fixed!(statement)`: the statement as a [`Fixed`] with a marker of its
/// own. Run it with `get_result`/`load`, as [`Prepared`].
#[macro_export]
macro_rules! fixed {
    ($query:expr $(,)?) => {{
        /// The call site's marker.
        struct Site;
        $crate::db::prepared::Fixed::<_, Site>($query, ::std::marker::PhantomData)
    }};
}
