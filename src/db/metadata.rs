//! Callers' metadata pairs (`object_metadata`), by the object's public id.

use std::collections::{BTreeMap, HashMap};

use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::Text;

use super::schema::object_metadata as m;
use super::DbConn;
use crate::domain::metadata::Metadata;

/// Stores the pairs of a new object (nothing for none): one insert.
pub fn insert(conn: &mut DbConn, object_id: &str, metadata: &Metadata) -> QueryResult<()> {
    if metadata.is_empty() {
        return Ok(());
    }
    InsertPairs { object_id, metadata }.execute(conn)?;
    Ok(())
}

/// `INSERT INTO object_metadata ... VALUES (...), (...)`: all pairs in one
/// statement (diesel's batch insert does not go through the multi-backend
/// connection; see `ledger::InsertPostings`).
struct InsertPairs<'a> {
    object_id: &'a str,
    metadata: &'a Metadata,
}

type Backend = <DbConn as Connection>::Backend;

impl QueryId for InsertPairs<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl QueryFragment<Backend> for InsertPairs<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Backend>) -> QueryResult<()> {
        out.push_sql("INSERT INTO object_metadata (object_id, key, value) VALUES ");
        for (i, (key, value)) in self.metadata.0.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<Text, _>(self.object_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(key.as_str())?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(value.as_str())?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl RunQueryDsl<DbConn> for InsertPairs<'_> {}

/// Replaces all pairs of an object (an update that names `metadata`).
pub fn replace(conn: &mut DbConn, object_id: &str, metadata: &Metadata) -> QueryResult<()> {
    diesel::delete(m::table.filter(m::object_id.eq(object_id))).execute(conn)?;
    insert(conn, object_id, metadata)
}

/// The pairs of one object (empty for none).
pub fn of(conn: &mut DbConn, object_id: &str) -> QueryResult<Metadata> {
    let rows: Vec<(String, String)> =
        m::table.filter(m::object_id.eq(object_id)).select((m::key, m::value)).load(conn)?;
    Ok(Metadata(rows.into_iter().collect()))
}

/// The pairs of several objects in one query; objects without any are absent.
pub fn of_many(conn: &mut DbConn, object_ids: &[&str]) -> QueryResult<HashMap<String, Metadata>> {
    if object_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String, String)> = m::table
        .filter(m::object_id.eq_any(object_ids))
        .select((m::object_id, m::key, m::value))
        .load(conn)?;
    let mut out: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for (id, key, value) in rows {
        out.entry(id).or_default().insert(key, value);
    }
    Ok(out.into_iter().map(|(id, pairs)| (id, Metadata(pairs))).collect())
}
