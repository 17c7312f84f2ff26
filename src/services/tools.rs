//! The tools' price list: credits per call of each tool a message may use
//! (e.g. `web_search`). A change applies to new charges only: each charge
//! copies the tool prices it used.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ServiceError, ServiceResult};
use crate::db::catalog::{NewTool, ToolRow};
use crate::db::schema::tools;
use crate::db::{self, DbConn};
use crate::domain::usage::is_catalog_id;
use crate::domain::Credits;

/// A tool and its price per call.
#[derive(Debug, Serialize, ToSchema)]
pub struct Tool {
    /// The tool's id, e.g. `web_search`.
    pub id: String,
    /// Credits per call.
    #[schema(value_type = String, example = "0.01")]
    pub price: Credits,
    pub updated_at: DateTime<Utc>,
}

/// The whole price list, by id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolList {
    pub data: Vec<Tool>,
    pub has_more: bool,
}

fn view(row: ToolRow) -> Tool {
    Tool { id: row.id, price: row.price, updated_at: row.updated_at.and_utc() }
}

/// `GET /v1/tools`.
pub fn list_tools(conn: &mut DbConn) -> ServiceResult<ToolList> {
    let rows = tools::table.order(tools::id.asc()).select(ToolRow::as_select()).load(conn)?;
    Ok(ToolList { data: rows.into_iter().map(view).collect(), has_more: false })
}

/// The prices of the tools named in `ids` that exist (a missing one is
/// unknown to the price book).
pub fn prices_of<'a>(
    conn: &mut DbConn,
    ids: impl IntoIterator<Item = &'a String>,
) -> ServiceResult<BTreeMap<String, Credits>> {
    let ids: Vec<&String> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(String, Credits)> =
        tools::table.filter(tools::id.eq_any(ids)).select((tools::id, tools::price)).load(conn)?;
    Ok(rows.into_iter().collect())
}

/// `PUT /v1/admin/tools/{id}`: creates or reprices a tool.
pub fn put_tool(conn: &mut DbConn, id: &str, price: Credits) -> ServiceResult<Tool> {
    if !is_catalog_id(id) {
        return Err(ServiceError::Validation(
            "tool id must be 1 to 100 characters of letters, digits, '-', '_', '.', ':'".into(),
        ));
    }
    if price.is_negative() {
        return Err(ServiceError::Validation("price must not be negative".into()));
    }
    db::write_tx(conn, |tx| {
        let now = db::now();
        let updated = diesel::update(tools::table.find(id))
            .set((tools::price.eq(price), tools::updated_at.eq(now)))
            .execute(tx.conn())?;
        if updated == 0 {
            diesel::insert_into(tools::table)
                .values(NewTool { id, price, created_at: now, updated_at: now })
                .execute(tx.conn())?;
        }
        tracing::info!(tool = id, %price, "tool price updated");
        Ok(view(tools::table.find(id).select(ToolRow::as_select()).first(tx.conn())?))
    })
}
