//! Row locks that serialize decisions spanning several rows (a check of one
//! row set, then a change to another). PostgreSQL locks the row named;
//! SQLite needs nothing, since its write transactions (`BEGIN IMMEDIATE`)
//! already run one at a time.

use diesel::prelude::*;

use super::schema::{accounts, orgs};
use super::{DbConn, WriteTx};
use crate::domain::Credits;

/// Locks an organization's row until the transaction ends, so that changes
/// to its members and roles run one after another: each one's "is another
/// owner left?" check then sees the change before it. A missing org locks
/// nothing (the caller's membership check reports it).
pub fn lock_org(tx: &mut WriteTx<'_>, org_id: &str) -> QueryResult<()> {
    match tx.conn() {
        // FOR NO KEY UPDATE: exclusive among writers of the org, yet it does
        // not block inserts whose foreign keys merely reference the org.
        DbConn::Pg(c) => {
            orgs::table.find(org_id).select(orgs::id).for_no_key_update().first::<String>(c).optional()?;
        }
        DbConn::Sqlite(_) => {}
    }
    Ok(())
}

/// Locks an account's row until the transaction ends and reads its cached
/// balance (0 when it keeps none), for a decision on "what is there now"
/// that the guarded update after it must agree with.
pub fn lock_balance(tx: &mut WriteTx<'_>, account_id: i64) -> QueryResult<Credits> {
    let query = accounts::table.find(account_id).select(accounts::balance);
    let balance: Option<Credits> = match tx.conn() {
        DbConn::Pg(c) => query.for_no_key_update().first::<Option<i64>>(c)?.map(Credits::from_micros),
        // SQLite's write transactions already run one at a time.
        conn @ DbConn::Sqlite(_) => query.first(conn)?,
    };
    Ok(balance.unwrap_or(Credits::ZERO))
}
