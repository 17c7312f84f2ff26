//! Auto top-up: its orders, and the settings a wallet keeps on its own
//! `accounts` row (so that the guarded UPDATE that moves a balance returns
//! them, and a charge on a wallet without auto top-up pays no extra query).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};

use super::schema::{accounts, auto_top_up_orders};
use super::DbConn;
use crate::domain::{AccountKind, AutoTopUpStatus, Credits, OwnerType, Validity};

/// An auto top-up order.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = auto_top_up_orders)]
pub struct AutoTopUpOrderRow {
    pub id: String,
    pub wallet_account_id: i64,
    pub status: AutoTopUpStatus,
    pub top_up_id: Option<String>,
    pub payment_intent_id: Option<String>,
    pub failure_reason: Option<String>,
    pub send_attempts: i32,
    pub send_lease_until: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A wallet with its auto top-up settings and saved payment method.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = accounts)]
pub struct WalletAutoTopUpRow {
    pub id: i64,
    pub kind: AccountKind,
    pub owner_type: OwnerType,
    pub owner_id: String,
    pub public_id: Option<String>,
    pub frozen: bool,
    #[diesel(column_name = auto_top_up_enabled)]
    pub enabled: bool,
    #[diesel(column_name = auto_top_up_threshold)]
    pub threshold: Option<Credits>,
    #[diesel(column_name = auto_top_up_pack_id)]
    pub pack_id: Option<String>,
    #[diesel(column_name = auto_top_up_validity)]
    pub validity: Option<Validity>,
    #[diesel(column_name = auto_top_up_failures)]
    pub failures: i32,
    #[diesel(column_name = auto_top_up_disabled_reason)]
    pub disabled_reason: Option<String>,
    /// No new order before this, after a failed payment.
    #[diesel(column_name = auto_top_up_retry_after)]
    pub retry_after: Option<NaiveDateTime>,
    pub stripe_customer_id: Option<String>,
    pub stripe_payment_method_id: Option<String>,
}

/// Records a `pending` order for the wallet unless one is open or the
/// wallet pauses after a failed payment (`auto_top_up_retry_after` still
/// ahead), in one statement: the partial unique index
/// `auto_top_up_orders_one_open` makes a second open order a conflict,
/// which does nothing. Returns whether an order was recorded.
pub fn record_open_order(conn: &mut DbConn, wallet_account_id: i64, id: &str) -> QueryResult<bool> {
    let now = super::now();
    let n = diesel::sql_query(
        "INSERT INTO auto_top_up_orders \
         (id, wallet_account_id, status, send_attempts, created_at, updated_at) \
         SELECT $1, $2, 'pending', 0, $3, $3 \
         WHERE NOT EXISTS (SELECT 1 FROM accounts a \
                           WHERE a.id = $2 AND a.auto_top_up_retry_after > $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Text, _>(id)
    .bind::<BigInt, _>(wallet_account_id)
    .bind::<Timestamp, _>(now)
    .execute(conn)?;
    Ok(n == 1)
}

/// The wallet's auto top-up settings.
pub fn wallet_settings(conn: &mut DbConn, account_id: i64) -> QueryResult<WalletAutoTopUpRow> {
    accounts::table.find(account_id).select(WalletAutoTopUpRow::as_select()).first(conn)
}

/// An order by id.
pub fn order(conn: &mut DbConn, id: &str) -> QueryResult<Option<AutoTopUpOrderRow>> {
    auto_top_up_orders::table.find(id).select(AutoTopUpOrderRow::as_select()).first(conn).optional()
}
